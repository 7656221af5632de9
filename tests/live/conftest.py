"""Personas with their roles, for the live dashboard's tests."""

from __future__ import annotations

import pytest
from django.contrib.auth import get_user_model

from monitoring.roles import OPERATOR, VIEWER, grant


def user_in(role: str | None, username: str | None = None):
    """A user with one role (None: logged in, no role), fresh from the database."""
    model = get_user_model()
    user = model.objects.create_user(
        username or role or "stranger", password="correct horse battery"
    )
    if role is not None:
        grant(user, role)
    return model.objects.get(pk=user.pk)


@pytest.fixture
def viewer(db):
    """The read-only viewer: sees everything, acts on nothing."""
    return user_in(VIEWER)


@pytest.fixture
def operator(db):
    return user_in(OPERATOR)


@pytest.fixture
def roleless(db):
    """Logged in, but in none of the three roles."""
    return user_in(None, "roleless")
