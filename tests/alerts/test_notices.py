"""Which notices go to whom: trigger, repeat interval, acknowledge, resolve, switches."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from masters.choices import EventKind, HealthStatus, Severity
from masters.models import Event, Master, RuntimeSettings
from monitoring.alerts.choices import AlertEventKind
from monitoring.alerts.engine import acknowledge, evaluate
from monitoring.models import Alert, AlertDelivery, AlertSettings, AlertState, DeliveryStatus
from tests.alerts.conftest import webhook
from tests.conftest import make_master

pytestmark = pytest.mark.usefixtures("alerting")


@pytest.fixture
def masters():
    return make_master("a", "+971505760056"), make_master("b", "+971505760057")


def fail(master: Master) -> None:
    Master.objects.filter(pk=master.pk).update(
        health_status=HealthStatus.FAILED, health_changed_at=timezone.now()
    )


def notices(receiver, path: str = "/hook") -> list[tuple[str, str]]:
    return [(r.json()["notice"], r.json()["alert"]["dedup_key"]) for r in receiver.to(path)]


def test_a_firing_alert_is_sent_to_each_recipient_that_wants_its_severity(masters, receiver):
    a, _ = masters
    webhook(f"{receiver.url}/hook")
    webhook(f"{receiver.url}/warnings-only", wants_critical=False)
    webhook(f"{receiver.url}/inactive", is_active=False)
    evaluate()
    fail(a)
    evaluate()
    assert notices(receiver) == [("trigger", f"master.down:{a.pk}")]
    assert receiver.to("/warnings-only") == [] and receiver.to("/inactive") == []
    delivery = AlertDelivery.objects.get()
    assert (delivery.status, delivery.attempts, delivery.notice) == (
        DeliveryStatus.SENT,
        1,
        "trigger",
    )
    assert delivery.last_result.startswith("HTTP 200")


def test_a_firing_alert_is_repeated_once_per_interval_until_acknowledged(
    masters, receiver, admin_user
):
    a, _ = masters
    webhook(f"{receiver.url}/hook")
    # Only "connection lost" here: no "recovery taking too long" beside it.
    AlertSettings.objects.update_or_create(pk=1, defaults={"recovery_warning_min": 10_000})
    start = timezone.now()
    evaluate(start)
    fail(a)
    evaluate(start)
    for minutes in (1, 10, 29):
        evaluate(start + timedelta(minutes=minutes))
    assert len(receiver.to("/hook")) == 1, "no repeat within the interval"

    evaluate(start + timedelta(minutes=30))
    evaluate(start + timedelta(minutes=31))
    assert notices(receiver)[1:] == [("repeat", f"master.down:{a.pk}")]
    # An evaluator away for hours sends one reminder, not one per missed interval.
    evaluate(start + timedelta(hours=5))
    evaluate(start + timedelta(hours=5, seconds=2))
    assert [notice for notice, _ in notices(receiver)] == ["trigger", "repeat", "repeat"]
    alert = Alert.objects.get(dedup_key=f"master.down:{a.pk}")
    assert alert.notify_count == 3

    assert acknowledge(alert, admin_user, now=start + timedelta(hours=5, minutes=1))
    assert alert.state == AlertState.ACKNOWLEDGED and alert.acknowledged_by == admin_user
    body = receiver.to("/hook")[-1].json()
    assert (body["notice"], body["alert"]["acknowledged_by"]) == ("acknowledge", "root")
    event = Event.objects.get(kind=AlertEventKind.ACKNOWLEDGED)
    assert (event.actor, event.data["alert"]) == (admin_user, alert.pk)
    assert not acknowledge(alert, admin_user), "acknowledging twice changes nothing"

    evaluate(start + timedelta(hours=9))
    assert len(receiver.to("/hook")) == 4, "no repeats once acknowledged"


def test_the_repeat_interval_is_an_admin_setting(masters, receiver):
    a, _ = masters
    webhook(f"{receiver.url}/hook")
    AlertSettings.objects.update_or_create(
        pk=1, defaults={"repeat_interval_min": 5, "recovery_warning_min": 10_000}
    )
    start = timezone.now()
    evaluate(start)
    fail(a)
    evaluate(start)
    evaluate(start + timedelta(minutes=5))
    assert [notice for notice, _ in notices(receiver)] == ["trigger", "repeat"]


def test_a_resolved_alert_sends_a_resolved_notice_even_after_acknowledgement(
    masters, receiver, admin_user
):
    a, _ = masters
    webhook(f"{receiver.url}/hook")
    evaluate()
    fail(a)
    evaluate()
    acknowledge(Alert.objects.get(), admin_user)
    Master.objects.filter(pk=a.pk).update(health_status=HealthStatus.HEALTHY)
    evaluate()
    assert [notice for notice, _ in notices(receiver)] == ["trigger", "acknowledge", "resolve"]
    resolved = receiver.to("/hook")[-1].json()["alert"]
    assert resolved["state"] == "resolved" and resolved["resolved_at"] is not None


def test_disabled_severities_are_recorded_but_send_nothing(masters, receiver):
    a, b = masters
    webhook(f"{receiver.url}/hook")
    RuntimeSettings.objects.update_or_create(
        pk=1, defaults={"alert_critical_enabled": False, "alert_warning_enabled": False}
    )
    evaluate()
    fail(a)
    Master.objects.filter(pk=a.pk).update(health_changed_at=timezone.now() - timedelta(hours=1))
    AlertSettings.objects.update_or_create(pk=1, defaults={"queue_warning": 0})
    evaluate()
    severities = set(Alert.objects.open().values_list("severity", flat=True))
    assert severities == {Severity.CRITICAL, Severity.WARNING}, "recorded and shown"
    evaluate(timezone.now() + timedelta(hours=2))
    Master.objects.filter(pk=a.pk).update(health_status=HealthStatus.HEALTHY)
    evaluate(timezone.now() + timedelta(hours=3))
    assert receiver.requests == [] and not AlertDelivery.objects.exists()

    RuntimeSettings.objects.filter(pk=1).update(alert_critical_enabled=True)
    fail(b)
    evaluate(timezone.now() + timedelta(hours=3))
    assert {(notice, key.split(":")[0]) for notice, key in notices(receiver)} == {
        ("trigger", "master.down")
    }, "critical on again, warnings still off"


def test_info_alerts_go_only_to_recipients_that_want_info(masters, receiver):
    a, _ = masters
    webhook(f"{receiver.url}/hook")
    webhook(f"{receiver.url}/everything", wants_info=True)
    evaluate()
    Event.objects.create(kind=EventKind.REBALANCED, master=a, message="Rebalancing: 91%")
    evaluate()
    assert receiver.to("/hook") == []
    assert [r.json()["alert"]["rule"] for r in receiver.to("/everything")] == ["rebalanced"]
