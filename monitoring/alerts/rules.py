"""The plan's alert rules as pure functions over plain data (no database here).

Critical (immediate): master connection lost, failover initiated, all masters down.
Warning (log + dashboard): queue over 1,000, one master over 80 % of the load,
several failures of one master within 30 min, a recovery taking over 5 min.
Info (log only): failover complete, rebalancing triggered, master recovered.

Condition rules look at a ``Snapshot`` of the current state and return what
fires now; the engine (monitoring.alerts.engine) resolves an alert whose
condition is gone. Event rules look at new Event rows and fire once per
event; "failover initiated" is resolved by the event that ends that failover.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from masters.choices import EventKind, HealthStatus, Severity
from monitoring.alerts.choices import Rule

# A share of the load means something only over enough messages.
LOAD_MIN_MESSAGES = 50
# The load share is judged over this much recent history (LoadMetric rows).
LOAD_WINDOW = timedelta(seconds=60)
# Measured rules resolve only after the condition has been gone this long, so
# a queue hovering at its threshold does not open and resolve an alert every
# evaluation. Health-based rules resolve at once: the health state machine
# already has its own hysteresis (fall / rise thresholds).
CLEAR_AFTER = {Rule.QUEUE_HIGH: timedelta(seconds=60), Rule.LOAD_SHARE: timedelta(seconds=60)}

SEVERITY = {
    Rule.MASTER_DOWN: Severity.CRITICAL,
    Rule.FAILOVER_INITIATED: Severity.CRITICAL,
    Rule.ALL_DOWN: Severity.CRITICAL,
    Rule.QUEUE_HIGH: Severity.WARNING,
    Rule.LOAD_SHARE: Severity.WARNING,
    Rule.REPEATED_FAILURES: Severity.WARNING,
    Rule.SLOW_RECOVERY: Severity.WARNING,
    Rule.FAILOVER_COMPLETE: Severity.INFO,
    Rule.REBALANCED: Severity.INFO,
    Rule.MASTER_RECOVERED: Severity.INFO,
}


@dataclass(frozen=True)
class Thresholds:
    """The admin-edited thresholds (monitoring.models.AlertSettings), as plain data."""

    queue_warning: int = 1000
    load_share_warning_pct: int = 80
    failures_warning_count: int = 3
    failures_window: timedelta = timedelta(minutes=30)
    recovery_warning: timedelta = timedelta(minutes=5)


@dataclass(frozen=True)
class MasterState:
    id: int
    name: str
    status: str
    changed_at: datetime | None = None
    last_error: str = ""


@dataclass(frozen=True)
class Snapshot:
    """What the condition rules see: active masters and a few measurements."""

    now: datetime
    masters: Sequence[MasterState]
    queue_length: int = 0
    # Messages each active master sent within LOAD_WINDOW.
    sent: dict[int, int] = field(default_factory=dict)
    # Times each master went to failed within the failures window.
    failures: dict[int, int] = field(default_factory=dict)
    thresholds: Thresholds = Thresholds()


@dataclass(frozen=True)
class EventFact:
    """One Event row, as the event rules see it."""

    id: int
    kind: str
    master_id: int | None
    message: str
    data: dict[str, Any]
    created_at: datetime
    master_name: str = ""

    def titled(self, title: str) -> str:
        return f"{title}: {self.master_name}" if self.master_name else title


@dataclass(frozen=True)
class Firing:
    """A rule's finding: an alert that should be open now (or was raised by an event)."""

    key: str
    rule: str
    title: str
    detail: str = ""
    master_id: int | None = None
    data: dict[str, Any] = field(default_factory=dict)

    @property
    def severity(self) -> str:
        return SEVERITY[Rule(self.rule)]


@dataclass(frozen=True)
class Resolution:
    """An event that ends an event-raised alert (a failover that completed or failed)."""

    key: str
    reason: str


# --- condition rules ----------------------------------------------------------------


def master_down(snap: Snapshot) -> Iterable[Firing]:
    """Critical: one alert per failed master."""
    for master in snap.masters:
        if master.status == HealthStatus.FAILED:
            since = f" since {master.changed_at:%H:%M:%S} UTC" if master.changed_at else ""
            error = f": {master.last_error}" if master.last_error else ""
            yield Firing(
                f"master.down:{master.id}",
                Rule.MASTER_DOWN,
                f"Master connection lost: {master.name}",
                f"{master.name} has failed{since}{error}",
                master.id,
            )


def all_down(snap: Snapshot) -> Iterable[Firing]:
    """Critical: every master that is not in maintenance has failed."""
    probed = [m for m in snap.masters if m.status != HealthStatus.MAINTENANCE]
    if probed and all(m.status == HealthStatus.FAILED for m in probed):
        names = ", ".join(m.name for m in probed)
        yield Firing(
            "masters.all_down",
            Rule.ALL_DOWN,
            "All masters down",
            f"All {len(probed)} masters have failed ({names}): no message can go out",
            data={"masters": [m.id for m in probed]},
        )


def queue_high(snap: Snapshot) -> Iterable[Firing]:
    """Warning: more unsent messages than the threshold."""
    limit = snap.thresholds.queue_warning
    if snap.queue_length > limit:
        yield Firing(
            "queue.high",
            Rule.QUEUE_HIGH,
            f"Message queue over {limit:,}",
            f"{snap.queue_length:,} messages wait to be sent (threshold {limit:,})",
            data={"queue_length": snap.queue_length, "threshold": limit},
        )


def load_share(snap: Snapshot) -> Iterable[Firing]:
    """Warning: one master carries more than the threshold share while others could help.

    With fewer than two healthy masters one of them must carry everything;
    "master connection lost" already says why, so no imbalance is reported.
    """
    healthy = [m for m in snap.masters if m.status == HealthStatus.HEALTHY]
    total = sum(snap.sent.values())
    if len(healthy) < 2 or total < LOAD_MIN_MESSAGES:
        return
    limit = snap.thresholds.load_share_warning_pct
    window = int(LOAD_WINDOW.total_seconds())
    for master in snap.masters:
        share = 100 * snap.sent.get(master.id, 0) / total
        if share > limit:
            yield Firing(
                f"load.share:{master.id}",
                Rule.LOAD_SHARE,
                f"Load imbalance: {master.name} carries over {limit}% of the load",
                f"{master.name} sent {share:.0f}% of the last {window} s's {total:,} messages "
                f"(threshold {limit}%)",
                master.id,
                {"share_pct": round(share, 1), "messages": total, "threshold_pct": limit},
            )


def repeated_failures(snap: Snapshot) -> Iterable[Firing]:
    """Warning: a master failed at least N times within the window."""
    count, window = snap.thresholds.failures_warning_count, snap.thresholds.failures_window
    minutes = int(window.total_seconds() // 60)
    for master in snap.masters:
        failures = snap.failures.get(master.id, 0)
        if failures >= count:
            yield Firing(
                f"master.failures:{master.id}",
                Rule.REPEATED_FAILURES,
                f"Multiple failures: {master.name} failed {count}+ times in {minutes} min",
                f"{master.name} failed {failures} times in the last {minutes} minutes",
                master.id,
                {"failures": failures, "window_min": minutes},
            )


def slow_recovery(snap: Snapshot) -> Iterable[Firing]:
    """Warning: a master has been failed for longer than the recovery threshold."""
    limit = snap.thresholds.recovery_warning
    for master in snap.masters:
        if master.status != HealthStatus.FAILED or master.changed_at is None:
            continue
        down_for = snap.now - master.changed_at
        if down_for > limit:
            yield Firing(
                f"master.recovery_slow:{master.id}",
                Rule.SLOW_RECOVERY,
                f"Recovery taking over {_minutes(limit)}: {master.name}",
                f"{master.name} has been failed since {master.changed_at:%H:%M:%S} UTC "
                f"({_minutes(down_for)})",
                master.id,
                {"down_s": int(down_for.total_seconds())},
            )


CONDITION_RULES: tuple[Callable[[Snapshot], Iterable[Firing]], ...] = (
    master_down,
    all_down,
    queue_high,
    load_share,
    repeated_failures,
    slow_recovery,
)


def conditions(snap: Snapshot) -> dict[str, Firing]:
    """Return every condition alert firing in ``snap``, by dedup key."""
    return {firing.key: firing for rule in CONDITION_RULES for firing in rule(snap)}


def _minutes(delta: timedelta) -> str:
    return f"{int(delta.total_seconds() // 60)} min"


# --- event rules ----------------------------------------------------------------------

# The Event kinds the event rules read; the engine fetches only these.
EVENT_KINDS = frozenset(
    {
        EventKind.FAILOVER_STARTED,
        EventKind.FAILOVER_COMPLETED,
        EventKind.FAILOVER_FAILED,
        EventKind.NO_BACKUP,
        EventKind.REBALANCED,
        EventKind.HEALTH_CHANGED,
    }
)


def failover_key(event: EventFact) -> str:
    return f"failover:{event.data.get('failover', f'event-{event.id}')}"


def from_events(events: Sequence[EventFact]) -> tuple[list[Firing], list[Resolution]]:
    """Turn new events (oldest first) into alerts to raise and failover alerts to resolve."""
    firings: list[Firing] = []
    resolutions: list[Resolution] = []
    for event in events:
        if event.kind == EventKind.FAILOVER_STARTED:
            firings.append(_failover_initiated(event))
        elif event.kind == EventKind.FAILOVER_COMPLETED:
            firings.append(_info(event, Rule.FAILOVER_COMPLETE, "Failover complete"))
            resolutions.append(Resolution(failover_key(event), event.message))
        elif event.kind in (EventKind.FAILOVER_FAILED, EventKind.NO_BACKUP):
            # A failover that fails inside its transaction leaves no "started"
            # event: it was initiated all the same, so raise it, then end it.
            firings.append(_failover_initiated(event))
            resolutions.append(Resolution(failover_key(event), f"Failover failed: {event.message}"))
        elif event.kind == EventKind.REBALANCED:
            firings.append(_info(event, Rule.REBALANCED, "Load rebalancing triggered"))
        elif _is_recovery(event):
            firings.append(_info(event, Rule.MASTER_RECOVERED, "Master recovered"))
    return firings, resolutions


def _failover_initiated(event: EventFact) -> Firing:
    return Firing(
        failover_key(event),
        Rule.FAILOVER_INITIATED,
        event.titled("Failover initiated"),
        event.message,
        event.master_id,
        {"event": event.id, "failover": event.data.get("failover")},
    )


def _info(event: EventFact, rule: str, title: str) -> Firing:
    return Firing(
        f"{rule}:{event.id}",
        rule,
        event.titled(title),
        event.message,
        event.master_id,
        {"event": event.id} | _scalars(event.data),
    )


def _is_recovery(event: EventFact) -> bool:
    return (
        event.kind == EventKind.HEALTH_CHANGED
        and event.data.get("from") == HealthStatus.FAILED
        and event.data.get("to") == HealthStatus.HEALTHY
    )


def _scalars(data: dict[str, Any]) -> dict[str, Any]:
    """Keep an event's plain values (ids, counts, statuses) for the alert's data."""
    return {k: v for k, v in data.items() if isinstance(v, str | int | float | bool)}
