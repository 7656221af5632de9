"""What the dashboard shows, read in a fixed number of queries whatever the number of masters.

The home view reads it once per page; each web process's feed
(``monitoring.live.feed``) reads it again after every change and every few
seconds, once for all the dashboards that process serves. The trends (uptime
sparklines, load distribution) read the last hour of samples, so the feed
reuses them for ``TRENDS_MAX_AGE_S``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from itertools import count

from django.conf import settings
from django.db.models import Count, Prefetch, Q, Sum
from django.utils import timezone
from django.utils.safestring import SafeString, mark_safe

from masters.choices import FailoverStatus, HealthStatus, MessageStatus
from masters.load import IN_QUEUE
from masters.models import Event, FailoverEvent, HealthCheck, LoadMetric, Master, Message
from monitoring.charts import sparkline as draw_sparkline
from monitoring.models import Alert, AlertDelivery

TREND_WINDOW = timedelta(hours=1)
TREND_BUCKETS = 12  # five minutes each
TRENDS_MAX_AGE_S = 30.0
EVENTS_SHOWN = 25
FAILOVERS_SHOWN = 10
ALERTS_SHOWN = 50
SEVERITY_ORDER = {"critical": 0, "warning": 1, "info": 2}
# Series colours of the load chart (CSS classes series-0 .. series-7), reused past eight masters.
SERIES = 8

_versions = count(1)


@dataclass
class MasterRow:
    """One master and the figures its row shows."""

    master: Master
    queued: int = 0
    in_flight: int = 0
    in_doubt: int = 0  # of the above, sent once with no answer: held on this master
    throughput: float | None = None  # msg/s over the latest load interval
    share_pct: float | None = None
    uptime: list[float | None] = field(default_factory=list)  # % per bucket, oldest first
    uptime_pct: float | None = None  # over the whole window
    sparkline: SafeString = mark_safe("")  # noqa: RUF009 - an immutable str


@dataclass(frozen=True)
class Totals:
    queued: int
    in_flight: int
    sent_hour: int
    dead_hour: int
    healthy: int
    degraded: int
    failed: int
    other: int  # unknown or in maintenance


@dataclass(frozen=True)
class LoadShare:
    name: str
    series: int
    sent: int
    pct: float
    x: float  # where the bar's segment starts, in % of the bar


@dataclass(frozen=True)
class LoadBucket:
    start: datetime
    end: datetime
    total: int
    shares: list[LoadShare]


@dataclass(frozen=True)
class Trends:
    """The last hour, in TREND_BUCKETS buckets: uptime per master and the load split."""

    masters: tuple[int, ...]  # the masters they were read for, in the dashboard's order
    uptime: dict[int, list[float | None]]
    uptime_pct: dict[int, float]  # over the whole window
    load: list[LoadBucket]
    legend: list[tuple[int, str]]  # (series, master name)
    read_at: datetime


@dataclass
class Dashboard:
    rows: list[MasterRow]
    totals: Totals
    trends: Trends
    failovers: list[FailoverEvent]
    alerts: list[Alert]
    events: list[Event]
    last_event_id: int
    read_at: datetime
    # Increases with every read in this process: a consumer never sends an older one.
    version: int = field(default_factory=lambda: next(_versions))

    @property
    def master_order(self) -> tuple[int, ...]:
        return tuple(row.master.pk for row in self.rows)


def load_dashboard(trends: Trends | None = None, now: datetime | None = None) -> Dashboard:
    """Read everything the dashboard shows.

    ``trends`` read earlier are reused if they cover the same masters (they
    change slowly; the feed keeps them half a minute).
    """
    now = now or timezone.now()
    # The newest event first: whatever the other reads show happened by then.
    events = list(Event.objects.select_related("master", "actor").order_by("-pk")[:EVENTS_SHOWN])
    masters = list(Master.objects.order_by("priority", "external_id"))
    if trends is None or trends.masters != tuple(master.pk for master in masters):
        trends = load_trends(masters, now)
    rows = [
        MasterRow(
            master,
            uptime=trends.uptime.get(master.pk, []),
            uptime_pct=trends.uptime_pct.get(master.pk),
        )
        for master in masters
    ]
    queued, in_flight = _fill_queues(rows, now)
    _fill_throughput(rows, now)
    for row in rows:
        row.sparkline = sparkline(row)
    return Dashboard(
        rows=rows,
        totals=_totals(masters, queued, in_flight, now),
        trends=trends,
        failovers=_failovers(),
        alerts=sorted(
            Alert.objects.open()
            .select_related("master", "acknowledged_by")
            # Who was told, and how each attempt went (one query for all alerts).
            .prefetch_related(Prefetch("deliveries", AlertDelivery.objects.order_by("pk")))
            .order_by("-fired_at", "-pk")[:ALERTS_SHOWN],
            # Critical first, then warnings; newest first within each.
            key=lambda alert: SEVERITY_ORDER.get(alert.severity, len(SEVERITY_ORDER)),
        ),
        events=events,
        last_event_id=events[0].pk if events else 0,
        read_at=now,
    )


def _failovers() -> list[FailoverEvent]:
    failovers = list(
        FailoverEvent.objects.select_related(
            "failed_master", "backup_master", "initiated_by"
        ).order_by("-started_at", "-pk")[:FAILOVERS_SHOWN]
    )
    for failover in failovers:
        # Only a completed failover can be rolled back (masters.failover.rollback_failover).
        failover.can_roll_back = failover.status == FailoverStatus.COMPLETED
    return failovers


def _fill_queues(rows: list[MasterRow], now: datetime) -> tuple[int, int]:
    """Set each row's queue, in-flight and in-doubt counts; return the totals (unassigned too)."""
    by_master = {row.master.pk: row for row in rows}
    counts = (
        Message.objects.filter(status__in=IN_QUEUE)
        .values("master")
        .annotate(
            in_flight=Count("pk", filter=Q(status=MessageStatus.SENDING)),
            queued=Count("pk", filter=~Q(status=MessageStatus.SENDING)),
            in_doubt=Count("pk", filter=Message.doubted(now)),
        )
    )
    queued = in_flight = 0
    for line in counts:
        queued, in_flight = queued + line["queued"], in_flight + line["in_flight"]
        if row := by_master.get(line["master"]):
            row.queued, row.in_flight, row.in_doubt = (
                line["queued"],
                line["in_flight"],
                line["in_doubt"],
            )
    return queued, in_flight


def _fill_throughput(rows: list[MasterRow], now: datetime) -> None:
    """Set throughput and share from each master's latest load sample (the prober's roll-up)."""
    since = now - timedelta(seconds=3 * settings.LOAD_METRICS_INTERVAL_S)
    latest = {
        sample["master"]: sample
        for sample in LoadMetric.objects.filter(recorded_at__gte=since)
        .order_by("recorded_at", "pk")
        .values("master", "throughput_per_s", "share_pct")
    }
    for row in rows:
        if sample := latest.get(row.master.pk):
            row.throughput, row.share_pct = sample["throughput_per_s"], sample["share_pct"]


def _totals(masters: list[Master], queued: int, in_flight: int, now: datetime) -> Totals:
    hour_ago = now - timedelta(hours=1)
    sent = LoadMetric.objects.filter(recorded_at__gte=hour_ago).aggregate(sent=Sum("sent"))
    dead = Message.objects.filter(status=MessageStatus.DEAD, updated_at__gte=hour_ago).count()
    statuses = [master.health_status for master in masters if master.is_active]
    healthy, degraded, failed = (
        statuses.count(status)
        for status in (HealthStatus.HEALTHY, HealthStatus.DEGRADED, HealthStatus.FAILED)
    )
    return Totals(
        queued=queued,
        in_flight=in_flight,
        sent_hour=sent["sent"] or 0,
        dead_hour=dead,
        healthy=healthy,
        degraded=degraded,
        failed=failed,
        other=len(statuses) - healthy - degraded - failed,
    )


# --- trends: the last hour in buckets ---------------------------------------------


def buckets(now: datetime) -> list[tuple[datetime, datetime]]:
    """The trend window's buckets, oldest first; the last one ends now."""
    size = TREND_WINDOW / TREND_BUCKETS
    start = now - TREND_WINDOW
    return [(start + size * i, start + size * (i + 1)) for i in range(TREND_BUCKETS)]


def load_trends(masters: list[Master], now: datetime | None = None) -> Trends:
    """Read the last hour's uptime and load split per master: two aggregate queries."""
    now = now or timezone.now()
    spans = buckets(now)
    uptime, uptime_pct = _uptime(spans)
    return Trends(
        masters=tuple(master.pk for master in masters),
        uptime=uptime,
        uptime_pct=uptime_pct,
        load=_load(spans, {master.pk: master for master in masters}),
        legend=[(i % SERIES, master.display_name) for i, master in enumerate(masters)],
        read_at=now,
    )


def _uptime(
    spans: list[tuple[datetime, datetime]],
) -> tuple[dict[int, list[float | None]], dict[int, float]]:
    """Share of healthy probes per master, in %: per bucket (None: no probe) and overall."""
    aggregates = {}
    for i, (start, end) in enumerate(spans):
        within = Q(checked_at__gte=start, checked_at__lt=end)
        aggregates[f"all{i}"] = Count("pk", filter=within)
        aggregates[f"ok{i}"] = Count("pk", filter=within & Q(status=HealthStatus.HEALTHY))
    lines = (
        HealthCheck.objects.filter(checked_at__gte=spans[0][0], checked_at__lt=spans[-1][1])
        .values("master")
        .annotate(**aggregates)
    )
    per_bucket, overall = {}, {}
    for line in lines:
        ok, checks = (sum(line[f"{kind}{i}"] for i in range(len(spans))) for kind in ("ok", "all"))
        per_bucket[line["master"]] = [
            100 * line[f"ok{i}"] / line[f"all{i}"] if line[f"all{i}"] else None
            for i in range(len(spans))
        ]
        overall[line["master"]] = 100 * ok / checks
    return per_bucket, overall


def _load(spans: list[tuple[datetime, datetime]], masters: dict[int, Master]) -> list[LoadBucket]:
    """Messages each master sent per bucket (from the load roll-ups), as stacked shares."""
    aggregates = {
        f"sent{i}": Sum("sent", filter=Q(recorded_at__gt=start, recorded_at__lte=end))
        for i, (start, end) in enumerate(spans)
    }
    lines = list(
        LoadMetric.objects.filter(recorded_at__gt=spans[0][0], recorded_at__lte=spans[-1][1])
        .values("master")
        .annotate(**aggregates)
    )
    series = {pk: i % SERIES for i, pk in enumerate(masters)}
    result = []
    for i, (start, end) in enumerate(spans):
        sent = [(line["master"], line[f"sent{i}"] or 0) for line in lines]
        sent = [(pk, n) for pk, n in sent if n and pk in masters]
        total = sum(n for _, n in sent)
        shares, x = [], 0.0
        for pk, n in sorted(sent, key=lambda item: series[item[0]]):
            pct = 100 * n / total
            shares.append(LoadShare(masters[pk].display_name, series[pk], n, pct, x))
            x += pct
        result.append(LoadBucket(start, end, total, shares))
    return result


def sparkline(row: MasterRow) -> SafeString:
    """Draw a row's uptime sparkline (0 to 100 %, so rows compare at a glance)."""
    label = f"uptime of {row.master.display_name}, last hour"
    # monitoring.charts escapes every text it draws and builds the rest from numbers.
    return mark_safe(draw_sparkline(row.uptime, width=120, height=24, low=0, high=100, label=label))
