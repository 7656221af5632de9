"""Each rule fires on database states and resolves when the state goes away."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from masters.choices import EventKind, HealthStatus, MessageStatus, Severity
from masters.failover import execute_failover
from masters.models import Event, LoadMetric, Master, Message
from monitoring.alerts.choices import AlertEventKind, Rule
from monitoring.alerts.engine import active_alerts, evaluate
from monitoring.models import Alert, AlertCursor, AlertSettings, AlertState
from tests.conftest import make_master

pytestmark = pytest.mark.django_db

H, F = HealthStatus.HEALTHY, HealthStatus.FAILED


def fail(master: Master, ago: timedelta = timedelta(seconds=30)) -> None:
    Master.objects.filter(pk=master.pk).update(
        health_status=F, health_changed_at=timezone.now() - ago, last_error="session closed"
    )


def recover(master: Master) -> None:
    Master.objects.filter(pk=master.pk).update(
        health_status=H, health_changed_at=timezone.now(), last_error=""
    )


def open_keys() -> set[str]:
    return set(Alert.objects.open().values_list("dedup_key", flat=True))


def test_a_failed_master_fires_and_its_recovery_resolves_the_alert():
    a = make_master("a", "+971505760056")
    make_master("b", "+971505760057")
    evaluate()
    assert open_keys() == set()

    fail(a)
    evaluate()
    alert = Alert.objects.get(dedup_key=f"master.down:{a.pk}")
    assert (alert.state, alert.severity, alert.rule) == (
        AlertState.FIRING,
        Severity.CRITICAL,
        Rule.MASTER_DOWN,
    )
    assert alert.master == a and alert.title == "Master connection lost: A"
    assert Event.objects.filter(kind=AlertEventKind.FIRED, data__alert=alert.pk).exists()

    evaluate()
    assert Alert.objects.filter(dedup_key=f"master.down:{a.pk}").count() == 1, "deduplicated"

    recover(a)
    evaluate()
    alert.refresh_from_db()
    assert alert.state == AlertState.RESOLVED and alert.resolved_at is not None
    assert Event.objects.filter(kind=AlertEventKind.RESOLVED, data__alert=alert.pk).exists()

    fail(a)
    evaluate()
    assert Alert.objects.filter(dedup_key=f"master.down:{a.pk}").count() == 2, "a new outage"


def test_all_masters_down_fires_and_resolves_when_one_answers():
    a = make_master("a", "+971505760056")
    b = make_master("b", "+971505760057")
    fail(a)
    fail(b)
    evaluate()
    assert open_keys() == {"masters.all_down", f"master.down:{a.pk}", f"master.down:{b.pk}"}
    assert [alert.severity for alert in active_alerts()] == [Severity.CRITICAL] * 3

    recover(b)
    evaluate()
    assert open_keys() == {f"master.down:{a.pk}"}


def queue(master: Master, count: int, status: str = MessageStatus.QUEUED) -> None:
    Message.objects.bulk_create(
        Message(to="+971501234567", text="x", body_hash="-", master=master, status=status)
        for _ in range(count)
    )


def test_a_long_queue_warns_and_resolves_a_minute_after_it_shrinks():
    a = make_master("a", "+971505760056")
    AlertSettings.objects.update_or_create(pk=1, defaults={"queue_warning": 5})
    queue(a, 5)
    queue(a, 3, MessageStatus.SENT)
    evaluate()
    assert open_keys() == set(), "5 unsent is not over 5"

    queue(a, 1, MessageStatus.RETRYING)
    now = timezone.now()
    evaluate(now)
    alert = Alert.objects.get(dedup_key="queue.high")
    assert alert.severity == Severity.WARNING and alert.data["queue_length"] == 6

    queue(a, 2)
    evaluate(now + timedelta(seconds=2))
    alert.refresh_from_db()
    assert alert.data["queue_length"] == 8 and "8 messages" in alert.detail

    Message.objects.filter(status__in=MessageStatus.PENDING).update(status=MessageStatus.SENT)
    evaluate(now + timedelta(seconds=30))
    assert open_keys() == {"queue.high"}, "a dip does not resolve it at once"
    evaluate(now + timedelta(seconds=63))
    alert.refresh_from_db()
    assert alert.state == AlertState.RESOLVED


def test_one_master_carrying_most_of_the_load_warns():
    a = make_master("a", "+971505760056")
    b = make_master("b", "+971505760057")
    now = timezone.now()
    for ago, sent_a, sent_b in [(5, 45, 5), (15, 40, 5), (120, 0, 500)]:
        at = now - timedelta(seconds=ago)
        LoadMetric.objects.create(master=a, recorded_at=at, sent=sent_a)
        LoadMetric.objects.create(master=b, recorded_at=at, sent=sent_b)
    evaluate(now)
    alert = Alert.objects.get(dedup_key=f"load.share:{a.pk}")
    assert alert.severity == Severity.WARNING
    assert alert.data == {"share_pct": 89.5, "messages": 95, "threshold_pct": 80}


def test_several_failures_of_one_master_within_the_window_warn():
    a = make_master("a", "+971505760056")
    for _ in range(3):
        Event.objects.create(
            kind=EventKind.HEALTH_CHANGED, master=a, data={"from": H, "to": F}, message="down"
        )
    Event.objects.create(
        kind=EventKind.HEALTH_CHANGED, master=a, data={"from": F, "to": H}, message="up"
    )
    evaluate()
    assert open_keys() == {f"master.failures:{a.pk}"}
    # Thirty minutes on, the failures have left the window.
    evaluate(timezone.now() + timedelta(minutes=31))
    assert open_keys() == set()


def test_a_recovery_taking_over_the_threshold_warns():
    a = make_master("a", "+971505760056")
    make_master("b", "+971505760057")
    fail(a, ago=timedelta(minutes=4))
    evaluate()
    assert open_keys() == {f"master.down:{a.pk}"}
    evaluate(timezone.now() + timedelta(minutes=2))
    assert open_keys() == {f"master.down:{a.pk}", f"master.recovery_slow:{a.pk}"}
    AlertSettings.objects.filter(pk=1).update(recovery_warning_min=10)
    evaluate(timezone.now() + timedelta(minutes=3))
    assert open_keys() == {f"master.down:{a.pk}"}, "an admin raised the threshold"


def test_a_real_failover_raises_a_critical_alert_resolved_by_its_completion(trio):
    a, _, _ = trio
    evaluate()
    failover = execute_failover(a.pk, reason="test")
    evaluate()
    initiated = Alert.objects.get(dedup_key=f"failover:{failover.pk}")
    assert (initiated.rule, initiated.severity, initiated.state) == (
        Rule.FAILOVER_INITIATED,
        Severity.CRITICAL,
        AlertState.RESOLVED,
    )
    assert initiated.title == "Failover initiated: A"
    assert "complete" in initiated.data["resolution"]
    complete = Alert.objects.get(rule=Rule.FAILOVER_COMPLETE)
    assert (complete.severity, complete.state, complete.master) == (
        Severity.INFO,
        AlertState.RESOLVED,
        a,
    )
    evaluate()
    assert Alert.objects.filter(rule__in=Rule.EVENTS).count() == 2, "each event is read once"


def test_a_failover_with_no_backup_is_raised_and_ended():
    a = make_master("a", "+971505760056", health_status=F)
    evaluate()
    failover = execute_failover(a.pk, reason="test")
    evaluate()
    alert = Alert.objects.get(dedup_key=f"failover:{failover.pk}")
    assert alert.state == AlertState.RESOLVED
    assert alert.data["resolution"].startswith("Failover failed: No backup")


def test_rebalancing_and_recovery_are_recorded_as_info():
    a = make_master("a", "+971505760056")
    evaluate()
    Event.objects.create(kind=EventKind.REBALANCED, master=a, message="Rebalancing: 91%")
    Event.objects.create(
        kind=EventKind.HEALTH_CHANGED, master=a, data={"from": F, "to": H}, message="A: up"
    )
    evaluate()
    infos = Alert.objects.filter(severity=Severity.INFO).order_by("pk")
    assert [(alert.rule, alert.state) for alert in infos] == [
        (Rule.REBALANCED, AlertState.RESOLVED),
        (Rule.MASTER_RECOVERED, AlertState.RESOLVED),
    ]
    assert not active_alerts().exists(), "info alerts are never open"


def test_events_from_before_the_first_run_are_not_raised():
    a = make_master("a", "+971505760056")
    old = Event.objects.create(kind=EventKind.REBALANCED, master=a, message="long ago")
    Event.objects.filter(pk=old.pk).update(created_at=timezone.now() - timedelta(hours=1))
    recent = Event.objects.create(kind=EventKind.REBALANCED, master=a, message="just now")
    evaluate()
    assert list(Alert.objects.values_list("dedup_key", flat=True)) == [f"rebalanced:{recent.pk}"]


def test_an_event_committed_after_a_later_one_is_still_read():
    a = make_master("a", "+971505760056")
    evaluate()
    late = Event.objects.create(kind=EventKind.REBALANCED, master=a, message="late")
    early = Event.objects.create(kind=EventKind.REBALANCED, master=a, message="early")
    # As if "early" (the higher id) had been read while "late" was still uncommitted.
    AlertCursor.objects.filter(name="events").update(position=late.pk - 1, seen_ids=[early.pk])
    evaluate()
    assert list(Alert.objects.values_list("dedup_key", flat=True)) == [f"rebalanced:{late.pk}"]
    evaluate(timezone.now() + timedelta(minutes=2))
    cursor = AlertCursor.objects.get(name="events")
    assert (cursor.position, cursor.seen_ids) == (early.pk, []), "settled ids leave the list"
