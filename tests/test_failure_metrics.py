"""A master's failure metrics, and uptime over raw checks and hourly roll-ups alike."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from masters.choices import HealthStatus
from masters.metrics import FailureMetrics, failure_metrics, uptime, uptime_by_master
from masters.models import HealthCheck, HealthRollup
from masters.retention import roll_up_health_checks
from tests.conftest import make_master

pytestmark = pytest.mark.django_db

NOW = datetime(2025, 3, 20, 12, 20, tzinfo=UTC)
HOUR = timedelta(hours=1)
HEALTHY, DEGRADED, FAILED = HealthStatus.HEALTHY, HealthStatus.DEGRADED, HealthStatus.FAILED


@pytest.fixture
def m1(db):
    return make_master("m1", "+971505760056")


def add_checks(master, *rows: tuple[datetime, str]) -> None:
    HealthCheck.objects.bulk_create(
        HealthCheck(master=master, checked_at=checked_at, status=status, response_time_ms=10.0)
        for checked_at, status in rows
    )


def add_rollup(master, start: datetime, checks: int, healthy: int) -> None:
    HealthRollup.objects.create(
        master=master, bucket_start=start, checks=checks, healthy=healthy, failed=checks - healthy
    )


# --- failure metrics ------------------------------------------------------------


def test_failure_metrics_count_non_healthy_checks_of_the_last_30_minutes_only(m1):
    other = make_master("m2", "+971505760057")
    add_checks(
        m1,
        (NOW - timedelta(minutes=31), FAILED),  # too old
        (NOW - timedelta(minutes=29), DEGRADED),
        (NOW - timedelta(minutes=10), FAILED),
        (NOW - timedelta(minutes=5), HEALTHY),
        (NOW, FAILED),
    )
    add_checks(other, (NOW - timedelta(minutes=1), FAILED))

    assert failure_metrics(m1, now=NOW).failures_last_30_min == 3


def test_failure_metrics_report_the_masters_counters():
    last_success = NOW - timedelta(minutes=3)
    last_failure = NOW - timedelta(seconds=5)
    master = make_master(
        consecutive_failures=4,
        last_error="session STOPPED",
        last_success_at=last_success,
        last_failure_at=last_failure,
        recovery_attempts=2,
        health_status=HealthStatus.FAILED,
    )

    assert failure_metrics(master, now=NOW) == FailureMetrics(
        consecutive_failures=4,
        failures_last_30_min=0,
        last_error="session STOPPED",
        last_success_at=last_success,
        last_failure_at=last_failure,
        recovery_attempts=2,
    )


# --- uptime ---------------------------------------------------------------------


def test_uptime_over_raw_checks_is_the_share_of_healthy_ones_in_the_period(m1):
    since = NOW - HOUR
    add_checks(
        m1,
        (since - timedelta(seconds=1), FAILED),  # before the period
        (since, HEALTHY),
        (since + timedelta(minutes=10), HEALTHY),
        (since + timedelta(minutes=20), DEGRADED),
        (since + timedelta(minutes=30), HEALTHY),
        (NOW, FAILED),  # the period ends before NOW
    )

    assert uptime(m1, since, until=NOW) == 0.75


def test_uptime_over_rollups_adds_up_whole_buckets(m1):
    since = datetime(2025, 1, 10, 8, tzinfo=UTC)
    add_rollup(m1, since, checks=720, healthy=648)
    add_rollup(m1, since + HOUR, checks=720, healthy=720)

    assert uptime(m1, since, until=since + 2 * HOUR) == pytest.approx(1368 / 1440)


def test_uptime_across_rollups_and_raw_checks_counts_both(m1):
    add_rollup(m1, datetime(2025, 3, 12, 9, tzinfo=UTC), checks=10, healthy=5)
    add_checks(m1, *[(NOW - timedelta(minutes=m), HEALTHY) for m in range(1, 11)])

    assert uptime(m1, NOW - timedelta(days=30), until=NOW) == 0.75


def test_uptime_leaves_out_buckets_that_stick_out_of_the_period(m1):
    hour = datetime(2025, 1, 10, 8, tzinfo=UTC)
    add_rollup(m1, hour, checks=10, healthy=0)  # starts before the period
    add_rollup(m1, hour + HOUR, checks=10, healthy=10)  # inside
    add_rollup(m1, hour + 2 * HOUR, checks=10, healthy=0)  # ends after the period

    assert uptime(m1, hour + timedelta(minutes=30), until=hour + timedelta(hours=2.5)) == 1.0


def test_uptime_is_unknown_without_checks(m1):
    add_checks(m1, (NOW - timedelta(days=2), HEALTHY))

    assert uptime(m1, NOW - HOUR, until=NOW) is None


def test_uptime_is_the_same_before_and_after_the_checks_are_rolled_up(m1, settings):
    settings.HEALTH = settings.HEALTH | {"retention_days": 7}
    start = datetime(2025, 3, 13, 9, tzinfo=UTC)
    statuses = [HEALTHY, HEALTHY, FAILED, HEALTHY, DEGRADED]
    add_checks(m1, *[(start + timedelta(minutes=7 * i), statuses[i % 5]) for i in range(17)])
    before = uptime(m1.pk, start, until=start + 2 * HOUR)

    roll_up_health_checks(now=NOW)

    assert not HealthCheck.objects.exists()
    assert before == pytest.approx(11 / 17)
    assert uptime(m1.pk, start, until=start + 2 * HOUR) == pytest.approx(before)


def test_uptime_by_master_answers_for_every_master_including_unprobed_ones(m1):
    m2 = make_master("m2", "+971505760057")
    quiet = make_master("m3", "+971505760058")
    add_checks(m1, (NOW - timedelta(minutes=1), HEALTHY), (NOW - timedelta(minutes=2), FAILED))
    add_rollup(m2, NOW.replace(minute=0) - 5 * HOUR, checks=4, healthy=3)

    assert uptime_by_master(NOW - HOUR * 24, until=NOW) == {m1.pk: 0.5, m2.pk: 0.75, quiet.pk: None}


def test_uptime_by_master_takes_the_same_few_queries_for_many_masters(
    django_assert_max_num_queries,
):
    masters = [make_master(f"m{i}", f"+9715057600{i:02d}") for i in range(20)]
    for master in masters:
        add_checks(master, (NOW - timedelta(minutes=1), HEALTHY))
        add_rollup(master, NOW.replace(minute=0) - 3 * HOUR, checks=1, healthy=0)

    with django_assert_max_num_queries(3):
        result = uptime_by_master(NOW - HOUR * 24, until=NOW)

    assert result == {master.pk: 0.5 for master in masters}
