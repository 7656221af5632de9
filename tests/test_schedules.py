"""Background work on a schedule: setup_schedules registers it, the tasks do it."""

from __future__ import annotations

import logging
from datetime import timedelta
from io import StringIO

import pytest
from django.core.management import call_command
from django.utils import timezone
from django_q.models import Schedule

from masters.choices import EventKind, HealthStatus, Severity
from masters.models import Event, HealthCheck, HealthRollup, ProberLease, RuntimeSettings
from masters.tasks import check_prober, roll_up_health_checks
from tests.conftest import make_master

pytestmark = pytest.mark.django_db

SCHEDULE_FIELDS = ("pk", "name", "func", "schedule_type", "minutes", "repeats", "next_run")


def setup_schedules() -> str:
    out = StringIO()
    call_command("setup_schedules", stdout=out)
    return out.getvalue()


def schedules() -> list[dict]:
    return list(Schedule.objects.order_by("name", "pk").values(*SCHEDULE_FIELDS))


# --- setup_schedules ------------------------------------------------------------


def test_setup_schedules_registers_the_rollup_hourly_and_the_watchdog_every_minute():
    output = setup_schedules()

    rows = {row["name"]: row for row in schedules()}
    assert set(rows) == {"health-rollup", "prober-watchdog"}
    rollup, watchdog = rows["health-rollup"], rows["prober-watchdog"]
    assert (rollup["func"], rollup["schedule_type"]) == (
        "masters.tasks.roll_up_health_checks",
        Schedule.HOURLY,
    )
    assert (watchdog["func"], watchdog["schedule_type"], watchdog["minutes"]) == (
        "masters.tasks.check_prober",
        Schedule.MINUTES,
        1,
    )
    assert all(row["repeats"] == -1 for row in rows.values())
    assert "created health-rollup" in output
    assert "created prober-watchdog" in output


def test_running_setup_schedules_again_leaves_the_same_rows():
    setup_schedules()
    first = schedules()

    output = setup_schedules()

    assert schedules() == first  # same ids, and next_run is not pushed back
    assert "unchanged health-rollup" in output
    assert "unchanged prober-watchdog" in output
    assert "created" not in output and "deleted" not in output


def test_setup_schedules_puts_a_changed_schedule_back_and_keeps_its_row():
    setup_schedules()
    watchdog = Schedule.objects.get(name="prober-watchdog")
    Schedule.objects.filter(pk=watchdog.pk).update(
        func="masters.tasks.old_watchdog", minutes=5, repeats=3
    )

    output = setup_schedules()

    watchdog_now = Schedule.objects.get(name="prober-watchdog")
    assert watchdog_now.pk == watchdog.pk
    assert (watchdog_now.func, watchdog_now.minutes, watchdog_now.repeats) == (
        "masters.tasks.check_prober",
        1,
        -1,
    )
    assert "updated prober-watchdog" in output


def test_setup_schedules_deletes_orphans_of_its_task_modules_only():
    Schedule.objects.create(
        name="old-digest", func="monitoring.tasks.send_digest", schedule_type=Schedule.DAILY
    )
    Schedule.objects.create(func="masters.tasks.forgotten", schedule_type=Schedule.HOURLY)
    theirs = Schedule.objects.create(
        name="someone-else", func="reports.tasks.weekly", schedule_type=Schedule.WEEKLY
    )
    one_off = Schedule.objects.create(
        name="retry-failover-7", func="masters.tasks.retry_failover", schedule_type=Schedule.ONCE
    )

    output = setup_schedules()

    assert set(Schedule.objects.values_list("name", flat=True)) == {
        "health-rollup",
        "prober-watchdog",
        theirs.name,
        one_off.name,
    }
    assert "deleted old-digest (monitoring.tasks.send_digest)" in output
    assert "deleted (unnamed) (masters.tasks.forgotten)" in output


def test_setup_schedules_keeps_one_row_of_a_duplicated_name():
    setup_schedules()
    kept = Schedule.objects.get(name="health-rollup")
    Schedule.objects.create(
        name="health-rollup", func="masters.tasks.roll_up_health_checks", schedule_type="H"
    )

    setup_schedules()

    assert list(Schedule.objects.filter(name="health-rollup").values_list("pk", flat=True)) == [
        kept.pk
    ]


# --- the prober watchdog --------------------------------------------------------


@pytest.fixture
def one_minute_interval(db):
    RuntimeSettings.objects.create(pk=1, health_check_interval_ms=60_000)


def lease_expired(ago: timedelta) -> ProberLease:
    now = timezone.now()
    return ProberLease.objects.create(
        name="prober",
        holder="node-a:123:beef",
        acquired_at=now - timedelta(hours=1),
        renewed_at=now - ago - timedelta(seconds=90),
        expires_at=now - ago,
    )


def stall_events():
    return Event.objects.filter(kind=EventKind.PROBER_STALLED)


def test_check_prober_reports_health_monitoring_stopped_once(one_minute_interval):
    lease_expired(timedelta(minutes=3))

    first = check_prober()
    second = check_prober()

    assert second is None
    [event] = stall_events()
    assert event == first
    assert event.severity == Severity.CRITICAL
    assert event.message.startswith("Health monitoring stopped")
    assert event.data["last_holder"] == "node-a:123:beef"
    assert ProberLease.objects.get().stall_reported


def test_check_prober_waits_two_intervals_past_the_lease_expiry(one_minute_interval):
    lease_expired(timedelta(seconds=90))  # 1.5 intervals: a standby may still take over

    assert check_prober() is None
    assert not stall_events().exists()


def test_check_prober_is_quiet_while_a_prober_holds_the_lease(one_minute_interval):
    lease_expired(-timedelta(seconds=30))  # expires in 30 s

    assert check_prober() is None
    assert not stall_events().exists()


# --- the roll-up task -----------------------------------------------------------


def test_the_rollup_task_rolls_up_expired_checks_and_logs_a_summary(caplog, settings):
    settings.HEALTH = settings.HEALTH | {"retention_days": 7}
    master = make_master()
    old = timezone.now() - timedelta(days=8)
    HealthCheck.objects.bulk_create(
        [
            HealthCheck(master=master, checked_at=old, status=HealthStatus.HEALTHY),
            HealthCheck(master=master, checked_at=timezone.now(), status=HealthStatus.HEALTHY),
        ]
    )

    with caplog.at_level(logging.INFO, logger="masters.tasks"):
        result = roll_up_health_checks()

    assert (result.rolled_checks, HealthCheck.objects.count()) == (1, 1)
    assert HealthRollup.objects.get().checks == 1
    assert [r.getMessage() for r in caplog.records] == [
        "health roll-up: 1 checks into 1 buckets, 1 raw deleted, 0 expired buckets deleted"
    ]
