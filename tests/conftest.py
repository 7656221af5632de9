"""Shared fixtures: personas and tiny factories."""

from __future__ import annotations

import pytest
from django.contrib.auth import get_user_model

from masters.choices import GatewayKind, HealthStatus, Role
from masters.models import Master


@pytest.fixture
def admin_user(db):
    return get_user_model().objects.create_superuser("root", password="correct horse battery")


@pytest.fixture
def viewer(db):
    return get_user_model().objects.create_user("viewer", password="correct horse battery")


def make_master(external_id: str = "m1", phone: str = "+971505760056", **fields) -> Master:
    """Create a master with sensible defaults; override any field by keyword."""
    values = {
        "display_name": external_id.title(),
        "role": Role.PRIMARY,
        "gateway_kind": GatewayKind.WAHA,
        "gateway_url": "http://127.0.0.1:3000",
        "gateway_session": external_id,
        "health_status": HealthStatus.HEALTHY,
    } | fields
    return Master.objects.create(external_id=external_id, phone_number=phone, **values)
