"""The health report and the numbers behind the master page, read from the domain's rows.

``build_report(start, end)`` is built once and rendered three ways (HTML,
CSV, JSON) and by ``manage.py ha report``. An **incident** is a master's
outage as its ``HEALTH_CHANGED`` events tell it: from the change into
*failed* to the next change into *healthy* (a degraded step in between is
still an outage: only healthy masters get traffic). The mean time to
recover is the mean length of the incidents that ended.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta

from django.conf import settings
from django.db.models import Count, Max, OuterRef, Q, Subquery
from django.utils import timezone

from masters.choices import EventKind, FailoverStatus, HealthStatus, MessageStatus
from masters.metrics import uptime_by_master
from masters.models import Event, FailoverEvent, LoadMetric, Master, Message

SINCE_CHOICES = ("24h", "7d", "30d")
SINCE_RE = re.compile(r"^(\d{1,4})([hd])$")


class PeriodError(ValueError):
    """A report period parameter is invalid; ``parameter`` names it."""

    def __init__(self, parameter: str, message: str) -> None:
        super().__init__(f"{parameter}: {message}")
        self.parameter = parameter


# --- the period -------------------------------------------------------------------------


def parse_since(value: str, parameter: str = "since") -> timedelta:
    """Read "24h", "7d", "30d" (any whole hours or days up to the roll-up retention)."""
    match = SINCE_RE.match(value.strip())
    if not match:
        raise PeriodError(parameter, f"expected hours or days like 24h or 7d, got {value!r}")
    number, unit = int(match[1]), match[2]
    span = timedelta(hours=number) if unit == "h" else timedelta(days=number)
    longest = timedelta(days=settings.HEALTH["rollup_retention_days"])
    if not timedelta(hours=1) <= span <= longest:
        raise PeriodError(parameter, f"must be between 1h and {longest.days}d, got {value!r}")
    return span


def parse_moment(value: str, parameter: str, *, end_of_day: bool = False) -> datetime:
    """Read an ISO date or date-time; a date alone is midnight (the next one for an end)."""
    text = value.strip()
    try:
        if len(text) == 10:
            day = date.fromisoformat(text)
            moment = datetime.combine(day + timedelta(days=end_of_day), time())
        else:
            moment = datetime.fromisoformat(text)
    except ValueError:
        raise PeriodError(
            parameter, f"expected an ISO date like 2025-01-31, got {value!r}"
        ) from None
    if timezone.is_naive(moment):
        moment = timezone.make_aware(moment)
    return moment


def parse_period(params: Mapping[str, str], now: datetime) -> tuple[datetime, datetime]:
    """Return (start, end) from ``since`` or ``start``/``end``; default the last 24 hours."""
    since, start, end = (params.get(name, "").strip() for name in ("since", "start", "end"))
    if since and (start or end):
        raise PeriodError("since", "give either since or start/end, not both")
    if not (start or end):
        return now - parse_since(since or "24h"), now
    if not start:
        raise PeriodError("start", "required with end")
    begin = parse_moment(start, "start")
    finish = parse_moment(end, "end", end_of_day=True) if end else now
    if finish <= begin:
        raise PeriodError("end", "must be after start")
    if begin > now:
        raise PeriodError("start", "is in the future")
    return begin, finish


# --- incidents ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Incident:
    master_id: int
    started_at: datetime
    ended_at: datetime | None  # None: not recovered yet

    def duration(self, now: datetime) -> timedelta:
        return (self.ended_at or now) - self.started_at

    def within(self, start: datetime, end: datetime, now: datetime) -> timedelta:
        """The part of the incident inside [start, end)."""
        return max(min(self.ended_at or now, end, now) - max(self.started_at, start), timedelta())


def outages(changes: Iterable[tuple[datetime, str]], failed_since: datetime | None = None):
    """Turn (time, new status) changes in time order into (failed at, healthy at) pairs.

    ``failed_since`` is when an outage still open before the first change began.
    """
    periods: list[tuple[datetime, datetime | None]] = []
    opened = failed_since
    for at, status in changes:
        if status == HealthStatus.FAILED and opened is None:
            opened = at
        elif status == HealthStatus.HEALTHY and opened is not None:
            periods.append((opened, at))
            opened = None
    if opened is not None:
        periods.append((opened, None))
    return periods


def incidents(start: datetime, end: datetime, master_ids: list[int] | None = None):
    """Return the incidents that overlap [start, end), oldest first, in two queries.

    Changes are read up to now, not to ``end``, so that an incident of a past
    period ends when it really ended.
    """
    changes = Event.objects.filter(kind=EventKind.HEALTH_CHANGED, master__isnull=False)
    if master_ids is not None:
        changes = changes.filter(master_id__in=master_ids)
    before = (
        changes.filter(created_at__lt=start)
        .values("master_id")
        .annotate(
            failed=Max("created_at", filter=Q(data__to=HealthStatus.FAILED)),
            healthy=Max("created_at", filter=Q(data__to=HealthStatus.HEALTHY)),
        )
        .order_by()
    )
    open_at_start = {
        row["master_id"]: row["failed"]
        for row in before
        if row["failed"] and (row["healthy"] is None or row["healthy"] < row["failed"])
    }
    by_master: dict[int, list[tuple[datetime, str]]] = defaultdict(list)
    rows = changes.filter(created_at__gte=start).order_by("created_at", "pk")
    for master_id, at, data in rows.values_list("master_id", "created_at", "data"):
        by_master[master_id].append((at, (data or {}).get("to", "")))
    found = [
        Incident(master_id, began, ended)
        for master_id in sorted(set(by_master) | set(open_at_start))
        for began, ended in outages(by_master[master_id], open_at_start.get(master_id))
        if began < end
    ]
    return sorted(found, key=lambda incident: (incident.started_at, incident.master_id))


def mean_time_to_recover(found: Iterable[Incident]) -> timedelta | None:
    ended = [i.ended_at - i.started_at for i in found if i.ended_at is not None]
    return sum(ended, timedelta()) / len(ended) if ended else None


# --- the report ------------------------------------------------------------------------


def build_report(start: datetime, end: datetime, now: datetime | None = None) -> dict:
    """Per-master uptime, incidents, failovers and load share for [start, end).

    Datetimes stay datetimes and durations are seconds; the JSON view
    serialises with DjangoJSONEncoder (ISO 8601).
    """
    now = now or timezone.now()
    masters = list(Master.objects.order_by("priority", "external_id"))
    names = {m.pk: m.external_id for m in masters}
    uptimes = uptime_by_master(start, min(end, now))
    found = incidents(start, end)
    failovers = list(
        FailoverEvent.objects.filter(started_at__gte=start, started_at__lt=end)
        .select_related("failed_master", "backup_master", "initiated_by")
        .order_by("started_at", "pk")
    )
    sent = sent_by_master(start, end)
    total_sent = sum(sent.values())
    rows = []
    for master in masters:
        mine = [i for i in found if i.master_id == master.pk]
        mttr = mean_time_to_recover(mine)
        uptime = uptimes.get(master.pk)
        rows.append(
            {
                "id": master.external_id,
                "display_name": master.display_name,
                "role": master.role,
                "health_status": master.health_status,
                "uptime_pct": None if uptime is None else round(100 * uptime, 3),
                "incidents": len(mine),
                "downtime_s": _seconds(sum((i.within(start, end, now) for i in mine), timedelta())),
                "mttr_s": None if mttr is None else _seconds(mttr),
                "failovers": sum(1 for f in failovers if f.failed_master_id == master.pk),
                "sent": sent.get(master.pk, 0),
                "share_pct": round(100 * sent.get(master.pk, 0) / total_sent, 3)
                if total_sent
                else 0.0,
            }
        )
    return {
        "period": {"start": start, "end": end, "seconds": _seconds(end - start)},
        "generated_at": now,
        "totals": {"sent": total_sent, "incidents": len(found), "failovers": len(failovers)},
        "masters": rows,
        "incidents": [
            {
                "master": names.get(i.master_id, str(i.master_id)),
                "started_at": i.started_at,
                "ended_at": i.ended_at,
                "duration_s": _seconds(i.duration(now)),
                "ongoing": i.ended_at is None,
            }
            for i in found
        ],
        "failovers": [failover_row(f) for f in failovers],
    }


def failover_row(event: FailoverEvent) -> dict:
    """One failover as the report, the JSON and ``ha status`` show it."""
    return {
        "id": event.pk,
        "failed": event.failed_master.external_id,
        "backup": event.backup_master.external_id if event.backup_master else None,
        "status": event.status,
        "automatic": event.automatic,
        "initiated_by": event.initiated_by.get_username() if event.initiated_by else None,
        "started_at": event.started_at,
        "finished_at": event.finished_at,
        "duration_ms": None if event.duration_ms is None else round(event.duration_ms, 1),
        "moved_messages": event.moved_messages,
        "moved_affinities": event.moved_affinities,
        "reason": event.reason,
    }


def sent_by_master(start: datetime, end: datetime) -> dict[int, int]:
    """Messages sent in [start, end) per master (the load distribution)."""
    rows = (
        Message.objects.filter(
            status=MessageStatus.SENT, sent_at__gte=start, sent_at__lt=end, master__isnull=False
        )
        .values("master_id")
        .annotate(sent=Count("pk"))
        .order_by()
    )
    return {row["master_id"]: row["sent"] for row in rows}


def _seconds(span: timedelta) -> float:
    return round(span.total_seconds(), 3)


# --- status and load (ha status / ha load, the master page) -------------------------------


def active_failovers(now: datetime | None = None):
    """Failovers still in effect: running, or completed while their master is not back.

    A completed failover stays active while its failed master is unhealthy or
    held down, i.e. while its work is still on the backup and a rollback
    would matter; rolled-back and failed ones never are.
    """
    now = now or timezone.now()
    return (
        FailoverEvent.objects.filter(
            Q(status=FailoverStatus.IN_PROGRESS)
            | Q(status=FailoverStatus.COMPLETED)
            & (
                ~Q(failed_master__health_status=HealthStatus.HEALTHY)
                | Q(failed_master__failover_hold_until__gt=now)
            )
        )
        .select_related("failed_master", "backup_master", "initiated_by")
        .order_by("-started_at")
    )


def latest_load() -> dict[int, LoadMetric]:
    """Each master's most recent load sample, in two queries."""
    newest = LoadMetric.objects.filter(master=OuterRef("pk")).order_by("-recorded_at", "-pk")
    ids = Master.objects.annotate(latest=Subquery(newest.values("pk")[:1])).values_list(
        "latest", flat=True
    )
    metrics = LoadMetric.objects.filter(pk__in=[pk for pk in ids if pk is not None])
    return {metric.master_id: metric for metric in metrics}


def buckets(
    rows: Iterable[tuple[datetime, float | None]],
    start: datetime,
    end: datetime,
    count: int,
    how: str = "mean",
) -> list[tuple[datetime, float | None]]:
    """Fold (time, value) rows into ``count`` equal buckets over [start, end).

    Each bucket is labelled with its start and holds the mean (or ``max``) of
    its values, None when it has none: a chart shows that as a gap.
    """
    width = (end - start) / count
    values: list[list[float]] = [[] for _ in range(count)]
    for at, value in rows:
        if value is None or not start <= at < end:
            continue
        values[min(int((at - start) / width), count - 1)].append(value)
    fold = max if how == "max" else (lambda vs: sum(vs) / len(vs))
    return [(start + width * i, fold(vs) if vs else None) for i, vs in enumerate(values)]


def daily_counts(moments: Iterable[datetime], days: int, today: date) -> list[int]:
    """Count ``moments`` per local day over the ``days`` days ending ``today``."""
    first = today - timedelta(days=days - 1)
    counts = [0] * days
    for moment in moments:
        index = (timezone.localdate(moment) - first).days
        if 0 <= index < days:
            counts[index] += 1
    return counts


def human_duration(seconds: float | None) -> str:
    """Say a duration the way an operator reads it: 45 s, 3 min 20 s, 2 h 05 min, 3 d 4 h."""
    if seconds is None:
        return "—"
    whole = round(seconds)
    days, rest = divmod(whole, 86_400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days} d {hours} h"
    if hours:
        return f"{hours} h {minutes:02d} min"
    if minutes:
        return f"{minutes} min {secs:02d} s"
    return f"{seconds:.1f} s" if seconds < 10 else f"{secs} s"
