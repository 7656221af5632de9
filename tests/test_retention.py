"""Raw health checks older than the retention window become hourly roll-ups; old roll-ups go."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from masters.choices import HealthStatus
from masters.models import ConversationAffinity, HealthCheck, HealthRollup
from masters.retention import (
    RollupResult,
    prune_affinities,
    prune_alerts,
    roll_up_health_checks,
)
from tests.conftest import make_master

pytestmark = pytest.mark.django_db

NOW = datetime(2025, 3, 20, 12, 20, tzinfo=UTC)
# With 7 days of raw checks, the cutoff is 2025-03-13 12:20 UTC.
DAY = datetime(2025, 3, 13, tzinfo=UTC)

HEALTHY, DEGRADED, FAILED = HealthStatus.HEALTHY, HealthStatus.DEGRADED, HealthStatus.FAILED
ROLLUP_FIELDS = (
    "master_id",
    "bucket_start",
    "bucket_seconds",
    "checks",
    "healthy",
    "degraded",
    "failed",
    "response_ms_sum",
    "response_ms_count",
    "response_ms_max",
)


@pytest.fixture(autouse=True)
def retention_windows(settings):
    settings.HEALTH = settings.HEALTH | {"retention_days": 7, "rollup_retention_days": 90}


@pytest.fixture
def m1(db):
    return make_master("m1", "+971505760056")


@pytest.fixture
def m2(db):
    return make_master("m2", "+971505760057")


def at(hour: int, minute: int = 0, second: int = 0, day: datetime = DAY) -> datetime:
    return day.replace(hour=hour, minute=minute, second=second)


def add_checks(master, *rows: tuple[datetime, str, float | None]) -> list[HealthCheck]:
    return HealthCheck.objects.bulk_create(
        HealthCheck(
            master=master,
            checked_at=checked_at,
            status=status,
            response_time_ms=ms,
            error="" if status == HEALTHY else "session not working",
        )
        for checked_at, status, ms in rows
    )


def rollups() -> list[dict]:
    return list(HealthRollup.objects.order_by("master_id", "bucket_start").values(*ROLLUP_FIELDS))


def test_old_checks_are_counted_per_master_hour_and_status(m1, m2):
    add_checks(
        m1,
        (at(10, 0, 5), HEALTHY, 100.0),
        (at(10, 15), HEALTHY, 300.0),
        (at(10, 30), DEGRADED, 700.0),
        (at(10, 45), FAILED, None),  # a timeout has no response time
        (at(11, 5), HEALTHY, 50.0),
    )
    add_checks(m2, (at(10, 10), FAILED, 2000.0))

    result = roll_up_health_checks(now=NOW)

    assert result == RollupResult(rolled_checks=6, rollups_written=3, raw_deleted=6)
    assert rollups() == [
        {
            "master_id": m1.pk,
            "bucket_start": at(10),
            "bucket_seconds": 3600,
            "checks": 4,
            "healthy": 2,
            "degraded": 1,
            "failed": 1,
            "response_ms_sum": 1100.0,
            "response_ms_count": 3,
            "response_ms_max": 700.0,
        },
        {
            "master_id": m1.pk,
            "bucket_start": at(11),
            "bucket_seconds": 3600,
            "checks": 1,
            "healthy": 1,
            "degraded": 0,
            "failed": 0,
            "response_ms_sum": 50.0,
            "response_ms_count": 1,
            "response_ms_max": 50.0,
        },
        {
            "master_id": m2.pk,
            "bucket_start": at(10),
            "bucket_seconds": 3600,
            "checks": 1,
            "healthy": 0,
            "degraded": 0,
            "failed": 1,
            "response_ms_sum": 2000.0,
            "response_ms_count": 1,
            "response_ms_max": 2000.0,
        },
    ]


def test_only_checks_older_than_the_cutoff_are_deleted(m1):
    rolled = add_checks(m1, (at(12, 10), HEALTHY, 10.0), (at(12, 19, 59), FAILED, 20.0))
    kept = add_checks(
        m1,
        (at(12, 20), HEALTHY, 30.0),  # exactly at the cutoff: still inside the window
        (at(12, 40), HEALTHY, 40.0),  # same hour as rolled rows, but recent enough
        (NOW - timedelta(minutes=1), FAILED, 50.0),
    )

    result = roll_up_health_checks(now=NOW)

    assert result.raw_deleted == 2
    assert set(HealthCheck.objects.values_list("pk", flat=True)) == {c.pk for c in kept}
    assert not HealthCheck.objects.filter(pk__in=[c.pk for c in rolled]).exists()
    [bucket] = rollups()
    assert (bucket["bucket_start"], bucket["checks"], bucket["failed"]) == (at(12), 2, 1)


def test_an_hour_cut_by_the_cutoff_is_completed_into_the_same_bucket_by_a_later_run(m1):
    add_checks(m1, (at(12, 5), FAILED, 300.0), (at(12, 40), HEALTHY, 100.0))

    first = roll_up_health_checks(now=NOW)  # cutoff 12:20: only the 12:05 check
    second = roll_up_health_checks(now=NOW + timedelta(minutes=30))  # cutoff 12:50

    assert (first.rolled_checks, second.rolled_checks) == (1, 1)
    assert second.rollups_written == 1
    [bucket] = rollups()
    assert bucket["bucket_start"] == at(12)
    assert (bucket["checks"], bucket["healthy"], bucket["failed"]) == (2, 1, 1)
    assert (bucket["response_ms_sum"], bucket["response_ms_count"]) == (400.0, 2)
    assert bucket["response_ms_max"] == 300.0  # max of both runs, not the last one's
    assert not HealthCheck.objects.exists()


def test_checks_are_added_to_a_bucket_that_has_no_response_times_yet(m1):
    HealthRollup.objects.create(master=m1, bucket_start=at(9), checks=3, failed=3)
    add_checks(m1, (at(9, 30), HEALTHY, 80.0))

    roll_up_health_checks(now=NOW)

    [bucket] = rollups()
    assert (bucket["checks"], bucket["healthy"], bucket["failed"]) == (4, 1, 3)
    assert (bucket["response_ms_sum"], bucket["response_ms_count"]) == (80.0, 1)
    assert bucket["response_ms_max"] == 80.0


def test_a_backlog_with_gaps_is_rolled_up_hour_by_hour(m1):
    hours = [at(3), at(17, day=DAY - timedelta(days=2)), at(23, day=DAY - timedelta(days=5))]
    add_checks(m1, *[(hour + timedelta(minutes=m), HEALTHY, 1.0) for hour in hours for m in (1, 2)])

    result = roll_up_health_checks(now=NOW)

    assert result == RollupResult(rolled_checks=6, rollups_written=3, raw_deleted=6)
    assert [(r["bucket_start"], r["checks"]) for r in rollups()] == [(h, 2) for h in sorted(hours)]


def test_rollups_whose_hour_ended_before_the_rollup_window_are_deleted(m1):
    edge = NOW - timedelta(days=90)  # 2024-12-20 12:20
    expired = at(10, day=edge)  # ended 11:00, before the edge
    straddling = at(12, day=edge)  # still has 40 minutes inside
    HealthRollup.objects.bulk_create(
        HealthRollup(master=m1, bucket_start=start, checks=720, healthy=720)
        for start in (expired, straddling, at(0))
    )

    result = roll_up_health_checks(now=NOW)

    assert result == RollupResult(rollups_deleted=1)
    assert [r["bucket_start"] for r in rollups()] == [straddling, at(0)]


def test_a_second_run_changes_nothing(m1, m2):
    add_checks(m1, (at(10, 5), HEALTHY, 10.0), (at(12, 10), FAILED, None), (at(13), HEALTHY, 5.0))
    add_checks(m2, (at(11, 59, 59), DEGRADED, 900.0))
    HealthRollup.objects.create(master=m2, bucket_start=NOW - timedelta(days=100), checks=1)
    roll_up_health_checks(now=NOW)
    before = (rollups(), list(HealthCheck.objects.order_by("pk").values()))

    again = roll_up_health_checks(now=NOW)

    assert again == RollupResult()
    assert (rollups(), list(HealthCheck.objects.order_by("pk").values())) == before


def test_a_crash_while_writing_buckets_keeps_that_hours_raw_checks(m1, monkeypatch):
    add_checks(m1, (at(10, 5), HEALTHY, 10.0), (at(10, 6), FAILED, 20.0))

    def crash(*args, **kwargs):
        raise RuntimeError("database went away")

    monkeypatch.setattr(HealthRollup.objects, "bulk_create", crash)
    with pytest.raises(RuntimeError):
        roll_up_health_checks(now=NOW)

    assert HealthCheck.objects.count() == 2
    assert not HealthRollup.objects.exists()


def test_buckets_are_utc_hours_whatever_the_sites_time_zone(m1, settings):
    settings.TIME_ZONE = "Asia/Kolkata"  # UTC+05:30: local hours start at :30 UTC
    add_checks(m1, (at(10, 10), HEALTHY, 1.0), (at(10, 40), HEALTHY, 1.0))

    roll_up_health_checks(now=NOW)

    assert [(r["bucket_start"], r["checks"]) for r in rollups()] == [(at(10), 2)]


def test_expired_conversation_affinities_are_deleted_and_live_ones_kept(m1):
    now = datetime(2026, 1, 1, 12, tzinfo=UTC)
    for contact, expires_at in [
        ("+971501234561", now - timedelta(seconds=1)),
        ("+971501234562", now),
        ("+971501234563", now + timedelta(hours=1)),
    ]:
        ConversationAffinity.objects.create(contact=contact, master=m1, expires_at=expires_at)
    assert prune_affinities(now) == 2
    assert list(ConversationAffinity.objects.values_list("contact", flat=True)) == ["+971501234563"]


def test_alerts_resolved_before_the_window_go_with_their_deliveries_open_ones_stay(m1):
    from monitoring.models import Alert, AlertDelivery, AlertState

    now = datetime(2026, 6, 1, 12, tzinfo=UTC)
    old = now - timedelta(days=91)

    def alert(key: str, state: str, resolved_at=None) -> Alert:
        return Alert.objects.create(
            dedup_key=key,
            rule="master_down",
            severity="critical",
            state=state,
            title=key,
            fired_at=old,
            last_seen_at=old,
            resolved_at=resolved_at,
        )

    gone = alert("old-resolved", AlertState.RESOLVED, resolved_at=old)
    AlertDelivery.objects.create(alert=gone, notice="trigger", target="email to a@b.c")
    alert("recent-resolved", AlertState.RESOLVED, resolved_at=now - timedelta(days=1))
    alert("still-firing", AlertState.FIRING)
    assert prune_alerts(now) == 1
    assert sorted(Alert.objects.values_list("dedup_key", flat=True)) == [
        "recent-resolved",
        "still-firing",
    ]
    assert not AlertDelivery.objects.exists()
