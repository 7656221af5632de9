"""Reconcile what the bot submitted, what the portal recorded and what the gateway received.

Pure functions over plain records (times are ``time.time()`` seconds), so
the counting can be tested without a database or a process. The run
(monitoring.chaos.run) reads the records; monitoring.chaos.verdict renders
what these functions conclude.
"""

from __future__ import annotations

import itertools
import re
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from monitoring.chaos.schedule import FaultKind

SENT, EXPIRED, DEAD = "sent", "expired", "dead"
# How long after a fault heals an anomaly (a lost or doubled message, a
# crash) is still blamed on it: a dispatcher's lease (30 s), the longest
# a killed dispatcher's messages wait to be claimed again.
BLAME_WINDOW_S = 35.0
# A session fault held at least this long must take its master out of rotation.
DETECT_WITHIN_S = 10.0
# The session faults after which a master must leave rotation (a slow
# session that still answers within the probe timeout may rightly stay).
MUST_LEAVE = frozenset(
    {
        FaultKind.SESSION_FAIL,
        FaultKind.SESSION_HANG,
        FaultKind.SESSION_FLAP,
        FaultKind.SESSION_BREAK_SENDS,
    }
)


# --- the records ---------------------------------------------------------------------


@dataclass(frozen=True)
class Row:
    """One Message row as the portal recorded it."""

    key: str
    id: int
    status: str
    last_error: str = ""
    created_at: float = 0.0
    updated_at: float = 0.0


@dataclass(frozen=True)
class Delivered:
    """One line of the simulator's delivery log."""

    key: str | None
    session: str
    at: float


@dataclass(frozen=True)
class Sample:
    """What the run saw in one second: could it read, was a master routable, did the queue move."""

    at: float
    reachable: bool
    routable: int = 0
    unsent: int = 0
    sent: int = 0


@dataclass(frozen=True)
class Move:
    """A master leaving rotation (left=True) or coming back, from the event log."""

    at: float
    master_id: int
    left: bool


@dataclass(frozen=True)
class FailoverRecord:
    master_id: int
    status: str
    started_at: float


@dataclass(frozen=True)
class FaultRecord:
    """A fault as it was injected (wall-clock times)."""

    index: int
    kind: FaultKind
    target: str
    at: float
    healed_at: float | None = None
    master_id: int | None = None  # session faults: the master on that session
    error: str = ""
    detail: str = ""


# --- messages ------------------------------------------------------------------------


@dataclass(frozen=True)
class Duplicate:
    key: str
    sessions: tuple[str, ...]
    at: float  # the second delivery


@dataclass(frozen=True)
class Lost:
    key: str
    why: str
    at: float  # when the portal last touched it (or when it was submitted)


@dataclass
class Tally:
    """How every message ended."""

    submitted: int = 0  # accepted by the API, as the client saw it
    unconfirmed: int = 0  # never confirmed to the client (it gave up)
    unconfirmed_queued: int = 0  # ... yet the portal holds a row for it
    refused: int = 0  # a definitive 4xx
    delivered: int = 0  # distinct keys in the gateway's log
    duplicates: list[Duplicate] = field(default_factory=list)
    expired: int = 0
    dead: int = 0
    dead_reasons: Counter = field(default_factory=Counter)
    expired_reasons: Counter = field(default_factory=Counter)
    lost: list[Lost] = field(default_factory=list)
    # Delivered, yet the portal recorded it dead or expired: told "failed", it went out.
    delivered_but_failed: int = 0
    # Deliveries under keys this run never submitted.
    unknown_deliveries: int = 0


def tally_messages(
    accepted: Mapping[str, bool],
    refused: Iterable[str],
    submitted_at: Mapping[str, float],
    rows: Sequence[Row],
    deliveries: Sequence[Delivered],
) -> Tally:
    """Count delivered, doubled, expired, dead and lost messages over every key of the run.

    A key is reconciled when the client saw it accepted, or when the portal
    holds a row for it (accepted without the client hearing back). Lost is
    what the portal took and neither delivered nor accounted for as expired
    or dead, including rows it marked sent that never reached the gateway.
    """
    tally = Tally(refused=len(set(refused)))
    by_key = {row.key: row for row in rows}
    tally.submitted = sum(1 for ok in accepted.values() if ok)
    unconfirmed = [key for key, ok in accepted.items() if not ok]
    tally.unconfirmed = len(unconfirmed) - tally.refused
    tally.unconfirmed_queued = sum(1 for key in unconfirmed if key in by_key)
    received = deliveries_by_key(deliveries)
    tally.unknown_deliveries = sum(len(v) for k, v in received.items() if k not in accepted)
    for key in [k for k, ok in accepted.items() if ok or k in by_key]:
        count(tally, key, by_key.get(key), received.get(key, []), submitted_at.get(key, 0.0))
    return tally


def deliveries_by_key(deliveries: Sequence[Delivered]) -> dict[str | None, list[Delivered]]:
    found: dict[str | None, list[Delivered]] = defaultdict(list)
    for delivery in sorted(deliveries, key=lambda d: d.at):
        found[delivery.key].append(delivery)
    return found


def count(tally: Tally, key: str, row: Row | None, got: list[Delivered], since: float) -> None:
    if got:
        tally.delivered += 1
        if len(got) > 1:
            tally.duplicates.append(Duplicate(key, tuple(d.session for d in got), got[1].at))
    if row is None:
        if not got:
            tally.lost.append(Lost(key, "accepted, but the portal has no row for it", since))
        return
    if row.status == EXPIRED:
        tally.expired += 1
        tally.expired_reasons[reason_group(row.last_error)] += 1
    elif row.status == DEAD:
        tally.dead += 1
        tally.dead_reasons[reason_group(row.last_error)] += 1
    if got and row.status in (EXPIRED, DEAD):
        tally.delivered_but_failed += 1
    if got or row.status in (EXPIRED, DEAD):
        return
    why = "marked sent, never delivered" if row.status == SENT else f"still {row.status}"
    tally.lost.append(Lost(key, why, row.updated_at or row.created_at))


def reason_group(text: str) -> str:
    """Return a reason without its numbers and ids, so the same cause counts once."""
    text = re.sub(r"\b[0-9a-f]{8,}\b", "…", text or "(no reason recorded)")
    text = re.sub(r"\d+(\.\d+)?", "N", text)
    return text if len(text) <= 120 else text[:119] + "…"


# --- the system over time --------------------------------------------------------------


DATABASE_DOWN = "database unreachable"
NONE_ROUTABLE = "no master routable"
STALLED = "queue not draining"


def availability(samples: Sequence[Sample]) -> tuple[float, int, Counter]:
    """Return the share of seconds with a routable master and a draining queue, the count, why down.

    Draining: nothing waited, or something was sent since the previous
    sample. A second the run could not read the database counts as down
    (the API cannot take messages then either).
    """
    down: Counter = Counter()
    total = 0
    for previous, sample in itertools.pairwise(samples):
        total += 1
        if not (sample.reachable and previous.reachable):
            down[DATABASE_DOWN] += 1
        elif sample.routable == 0:
            down[NONE_ROUTABLE] += 1
        elif sample.unsent and sample.sent <= previous.sent:
            down[STALLED] += 1
    up = total - sum(down.values())
    return (up / total if total else 0.0), total, down


def left_rotation(fault: FaultRecord, moves: Sequence[Move]) -> tuple[str, float | None]:
    """Say when the fault's master left rotation: ("left", seconds), ("already out", None), ...."""
    if fault.master_id is None:
        return "n/a", None
    mine = sorted((m for m in moves if m.master_id == fault.master_id), key=lambda m: m.at)
    before = [m for m in mine if m.at < fault.at]
    if before and before[-1].left:
        return "already out", None
    end = fault.healed_at if fault.healed_at is not None else float("inf")
    for move in mine:
        if fault.at <= move.at <= end and move.left:
            return "left", move.at - fault.at
    return "stayed", None


def last_delivery_after(
    fault: FaultRecord, session: str, deliveries: Sequence[Delivered]
) -> float | None:
    """Seconds from the fault to the last delivery its session took while faulted (None: none)."""
    end = fault.healed_at if fault.healed_at is not None else float("inf")
    times = [d.at for d in deliveries if d.session == session and fault.at <= d.at <= end]
    return max(times) - fault.at if times else None


def failover_for(fault: FaultRecord, failovers: Sequence[FailoverRecord]) -> str:
    """Return the status of the first failover of the fault's master while faulted (or a dash)."""
    if fault.master_id is None:
        return "—"
    end = (fault.healed_at or fault.at) + BLAME_WINDOW_S
    for failover in sorted(failovers, key=lambda f: f.started_at):
        if failover.master_id == fault.master_id and fault.at <= failover.started_at <= end:
            return failover.status
    return "—"


def in_windows(times: Sequence[float], faults: Sequence[FaultRecord], end: float) -> list[int]:
    """Count ``times`` between each fault and the next one (the last one until ``end``)."""
    bounds = [f.at for f in faults] + [end]
    return [
        sum(1 for t in times if start <= t < stop) for start, stop in itertools.pairwise(bounds)
    ]


def failover_counts(failovers: Sequence[FailoverRecord]) -> Counter:
    return Counter(failover.status for failover in failovers)


def unanswered_requests(
    requests: Sequence[tuple[int, float]], outcomes: Sequence[tuple[int, float]], wait_s: float
) -> list[tuple[int, float]]:
    """When failovers were asked for (master, time) and no failover or skip followed in ``wait_s``.

    The prober asks once per outage: an unanswered request leaves the failed
    master's pending messages waiting for it to recover.
    """
    return [
        (master_id, asked)
        for master_id, asked in requests
        if not any(m == master_id and asked <= at <= asked + wait_s for m, at in outcomes)
    ]


# --- which fault kinds were survived ------------------------------------------------------


def blame(at: float, faults: Sequence[FaultRecord], master_id: int | None = None) -> set[FaultKind]:
    """Return the kinds of the faults under way (or just healed) at ``at``.

    With ``master_id``, the faults of that master's session if there are
    any: a failover of master 2 is about the fault on master 2.
    """
    live = [f for f in faults if f.at <= at <= (f.healed_at or f.at) + BLAME_WINDOW_S]
    own = [f for f in live if master_id is not None and f.master_id == master_id]
    return {f.kind for f in own or live}


def not_survived(
    faults: Sequence[FaultRecord],
    tally: Tally,
    crash_times: Sequence[float],
    undetected: Sequence[FaultRecord],
    dropped_failovers: Sequence[tuple[int, float]] = (),
) -> dict[FaultKind, list[str]]:
    """What went wrong under each fault kind: lost or doubled messages, crashes, missed failures.

    Problems are blamed by time on every fault under way (or healed less
    than BLAME_WINDOW_S before), so one problem may name several kinds.
    """
    problems: dict[FaultKind, Counter] = defaultdict(Counter)
    for lost in tally.lost:
        for kind in blame(lost.at, faults):
            problems[kind]["message lost"] += 1
    for duplicate in tally.duplicates:
        for kind in blame(duplicate.at, faults):
            problems[kind]["message delivered twice"] += 1
    for at in crash_times:
        for kind in blame(at, faults):
            problems[kind]["process crashed"] += 1
    for master_id, at in dropped_failovers:
        for kind in blame(at, faults, master_id):
            problems[kind]["failover asked for, never ran"] += 1
    for fault in undetected:
        problems[fault.kind]["master stayed in rotation"] += 1
    return {
        kind: [f"{what} ({n})" for what, n in sorted(found.items())]
        for kind, found in sorted(problems.items())
    }


def undetected(faults: Sequence[FaultRecord], moves: Sequence[Move]) -> list[FaultRecord]:
    """Return the session faults that should have taken their master out of rotation and did not."""
    missed = []
    for fault in faults:
        held = (fault.healed_at or fault.at) - fault.at
        must = fault.kind in MUST_LEAVE and not fault.error and held >= DETECT_WITHIN_S
        if must and left_rotation(fault, moves)[0] == "stayed":
            missed.append(fault)
    return missed
