"""Model validation: what an admin or the import can and cannot save."""

from __future__ import annotations

import pytest
from django.core.exceptions import ValidationError
from django.db.models import ProtectedError

from masters.choices import GatewayKind, Role
from masters.models import AlertRecipient, Event, Master, Message, RuntimeSettings
from masters.queue import NewMessage, enqueue
from masters.validators import normalise_e164
from tests.conftest import make_master

pytestmark = pytest.mark.django_db


def build_master(**fields) -> Master:
    values = {
        "external_id": "m1",
        "phone_number": "+971505760056",
        "display_name": "M1",
        "gateway_kind": GatewayKind.WAHA,
        "gateway_url": "http://127.0.0.1:3000",
        "gateway_session": "default",
    } | fields
    return Master(**values)


def test_a_complete_master_validates():
    build_master().full_clean()


@pytest.mark.parametrize("phone", ["971505760056", "+97150576", "+1 555 0100", "+44abc", ""])
def test_phone_numbers_must_be_valid_e164(phone):
    with pytest.raises(ValidationError) as caught:
        build_master(phone_number=phone).full_clean()
    assert "phone_number" in caught.value.message_dict


def test_normalise_e164_writes_numbers_in_canonical_form():
    assert normalise_e164("+971 50 576 0056") == "+971505760056"


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"role": "boss"}, "role"),
        ({"gateway_kind": "telegram"}, "gateway_kind"),
        ({"gateway_url": "ftp://host"}, "gateway_url"),
        ({"gateway_session": ""}, "gateway_session"),
        ({"weight": -1.0}, "weight"),
        ({"max_messages_per_second": 0}, "max_messages_per_second"),
        (
            {"gateway_kind": GatewayKind.CLOUD_API, "gateway_api_version": "21"},
            "gateway_api_version",
        ),
        ({"external_id": "has spaces"}, "external_id"),
    ],
)
def test_invalid_master_fields_are_rejected(fields, field):
    with pytest.raises(ValidationError) as caught:
        build_master(**fields).full_clean()
    assert field in caught.value.message_dict


def test_phone_numbers_and_ids_are_unique():
    make_master("m1", "+971505760056")
    with pytest.raises(ValidationError) as caught:
        build_master(external_id="m2").full_clean()
    assert "phone_number" in caught.value.message_dict


def test_weight_defaults_to_the_plans_role_weights():
    assert build_master(role=Role.PRIMARY).effective_weight == 3.0
    assert build_master(role=Role.SECONDARY).effective_weight == 1.0
    assert build_master(role=Role.TERTIARY).effective_weight == 0.5
    assert build_master(role=Role.TERTIARY, weight=2.0).effective_weight == 2.0


def test_only_an_active_healthy_master_is_routable():
    assert build_master(health_status="healthy").is_routable
    for status in ("unknown", "degraded", "failed", "maintenance"):
        assert not build_master(health_status=status).is_routable
    assert not build_master(health_status="healthy", is_active=False).is_routable


def test_the_gateway_secret_never_appears_in_repr_or_config_repr():
    master = build_master(gateway_secret="very-secret-key")
    assert "very-secret-key" not in repr(master)
    assert "very-secret-key" not in str(master)
    assert "very-secret-key" not in repr(master.gateway_config())
    assert master.gateway_config().api_key == "very-secret-key"


def test_cloud_api_masters_default_to_metas_url_and_version():
    master = build_master(gateway_kind=GatewayKind.CLOUD_API, gateway_url="", gateway_session="42")
    config = master.gateway_config()
    assert (config.url, config.api_version, config.session) == (
        "https://graph.facebook.com",
        "v21.0",
        "42",
    )


def test_runtime_settings_are_seeded_from_the_environment(settings):
    settings.HA_DEFAULTS = settings.HA_DEFAULTS | {"failover_timeout_ms": 12345}
    assert RuntimeSettings.current().failover_timeout_ms == 12345
    assert RuntimeSettings.objects.count() == 1


def test_alert_recipients_need_their_address():
    with pytest.raises(ValidationError):
        AlertRecipient(kind="email").full_clean()
    with pytest.raises(ValidationError):
        AlertRecipient(kind="webhook").full_clean()
    AlertRecipient(kind="webhook", url="https://hooks.example.com/x").full_clean()


def test_events_after_an_id_come_oldest_first():
    first = Event.record("a", "first")
    second = Event.record("b", "second")
    third = Event.record("c", "third")
    assert list(Event.objects.after(first.pk)) == [second, third]


def test_a_master_that_holds_messages_cannot_be_deleted():
    """PROTECT is Django's to enforce: the database has no foreign key on it (failover speed)."""
    master = make_master("m1", "+971505760056")
    accepted = enqueue(NewMessage("+971501234567", "hello"))
    accepted.message.master = master
    accepted.message.save(update_fields=["master"])
    with pytest.raises(ProtectedError):
        master.delete()
    assert Master.objects.filter(pk=master.pk).exists()


def test_an_idempotency_key_is_unique():
    from django.db import IntegrityError, transaction

    from masters.models import IdempotencyKey

    first = Message.objects.create(idempotency_key="k", body_hash="h", to="+971501234567", text="a")
    second = Message.objects.create(idempotency_key="k", body_hash="h", to="+97150123458", text="b")
    IdempotencyKey.objects.create(key="k", message=first)
    with pytest.raises(ValidationError) as caught:
        IdempotencyKey(key="k", message=second).full_clean()
    assert "key" in str(caught.value)
    with pytest.raises(IntegrityError), transaction.atomic():
        IdempotencyKey.objects.create(key="k", message=second)


def test_a_webhook_recipient_is_named_without_its_path_or_credentials():
    recipient = AlertRecipient(
        kind="webhook", url="https://user:pw@hooks.slack.com:8443/services/T000/B000/XXXX?x=1"
    )
    recipient.format = "slack"
    assert str(recipient) == "Slack incoming webhook https://hooks.slack.com:8443/…"
