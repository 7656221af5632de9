"""Read what /metrics reports from the database: a fixed handful of aggregate queries.

The number of queries does not grow with the number of masters (eight per
scrape, whatever their count): one per table, each a GROUP BY or one row.
The result is plain data, so ``monitoring.metrics.collector`` turns it into
metric families without touching the database.

Health checks are counted over the current *epoch* (the UTC hour so far),
not over the whole raw-retention window: the window holds up to a week of
probes (~17 million rows a day at 1,000 masters every 5 s) and the hourly
roll-up deletes its oldest hour, which would make the counts drop every hour.
A count that restarts from zero at each epoch is what Prometheus expects of
a counter that resets, so ``rate()`` stays right across the boundary.

Even one epoch is up to 720,000 rows at 1,000 masters, so each web process
keeps running totals for the epoch (``CheckTotals``) and adds only the rows
written since its last scrape, found by id. The totals equal a full recount
(every process reports the same numbers) because only the prober writes
health checks, one lease holder at a time, so their ids commit in order.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from django.db.models import Count, Max, Q, Subquery, Sum
from django.utils import timezone

from masters.choices import HealthStatus
from masters.models import FailoverEvent, HealthCheck, LoadMetric, Master, Message, ProberLease
from monitoring.models import Alert, AlertDelivery

# Upper bounds of the check latency histogram, in seconds. Probes time out at
# HEALTH_CHECK_TIMEOUT (2 s by default, 60 s at most).
LATENCY_BUCKETS_S = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0)
# Health-check counters restart at the start of each epoch (see the module docstring).
CHECK_EPOCH = timedelta(hours=1)
MAX_ID = 2**63 - 1


@dataclass(frozen=True)
class MasterRow:
    pk: int
    external_id: str
    gateway: str
    role: str
    status: str
    active: bool
    consecutive_failures: int


@dataclass(frozen=True)
class CheckStats:
    """One master's probes since the epoch began."""

    by_result: dict[str, int]
    # Cumulative counts of timed checks at or under each LATENCY_BUCKETS_S bound.
    le_counts: tuple[int, ...]
    timed: int
    latency_sum_s: float

    def __add__(self, other: CheckStats) -> CheckStats:
        return CheckStats(
            by_result={k: n + other.by_result[k] for k, n in self.by_result.items()},
            le_counts=tuple(a + b for a, b in zip(self.le_counts, other.le_counts, strict=True)),
            timed=self.timed + other.timed,
            latency_sum_s=self.latency_sum_s + other.latency_sum_s,
        )


@dataclass(frozen=True)
class LeaseRow:
    holder: str
    live: bool
    heartbeat_age_s: float | None
    all_down: bool


@dataclass
class Snapshot:
    """Everything one scrape reports, keyed by master pk where it is per master."""

    taken_at: datetime
    checks_since: datetime
    masters: list[MasterRow] = field(default_factory=list)
    # (master pk or None for unassigned, message status) -> rows
    messages: dict[tuple[int | None, str], int] = field(default_factory=dict)
    # (failed master pk, failover status) -> rows
    failovers: dict[tuple[int, str], int] = field(default_factory=dict)
    checks: dict[int, CheckStats] = field(default_factory=dict)
    load_share: dict[int, float] = field(default_factory=dict)
    # (severity, state) -> open alerts
    alerts: dict[tuple[str, str], int] = field(default_factory=dict)
    deliveries: dict[str, int] = field(default_factory=dict)
    lease: LeaseRow | None = None


def epoch_start(now: datetime) -> datetime:
    """Return the start of the health-check epoch ``now`` falls in (a whole UTC hour)."""
    seconds = int(CHECK_EPOCH.total_seconds())
    stamp = int(now.timestamp()) // seconds * seconds
    return datetime.fromtimestamp(stamp, tz=UTC)


def take(now: datetime | None = None) -> Snapshot:
    """Read the whole snapshot: eight queries, none of them per master."""
    now = now or timezone.now()
    since = epoch_start(now)
    return Snapshot(
        taken_at=now,
        checks_since=since,
        masters=read_masters(),
        messages=count_by(Message.objects, "master_id", "status"),
        failovers=count_by(FailoverEvent.objects, "failed_master_id", "status"),
        checks=CHECK_TOTALS.read(since),
        load_share=read_load_share(),
        alerts=count_by(Alert.objects.open(), "severity", "state"),
        deliveries={key[0]: n for key, n in count_by(AlertDelivery.objects, "status").items()},
        lease=read_lease(now),
    )


def count_by(queryset, *fields: str) -> dict[tuple, int]:
    """Count ``queryset``'s rows per distinct value of ``fields``, in one GROUP BY."""
    rows = queryset.values(*fields).annotate(n=Count("pk")).order_by().values_list(*fields, "n")
    return {tuple(row[:-1]): row[-1] for row in rows}


def read_masters() -> list[MasterRow]:
    rows = Master.objects.order_by("external_id").values_list(
        "pk",
        "external_id",
        "gateway_kind",
        "role",
        "health_status",
        "is_active",
        "consecutive_failures",
    )
    return [MasterRow(*row) for row in rows]


class CheckTotals:
    """This process's running totals of the current epoch's health checks, per master."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.reset()

    def reset(self) -> None:
        """Forget the totals: the next read recounts the epoch (tests call it between cases)."""
        self.epoch: datetime | None = None
        self.last_id = 0
        self.stats: dict[int, CheckStats] = {}

    def read(self, since: datetime) -> dict[int, CheckStats]:
        """Return the epoch from ``since`` so far, adding the rows written since the last read."""
        with self.lock:
            if since != self.epoch:
                self.reset()
                self.epoch = since
            new, last_id = read_checks(since, self.last_id)
            for master_id, stats in new.items():
                known = self.stats.get(master_id)
                self.stats[master_id] = stats if known is None else known + stats
            self.last_id = max(self.last_id, last_id)
            return dict(self.stats)


CHECK_TOTALS = CheckTotals()


def read_checks(since: datetime, after_id: int = 0) -> tuple[dict[int, CheckStats], int]:
    """Count each master's probes in the epoch from ``since`` with an id above ``after_id``.

    One query; returns the counts by result and latency bucket, and the
    highest id counted (the next call's ``after_id``). The first read of an
    epoch finds its rows by time; later ones by id alone, so that the
    database reads only the new rows from the primary key (by time it would
    read the whole epoch so far and drop most of it), and the epoch is
    checked row by row in the aggregates.
    """
    in_epoch = Q(checked_at__gte=since, checked_at__lt=since + CHECK_EPOCH)
    # The upper bound changes no result: with a lower bound alone, SQLite's
    # planner (no statistics) walks the master_id index to save a sort and
    # reads the whole table instead of the new rows.
    by_id = Q(pk__gt=after_id, pk__lte=MAX_ID)
    rows = HealthCheck.objects.filter(in_epoch if after_id == 0 else by_id)
    # Read by id, a row may belong to another epoch: each aggregate checks.
    counted = Q() if after_id == 0 else in_epoch
    buckets = {
        f"le_{i}": Count("pk", filter=counted & Q(response_time_ms__lte=bound * 1000))
        for i, bound in enumerate(LATENCY_BUCKETS_S)
    }
    results = {
        status.value: Count("pk", filter=counted & Q(status=status))
        for status in sorted(HealthStatus.PROBE_RESULTS)
    }
    grouped = (
        rows.values("master_id")
        .annotate(
            top_id=Max("pk", filter=counted or None),
            timed=Count("response_time_ms", filter=counted or None),
            total_ms=Sum("response_time_ms", filter=counted or None),
            **buckets,
            **results,
        )
        .order_by()
    )
    found, top = {}, after_id
    for row in grouped:
        if row["top_id"] is None:
            continue  # only rows of another epoch (written late, or a clock ahead)
        found[row["master_id"]] = CheckStats(
            by_result={status: row[status] for status in results},
            le_counts=tuple(row[f"le_{i}"] for i in range(len(LATENCY_BUCKETS_S))),
            timed=row["timed"],
            latency_sum_s=(row["total_ms"] or 0.0) / 1000,
        )
        top = max(top, row["top_id"])
    return found, top


def read_load_share() -> dict[int, float]:
    """Return each master's share of the load (%) from the latest LoadMetric round."""
    latest = LoadMetric.objects.order_by("-recorded_at").values("recorded_at")[:1]
    rows = LoadMetric.objects.filter(recorded_at=Subquery(latest)).values_list(
        "master_id", "share_pct"
    )
    return dict(rows)


def read_lease(now: datetime) -> LeaseRow | None:
    lease = (
        ProberLease.objects.filter(name="prober")
        .values("holder", "renewed_at", "expires_at", "all_down_since")
        .first()
    )
    if lease is None:
        return None
    renewed, expires = lease["renewed_at"], lease["expires_at"]
    return LeaseRow(
        holder=lease["holder"],
        live=bool(lease["holder"]) and expires is not None and expires > now,
        heartbeat_age_s=None if renewed is None else max(0.0, (now - renewed).total_seconds()),
        all_down=lease["all_down_since"] is not None,
    )
