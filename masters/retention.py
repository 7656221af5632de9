"""Keep health history bounded: raw checks for days, hourly roll-ups for months.

The prober writes one ``HealthCheck`` per master every few seconds (1,000
masters at 5 s is ~17 million rows a day). Raw rows older than
``HEALTH["retention_days"]`` are folded into one ``HealthRollup`` per master
and UTC hour, so ``masters.metrics.uptime`` can still answer for
``HEALTH["rollup_retention_days"]``; roll-ups older than that are deleted.

``masters.tasks.roll_up_health_checks`` runs this hourly (see
``manage.py setup_schedules``).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from django.conf import settings
from django.db import transaction
from django.db.models import Count, Max, Min, Q, Sum
from django.db.models.functions import TruncHour
from django.utils import timezone

from masters.choices import HealthStatus
from masters.models import ConversationAffinity, HealthCheck, HealthRollup, LoadMetric

BUCKET = timedelta(hours=1)
BUCKET_SECONDS = int(BUCKET.total_seconds())
# Raw checks rolled up per transaction: 1,000 masters probed every 5 s make
# ~720,000 rows and 1,000 buckets an hour, which one transaction handles well.
CHUNK = timedelta(hours=1)


class RollupConflict(Exception):
    """Another run deleted some of the checks this run was rolling up; nothing was written."""


@dataclass(frozen=True)
class RollupResult:
    rolled_checks: int = 0
    rollups_written: int = 0
    raw_deleted: int = 0
    rollups_deleted: int = 0


def roll_up_health_checks(now: datetime | None = None) -> RollupResult:
    """Fold raw checks older than the retention window into hourly buckets; expire old buckets.

    Works one hour of raw checks at a time, each hour in its own transaction:
    its buckets are written and exactly its raw rows deleted together, so a
    crash leaves every check either raw or rolled up, never both or neither,
    and the next run carries on where this one stopped. A bucket cut by the
    cutoff is completed by a later run (counts added, maxima combined).
    """
    now = now or timezone.now()
    cutoff = now - timedelta(days=settings.HEALTH["retention_days"])
    rolled = written = 0
    while (start := _oldest_hour_before(cutoff)) is not None:
        checks, buckets = _roll_up_range(start, min(start + CHUNK, cutoff))
        rolled += checks
        written += buckets
    rollup_cutoff = now - timedelta(days=settings.HEALTH["rollup_retention_days"])
    # A bucket goes once all of its hour is older than the roll-up window.
    expired, _ = HealthRollup.objects.filter(bucket_start__lte=rollup_cutoff - BUCKET).delete()
    return RollupResult(rolled, written, rolled, expired)


def _oldest_hour_before(cutoff: datetime) -> datetime | None:
    """Return the UTC hour of the oldest raw check before ``cutoff`` (skips empty hours)."""
    oldest = HealthCheck.objects.filter(checked_at__lt=cutoff).aggregate(at=Min("checked_at"))["at"]
    if oldest is None:
        return None
    return oldest.astimezone(UTC).replace(minute=0, second=0, microsecond=0)


def _roll_up_range(start: datetime, end: datetime) -> tuple[int, int]:
    """Roll up the raw checks in [start, end) in one transaction; return (checks, buckets)."""
    raw = HealthCheck.objects.filter(checked_at__gte=start, checked_at__lt=end)
    with transaction.atomic():
        groups = list(_aggregate(raw))
        expected = sum(group["checks"] for group in groups)
        _, deleted = raw.delete()
        if deleted.get(HealthCheck._meta.label, 0) != expected:
            # A concurrent run (or a cascade from a deleted master) got there
            # first: adding these counts would count some checks twice.
            raise RollupConflict(
                f"rolling up from {start:%Y-%m-%d %H:%M}: aggregated {expected} checks, "
                f"deleted {deleted.get(HealthCheck._meta.label, 0)}"
            )
        _merge(start, end, groups)
    return expected, len(groups)


def _aggregate(raw):
    """Count and measure ``raw`` per master and UTC hour, in the database."""
    return (
        raw.annotate(bucket=TruncHour("checked_at", tzinfo=UTC))
        .values("master_id", "bucket")
        .annotate(
            checks=Count("id"),
            healthy=Count("id", filter=Q(status=HealthStatus.HEALTHY)),
            degraded=Count("id", filter=Q(status=HealthStatus.DEGRADED)),
            failed=Count("id", filter=Q(status=HealthStatus.FAILED)),
            response_ms_sum=Sum("response_time_ms"),
            response_ms_count=Count("response_time_ms"),
            response_ms_max=Max("response_time_ms"),
        )
        .order_by()
    )


COUNTERS = ("checks", "healthy", "degraded", "failed", "response_ms_count")


def _merge(start: datetime, end: datetime, groups: list[dict]) -> None:
    """Add ``groups`` to the buckets they fall in, creating the missing ones.

    The existing buckets are locked first, so a concurrent merge waits.
    """
    existing = {
        (rollup.master_id, rollup.bucket_start): rollup
        for rollup in HealthRollup.objects.select_for_update().filter(
            bucket_start__gte=start, bucket_start__lt=end, bucket_seconds=BUCKET_SECONDS
        )
    }
    new, changed = [], []
    for group in groups:
        rollup = existing.get((group["master_id"], group["bucket"]))
        if rollup is None:
            rollup = HealthRollup(
                master_id=group["master_id"],
                bucket_start=group["bucket"],
                bucket_seconds=BUCKET_SECONDS,
            )
            new.append(rollup)
        else:
            changed.append(rollup)
        for name in COUNTERS:
            setattr(rollup, name, getattr(rollup, name) + group[name])
        rollup.response_ms_sum += group["response_ms_sum"] or 0.0
        maxima = [m for m in (rollup.response_ms_max, group["response_ms_max"]) if m is not None]
        rollup.response_ms_max = max(maxima, default=None)
    HealthRollup.objects.bulk_create(new)
    HealthRollup.objects.bulk_update(changed, [*COUNTERS, "response_ms_sum", "response_ms_max"])


def prune_load_metrics(now: datetime | None = None) -> int:
    """Delete load metrics older than the raw retention window (they are 10-second samples)."""
    cutoff = (now or timezone.now()) - timedelta(days=settings.HEALTH["retention_days"])
    deleted, _ = LoadMetric.objects.filter(recorded_at__lt=cutoff).delete()
    return deleted


def prune_affinities(now: datetime | None = None) -> int:
    """Delete expired conversation affinities: a contact with none is routed afresh."""
    deleted, _ = ConversationAffinity.objects.filter(expires_at__lte=now or timezone.now()).delete()
    return deleted


def prune_alerts(now: datetime | None = None) -> int:
    """Delete alerts resolved before the roll-up window (90 days), with their deliveries."""
    from monitoring.models import Alert, AlertState  # monitoring builds on masters

    cutoff = (now or timezone.now()) - timedelta(days=settings.HEALTH["rollup_retention_days"])
    _, per_model = Alert.objects.filter(state=AlertState.RESOLVED, resolved_at__lt=cutoff).delete()
    return per_model.get(Alert._meta.label, 0)  # alerts, not counting their deliveries
