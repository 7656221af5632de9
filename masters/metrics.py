"""Read-side health numbers: a master's failure metrics and uptime over any period.

Uptime combines raw ``HealthCheck`` rows (the last ``HEALTH["retention_days"]``)
with the hourly ``HealthRollup`` buckets that replace older ones (see
``masters.retention``). The two never hold the same check: a check is either
raw or rolled up.

Granularity: a roll-up bucket counts only when its whole hour lies inside
the period, so where the period's ends fall mid-hour in the rolled-up past,
up to an hour at each end is left out. Raw checks count to the second.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.db.models import Count, Q, Sum
from django.utils import timezone

from masters.choices import HealthStatus
from masters.models import HealthCheck, HealthRollup, Master
from masters.retention import BUCKET, BUCKET_SECONDS

FAILURE_WINDOW = timedelta(minutes=30)


@dataclass(frozen=True)
class FailureMetrics:
    consecutive_failures: int
    failures_last_30_min: int
    last_error: str
    last_success_at: datetime | None
    last_failure_at: datetime | None
    recovery_attempts: int


def failure_metrics(master: Master, now: datetime | None = None) -> FailureMetrics:
    """Return ``master``'s failure metrics; only the 30-minute count needs a query."""
    now = now or timezone.now()
    recent_failures = (
        HealthCheck.objects.filter(
            master=master, checked_at__gt=now - FAILURE_WINDOW, checked_at__lte=now
        )
        .exclude(status=HealthStatus.HEALTHY)
        .count()
    )
    return FailureMetrics(
        consecutive_failures=master.consecutive_failures,
        failures_last_30_min=recent_failures,
        last_error=master.last_error,
        last_success_at=master.last_success_at,
        last_failure_at=master.last_failure_at,
        recovery_attempts=master.recovery_attempts,
    )


def uptime(
    master_or_id: Master | int, since: datetime, until: datetime | None = None
) -> float | None:
    """Return the share of healthy checks of one master in [since, until); None without checks."""
    master_id = master_or_id.pk if isinstance(master_or_id, Master) else master_or_id
    return _ratio(_totals(since, until, master_id=master_id).get(master_id))


def uptime_by_master(since: datetime, until: datetime | None = None) -> dict[int, float | None]:
    """Return every master's uptime in [since, until) in three queries, whatever their number."""
    totals = _totals(since, until)
    return {pk: _ratio(totals.get(pk)) for pk in Master.objects.values_list("pk", flat=True)}


def _ratio(counts: tuple[int, int] | None) -> float | None:
    checks, healthy = counts or (0, 0)
    return healthy / checks if checks else None


def _totals(since: datetime, until: datetime | None, **filters) -> dict[int, tuple[int, int]]:
    """Return {master id: (checks, healthy checks)} from raw checks and whole-hour buckets."""
    until = until or timezone.now()
    raw = (
        HealthCheck.objects.filter(checked_at__gte=since, checked_at__lt=until, **filters)
        .values("master_id")
        .annotate(checks=Count("id"), healthy=Count("id", filter=Q(status=HealthStatus.HEALTHY)))
        .order_by()
    )
    rolled = (
        HealthRollup.objects.filter(
            bucket_seconds=BUCKET_SECONDS,
            bucket_start__gte=since,
            bucket_start__lte=until - BUCKET,
            **filters,
        )
        .values("master_id")
        .annotate(checks=Sum("checks"), healthy=Sum("healthy"))
        .order_by()
    )
    totals: dict[int, list[int]] = defaultdict(lambda: [0, 0])
    for rows in (raw, rolled):
        for row in rows:
            totals[row["master_id"]][0] += row["checks"]
            totals[row["master_id"]][1] += row["healthy"]
    return {master_id: (checks, healthy) for master_id, (checks, healthy) in totals.items()}
