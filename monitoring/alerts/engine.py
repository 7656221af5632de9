"""Turn the rules' findings into Alert rows and notices.

``evaluate()`` is the whole loop body: it reads a snapshot of the domain
(a handful of queries), asks the pure rules in monitoring.alerts.rules what
fires, and in one transaction opens new alerts (the database's one-open-
alert-per-key constraint is the guard against a second evaluator), marks
the ones still firing as seen, resolves the ones whose condition is gone,
raises alerts from new Event rows, and decides the notices: trigger when an
alert opens, repeat every ``repeat_interval_min`` while it fires
unacknowledged (one per interval at most, however late the evaluator runs),
resolve when it resolves. Deliveries are enqueued to django-q2 after commit.

Who calls it: the prober, the one elected process, every
``ALERTS["evaluate_every_s"]`` seconds. ``evaluate`` is a plain synchronous
function doing ORM work: from async code run it in a thread with its own
database connection, e.g. the prober's ``await self.db(evaluate)`` or
``await asyncio.to_thread(evaluate)``; never call it on the event loop.

``acknowledge(alert, user)`` is the operator's action (the dashboard checks
the ``monitoring.operate`` permission first). ``active_alerts()`` is what the
dashboard lists.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from django.db import IntegrityError, transaction
from django.db.models import Case, Count, IntegerField, Max, QuerySet, Sum, Value, When
from django.utils import timezone

from masters.choices import EventKind, FailoverStatus, HealthStatus, Severity
from masters.load import IN_QUEUE
from masters.models import Event, FailoverEvent, LoadMetric, Master, Message
from monitoring.alerts import delivery, rules
from monitoring.alerts.choices import AlertEventKind, Rule
from monitoring.models import (
    Alert,
    AlertCursor,
    AlertSettings,
    AlertState,
    Notice,
)

logger = logging.getLogger(__name__)

# The event cursor moves past an id only once its event is this old: an
# event written in a transaction still open is invisible until it commits,
# possibly after events with higher ids (PostgreSQL sequences).
EVENT_SETTLE = timedelta(seconds=60)
# On its very first run the evaluator reads only this much of the existing
# event log, so that a new installation does not page about last month.
FIRST_RUN_LOOKBACK = timedelta(minutes=10)
EVENT_BATCH = 500
# Alerts that repeat while firing; info alerts are one-off notes.
REPEATING = (Severity.CRITICAL, Severity.WARNING)

Notices = list[tuple[Alert, str]]


@dataclass
class Evaluation:
    """What one evaluation did (alert and delivery ids), for logs and tests."""

    opened: list[int] = field(default_factory=list)
    resolved: list[int] = field(default_factory=list)
    repeated: list[int] = field(default_factory=list)
    deliveries: list[int] = field(default_factory=list)
    retried: list[int] = field(default_factory=list)


def evaluate(now: datetime | None = None) -> Evaluation:
    """Evaluate every rule once, reconcile the Alert rows and queue the notices.

    ``now`` is for tests (repeat intervals without sleeping); it defaults to
    the current time.
    """
    now = now or timezone.now()
    alert_settings = AlertSettings.current()
    firing = rules.conditions(snapshot(now, thresholds_of(alert_settings)))
    result = Evaluation()
    notices: Notices = []
    with transaction.atomic():
        reconcile_conditions(firing, now, notices, result)
        consume_events(now, notices, result)
        resolve_finished_failovers(now, notices, result)
        queue_repeats(now, timedelta(minutes=alert_settings.repeat_interval_min), notices, result)
        result.deliveries = delivery.queue_notices(notices, now)
    result.retried = delivery.enqueue_due(now)
    return result


def acknowledge(alert: Alert, user, now: datetime | None = None) -> bool:
    """Acknowledge a firing alert for USER: repeats stop, recipients are told.

    Returns False (and changes nothing) when the alert is not firing any
    more (already acknowledged or resolved). Check the operator's permission
    before calling.
    """
    now = now or timezone.now()
    with transaction.atomic():
        locked = Alert.objects.select_for_update().get(pk=alert.pk)
        if locked.state != AlertState.FIRING:
            return False
        locked.state, locked.acknowledged_at, locked.acknowledged_by = (
            AlertState.ACKNOWLEDGED,
            now,
            user,
        )
        locked.save(update_fields=["state", "acknowledged_at", "acknowledged_by"])
        Event.objects.create(
            kind=AlertEventKind.ACKNOWLEDGED,
            master_id=locked.master_id,
            actor=user,
            message=f"{user} acknowledged the alert: {locked.title}",
            data={"alert": locked.pk, "dedup_key": locked.dedup_key},
        )
        delivery.queue_notices([(locked, Notice.ACKNOWLEDGE)], now)
    logger.info("alert %s (%s) acknowledged by %s", locked.pk, locked.dedup_key, user)
    alert.refresh_from_db()
    return True


def active_alerts() -> QuerySet[Alert]:
    """Open alerts, critical first, newest first within a severity (the dashboard's list)."""
    rank = Case(
        When(severity=Severity.CRITICAL, then=Value(0)),
        When(severity=Severity.WARNING, then=Value(1)),
        default=Value(2),
        output_field=IntegerField(),
    )
    return (
        Alert.objects.open()
        .select_related("master", "acknowledged_by")
        .order_by(rank, "-fired_at", "-pk")
    )


# --- the snapshot ---------------------------------------------------------------------


def thresholds_of(row: AlertSettings) -> rules.Thresholds:
    return rules.Thresholds(
        queue_warning=row.queue_warning,
        load_share_warning_pct=row.load_share_warning_pct,
        failures_warning_count=row.failures_warning_count,
        failures_window=timedelta(minutes=row.failures_window_min),
        recovery_warning=timedelta(minutes=row.recovery_warning_min),
    )


def snapshot(now: datetime, thresholds: rules.Thresholds) -> rules.Snapshot:
    """Read what the condition rules look at, in four queries."""
    masters = [
        rules.MasterState(pk, name, status, changed_at, error)
        for pk, name, status, changed_at, error in Master.objects.filter(is_active=True)
        .order_by("priority", "pk")
        .values_list("pk", "display_name", "health_status", "health_changed_at", "last_error")
    ]
    ids = [master.id for master in masters]
    sent = (
        LoadMetric.objects.filter(master__in=ids, recorded_at__gt=now - rules.LOAD_WINDOW)
        .values("master")
        .annotate(sent=Sum("sent"))
    )
    failures = (
        Event.objects.filter(
            kind=EventKind.HEALTH_CHANGED,
            master__in=ids,
            created_at__gte=now - thresholds.failures_window,
            data__to=HealthStatus.FAILED,
        )
        .values("master")
        .annotate(count=Count("pk"))
    )
    return rules.Snapshot(
        now=now,
        masters=masters,
        queue_length=Message.objects.filter(status__in=IN_QUEUE).count(),
        sent={row["master"]: row["sent"] for row in sent},
        failures={row["master"]: row["count"] for row in failures},
        thresholds=thresholds,
    )


# --- condition alerts -------------------------------------------------------------------


def reconcile_conditions(
    firing: dict[str, rules.Firing], now: datetime, notices: Notices, result: Evaluation
) -> None:
    """Open what newly fires, mark what still fires as seen, resolve what stopped."""
    open_alerts = {
        alert.dedup_key: alert
        for alert in Alert.objects.open().filter(rule__in=Rule.CONDITIONS).select_for_update()
    }
    still_seen = []
    for key, finding in firing.items():
        alert = open_alerts.get(key)
        if alert is None:
            open_alert(finding, now, notices, result)
        elif refresh(alert, finding, now):
            alert.save(update_fields=["title", "detail", "data", "last_seen_at"])
        else:
            still_seen.append(alert.pk)
    Alert.objects.filter(pk__in=still_seen).update(last_seen_at=now)
    for key, alert in open_alerts.items():
        clear_after = rules.CLEAR_AFTER.get(Rule(alert.rule), timedelta(0))
        if key not in firing and now - alert.last_seen_at >= clear_after:
            resolve(alert, now, "the condition cleared", notices, result)


def refresh(alert: Alert, finding: rules.Firing, now: datetime) -> bool:
    """Bring an open alert's text and numbers up to date; True if they changed."""
    alert.last_seen_at = now
    new = (finding.title, finding.detail, finding.data)
    if (alert.title, alert.detail, alert.data) == new:
        return False
    alert.title, alert.detail, alert.data = new
    return True


def create_alert(finding: rules.Firing, now: datetime, **fields) -> Alert:
    """Write the Alert row for a finding, as told at ``now`` (its first notice)."""
    values = {
        "dedup_key": finding.key,
        "rule": finding.rule,
        "severity": finding.severity,
        "master_id": finding.master_id,
        "title": finding.title,
        "detail": finding.detail,
        "data": finding.data,
        "fired_at": now,
        "last_seen_at": now,
        "last_notified_at": now,
        "notify_count": 1,
    }
    return Alert.objects.create(**(values | fields))


def open_alert(
    finding: rules.Firing, now: datetime, notices: Notices, result: Evaluation
) -> Alert | None:
    """Open an alert and queue its trigger notice; None if one is open already."""
    try:
        with transaction.atomic():
            alert = create_alert(finding, now)
    except IntegrityError:
        # Another evaluator opened it a moment ago: the constraint kept it single.
        logger.info("alert %s already open", finding.key)
        return None
    Event.objects.create(
        kind=AlertEventKind.FIRED,
        severity=alert.severity,
        master_id=alert.master_id,
        message=f"Alert: {alert.title}",
        data={"alert": alert.pk, "dedup_key": alert.dedup_key, "rule": alert.rule},
    )
    logger.warning("alert %s fired (%s): %s", alert.dedup_key, alert.severity, alert.detail)
    notices.append((alert, Notice.TRIGGER))
    result.opened.append(alert.pk)
    return alert


def resolve(alert: Alert, now: datetime, reason: str, notices: Notices, result: Evaluation) -> None:
    """Resolve an open alert and queue its resolve notice."""
    alert.state, alert.resolved_at = AlertState.RESOLVED, now
    alert.data = alert.data | {"resolution": reason}
    alert.save(update_fields=["state", "resolved_at", "data"])
    Event.objects.create(
        kind=AlertEventKind.RESOLVED,
        master_id=alert.master_id,
        message=f"Resolved: {alert.title} ({reason})",
        data={"alert": alert.pk, "dedup_key": alert.dedup_key, "rule": alert.rule},
    )
    logger.info("alert %s resolved: %s", alert.dedup_key, reason)
    notices.append((alert, Notice.RESOLVE))
    result.resolved.append(alert.pk)


def queue_repeats(now: datetime, interval: timedelta, notices: Notices, result: Evaluation) -> None:
    """Remind recipients of alerts that fired unacknowledged a whole interval since the last notice.

    One repeat per interval at most: an evaluator that was away for three
    intervals sends one reminder, not three.
    """
    due = Alert.objects.filter(
        state=AlertState.FIRING, severity__in=REPEATING, last_notified_at__lte=now - interval
    ).select_for_update()
    for alert in due:
        alert.last_notified_at, alert.notify_count = now, alert.notify_count + 1
        alert.save(update_fields=["last_notified_at", "notify_count"])
        notices.append((alert, Notice.REPEAT))
        result.repeated.append(alert.pk)


# --- event alerts -----------------------------------------------------------------------


def consume_events(now: datetime, notices: Notices, result: Evaluation) -> None:
    """Raise alerts from Event rows not read before, and move the cursor past them."""
    cursor = event_cursor(now)
    rows = (
        Event.objects.filter(pk__gt=cursor.position, kind__in=rules.EVENT_KINDS)
        .exclude(pk__in=cursor.seen_ids)
        .order_by("pk")
        .values_list(
            "pk", "kind", "master_id", "master__display_name", "message", "data", "created_at"
        )
    )[:EVENT_BATCH]
    facts = [
        rules.EventFact(pk, kind, master_id, message, _dict(data), created_at, name or "")
        for pk, kind, master_id, name, message, data, created_at in rows
    ]
    firings, resolutions = rules.from_events(facts)
    for finding in firings:
        if finding.severity == Severity.INFO:
            record_info(finding, now, notices, result)
        else:
            open_alert(finding, now, notices, result)
    for resolution in resolutions:
        alert = Alert.objects.open().select_for_update().filter(dedup_key=resolution.key).first()
        if alert is not None:
            resolve(alert, now, resolution.reason, notices, result)
    advance(cursor, [fact.id for fact in facts], now)


def _dict(data) -> dict:
    """An event's data as a dict (it always is one; an odd row must not stop the evaluator)."""
    return data if isinstance(data, dict) else {}


def resolve_finished_failovers(now: datetime, notices: Notices, result: Evaluation) -> None:
    """Resolve "failover initiated" alerts whose failover ended without an event saying so.

    Today a failover writes its start and end events together; this keeps the
    alert from firing forever should a failover ever die between the two.
    """
    open_failovers = {
        alert.data.get("failover"): alert
        for alert in Alert.objects.open().filter(rule=Rule.FAILOVER_INITIATED).select_for_update()
    }
    open_failovers.pop(None, None)
    if not open_failovers:
        return
    finished = FailoverEvent.objects.filter(pk__in=open_failovers).exclude(
        status=FailoverStatus.IN_PROGRESS
    )
    for pk, status in finished.values_list("pk", "status"):
        reason = f"the failover ended: {FailoverStatus(status).label.lower()}"
        resolve(open_failovers[pk], now, reason, notices, result)


def record_info(finding: rules.Firing, now: datetime, notices: Notices, result: Evaluation) -> None:
    """Record an info alert, born resolved: it notes what happened, nobody needs to act.

    No alert.fired Event for it: it restates the event it came from.
    """
    alert = create_alert(
        finding, now, severity=Severity.INFO, state=AlertState.RESOLVED, resolved_at=now
    )
    logger.info("info: %s: %s", alert.title, alert.detail)
    notices.append((alert, Notice.TRIGGER))
    result.opened.append(alert.pk)


def event_cursor(now: datetime) -> AlertCursor:
    """Return the cursor row, locked; on the first run start FIRST_RUN_LOOKBACK back."""
    if not AlertCursor.objects.filter(name="events").exists():
        start = Event.objects.filter(created_at__lt=now - FIRST_RUN_LOOKBACK).aggregate(
            last=Max("pk")
        )["last"]
        AlertCursor.objects.get_or_create(name="events", defaults={"position": start or 0})
    return AlertCursor.objects.select_for_update().get(name="events")


def advance(cursor: AlertCursor, new_ids: list[int], now: datetime) -> None:
    """Remember the events just read; move the position past those old enough to be settled."""
    seen = sorted(set(cursor.seen_ids) | set(new_ids))
    position = cursor.position
    if seen:
        settled = Event.objects.filter(pk__in=seen, created_at__lt=now - EVENT_SETTLE).aggregate(
            last=Max("pk")
        )["last"]
        position = max(position, settled or 0)
    seen = [pk for pk in seen if pk > position]
    if (position, seen) != (cursor.position, cursor.seen_ids):
        cursor.position, cursor.seen_ids = position, seen
        cursor.save(update_fields=["position", "seen_ids", "updated_at"])
