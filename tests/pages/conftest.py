"""Personas with real roles, and tiny factories for health history.

tests/conftest.py's ``viewer`` is a bare account; here it gets the viewer
role (it sees everything, acts on nothing), and ``operator`` may act.
"""

from __future__ import annotations

from datetime import datetime

import pytest
from django.contrib.auth import get_user_model
from django.test import Client
from django.utils import timezone

from masters.choices import EventKind, HealthStatus, MessageStatus
from masters.models import Event, HealthCheck, Master, Message
from monitoring.roles import OPERATOR, VIEWER, grant


@pytest.fixture(autouse=True)
def fast_passwords(settings):
    """Hash test passwords cheaply: PBKDF2 costs ~0.5 s per login on this hardware."""
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


def user_with_role(name: str, role: str):
    user = get_user_model().objects.create_user(name, password="correct horse battery")
    grant(user, role)
    return get_user_model().objects.get(pk=user.pk)  # fresh: no cached permissions


@pytest.fixture
def viewer(viewer):
    grant(viewer, VIEWER)
    return get_user_model().objects.get(pk=viewer.pk)


@pytest.fixture
def operator(db):
    return user_with_role("operator", OPERATOR)


@pytest.fixture
def stranger(db):
    """Logged in, but in no role: sees nothing."""
    return get_user_model().objects.create_user("stranger", password="correct horse battery")


def logged_in(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


@pytest.fixture
def viewer_client(viewer) -> Client:
    return logged_in(viewer)


@pytest.fixture
def operator_client(operator) -> Client:
    return logged_in(operator)


def health_change(master: Master, to: str, at: datetime, old: str = "") -> Event:
    """Record a HEALTH_CHANGED event at ``at`` (created_at is auto_now_add: set it after)."""
    event = Event.objects.create(
        kind=EventKind.HEALTH_CHANGED,
        master=master,
        message=f"{master.display_name}: {old or '?'} → {to}",
        data={"from": old, "to": to},
    )
    Event.objects.filter(pk=event.pk).update(created_at=at)
    return event


def checks(master: Master, at: datetime, statuses: str, step_s: int = 60, ms: float = 100.0):
    """Write a HealthCheck per letter of ``statuses`` (h/d/f), ``step_s`` apart from ``at``."""
    kinds = {"h": HealthStatus.HEALTHY, "d": HealthStatus.DEGRADED, "f": HealthStatus.FAILED}
    HealthCheck.objects.bulk_create(
        HealthCheck(
            master=master,
            checked_at=at + timezone.timedelta(seconds=i * step_s),
            status=kinds[letter],
            response_time_ms=ms if letter == "h" else None,
            error="" if letter == "h" else "timeout",
        )
        for i, letter in enumerate(statuses)
    )


def add_messages(master: Master | None, count: int, status: str = MessageStatus.QUEUED, **fields):
    now = timezone.now()
    return Message.objects.bulk_create(
        Message(
            to="+971501234567",
            text="hello",
            body_hash="-",
            master=master,
            status=status,
            next_attempt_at=now,
            **fields,
        )
        for _ in range(count)
    )
