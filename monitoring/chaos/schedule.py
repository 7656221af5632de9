"""The fault schedule: a seed and the run's shape in, the same list of faults out, every time.

Pure: no clock, no I/O. The run prints the seed; ``ha_chaos --seed N`` with
the same size replays the same faults at the same offsets (the processes
and the machine still vary, so the outcome may not).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum


class FaultKind(StrEnum):
    SESSION_FAIL = "session-fail"
    SESSION_HANG = "session-hang"
    SESSION_SLOW = "session-slow"
    SESSION_FLAP = "session-flap"
    SESSION_BREAK_SENDS = "session-break-sends"
    KILL_DISPATCHER = "kill-dispatcher"
    KILL_QCLUSTER = "kill-qcluster"
    KILL_QWORKER = "kill-qworker"
    KILL_PROBER = "kill-active-prober"
    KILL_WEB = "kill-web"
    RESTART_POSTGRES = "restart-postgres"
    RESTART_REDIS = "restart-redis"


# The simulator's control verb (POST /_sim/sessions/{session}/{verb}) for each
# session fault; "recover" heals them all.
SESSION_ACTIONS: dict[FaultKind, str] = {
    FaultKind.SESSION_FAIL: "fail",
    FaultKind.SESSION_HANG: "hang",
    FaultKind.SESSION_SLOW: "slow",
    FaultKind.SESSION_FLAP: "flap",
    FaultKind.SESSION_BREAK_SENDS: "break_sends",
}
SERVER_RESTARTS = frozenset({FaultKind.RESTART_POSTGRES, FaultKind.RESTART_REDIS})
# Kinds that can run at any moment: the fallback when a drawn kind cannot.
ALWAYS_POSSIBLE = (
    FaultKind.KILL_DISPATCHER,
    FaultKind.KILL_QWORKER,
    FaultKind.KILL_PROBER,
    FaultKind.KILL_WEB,
)

# How often each kind is drawn once every kind has had its turn. Half the
# faults hit a gateway session (what production sees most); server restarts
# are rarer because each one stops every process's database work for seconds.
WEIGHTS: dict[FaultKind, float] = {
    FaultKind.SESSION_FAIL: 0.12,
    FaultKind.SESSION_HANG: 0.08,
    FaultKind.SESSION_SLOW: 0.09,
    FaultKind.SESSION_FLAP: 0.08,
    FaultKind.SESSION_BREAK_SENDS: 0.08,
    FaultKind.KILL_DISPATCHER: 0.12,
    FaultKind.KILL_QCLUSTER: 0.05,
    FaultKind.KILL_QWORKER: 0.06,
    FaultKind.KILL_PROBER: 0.08,
    FaultKind.KILL_WEB: 0.10,
    FaultKind.RESTART_POSTGRES: 0.07,
    FaultKind.RESTART_REDIS: 0.07,
}
# Slow sessions answer after one of these (ms): under and over the probe
# timeout (2 s), always under the send timeout (10 s).
SLOW_DELAYS_MS = (500, 1500, 3000, 5000)
FLAP_PERIOD_MS = (1000, 4000)


@dataclass(frozen=True)
class Shape:
    """What the schedule has to fit: how long, how many faults, what there is to hit."""

    duration_s: float
    faults: int
    sessions: tuple[str, ...]
    dispatchers: int
    webs: int
    hold_s: tuple[float, float]  # how long a session fault lasts, from and to
    # Every session is healed this long before the load stops.
    settle_s: float = 10.0
    # Two server restarts (PostgreSQL, Redis) are at least this far apart.
    server_gap_s: float = 20.0
    # The kinds to draw from (``ha_chaos --skip`` leaves some out).
    kinds: frozenset[FaultKind] = frozenset(FaultKind)


@dataclass(frozen=True)
class Fault:
    """One fault: what, when (seconds after the load starts), on what, for how long."""

    index: int
    at_s: float
    kind: FaultKind
    # A session, a process slot ("dispatcher-2"), or "" (the active prober, the server).
    target: str = ""
    hold_s: float = 0.0  # session faults only: until the session recovers
    param: int = 0  # slow: delay_ms; flap: period_ms

    @property
    def heal_s(self) -> float:
        return self.at_s + self.hold_s

    @property
    def is_session(self) -> bool:
        return self.kind in SESSION_ACTIONS

    def describe(self) -> str:
        target = self.target or {
            FaultKind.KILL_PROBER: "the lease holder",
            FaultKind.RESTART_POSTGRES: "server",
            FaultKind.RESTART_REDIS: "server",
        }.get(self.kind, "")
        text = f"{self.kind} {target}".strip()
        if self.kind is FaultKind.SESSION_SLOW:
            text += f" ({self.param} ms)"
        elif self.kind is FaultKind.SESSION_FLAP:
            text += f" (every {self.param} ms)"
        if self.is_session:
            text += f" for {self.hold_s:.1f} s"
        return text


@dataclass(frozen=True)
class Step:
    """One thing the run does at ``at_s``: inject a fault or heal it."""

    at_s: float
    heal: bool
    fault: Fault


def build_schedule(seed: int, shape: Shape) -> list[Fault]:
    """Return ``shape.faults`` faults spread over the run, drawn from ``seed``.

    One fault per equal slot of the run, at a random moment inside it. Each
    kind comes once before any comes twice (when there are enough faults),
    so a short run still tries everything. At least one session is always
    working (every master down at once is a scenario of its own), every
    session fault heals ``settle_s`` before the load stops, and server
    restarts keep ``server_gap_s`` apart.
    """
    if shape.faults < 1 or shape.duration_s <= shape.settle_s:
        return []
    rng = random.Random(seed)
    slot = shape.duration_s / shape.faults
    # The leading slots in which a session fault still heals before settle_s.
    roomy = int((shape.duration_s - shape.settle_s - shape.hold_s[0]) / slot)
    order = planned_kinds(rng, shape.faults, roomy, shape.kinds)
    state = _Occupancy(shape)
    faults: list[Fault] = []
    for index in range(len(order)):
        at = round(slot * (index + rng.uniform(0.1, 0.9)), 1)
        kind = _feasible_kind(order, index, at, state, rng)
        if kind is None:
            continue  # nothing allowed fits here (only sessions allowed, all busy)
        fault = _make_fault(len(faults) + 1, at, kind, shape, state, rng)
        state.take(fault)
        faults.append(fault)
    return faults


def planned_kinds(
    rng: random.Random,
    count: int,
    roomy: int | None = None,
    allowed: frozenset[FaultKind] = frozenset(FaultKind),
) -> list[FaultKind]:
    """Every kind once in a shuffled order, then weighted draws up to ``count``.

    In the first round the session faults are spread evenly over the first
    ``roomy`` places: bunched together they would not find a free session
    (one must always work), and too late they could not heal before the
    load stops, so a short run would miss some. The server restarts are
    spread among the others for the same reason (they keep apart).
    """
    kills = [k for k in FaultKind if k not in SESSION_ACTIONS and k not in SERVER_RESTARTS]
    servers, sessions = sorted(SERVER_RESTARTS), list(SESSION_ACTIONS)
    groups = [[kind for kind in group if kind in allowed] for group in (kills, servers, sessions)]
    for group in groups:
        rng.shuffle(group)
    kills, servers, sessions = groups
    others = spread(servers, kills, len(kills) + len(servers))
    kinds = spread(sessions, others, roomy or len(FaultKind))
    weights = {kind: weight for kind, weight in WEIGHTS.items() if kind in allowed}
    extra = max(0, count - len(kinds)) if weights else 0
    kinds += rng.choices(list(weights), weights=list(weights.values()), k=extra)
    return kinds[:count]


def spread(special: list[FaultKind], rest: list[FaultKind], span: int) -> list[FaultKind]:
    """Merge two lists in order, ``special`` spread evenly over the first ``span`` places."""
    if not special:
        return rest[:]
    total = len(special) + len(rest)
    span = max(len(special), min(span, total))
    spots = {round(i * span / len(special)) for i in range(len(special))}
    first, second = iter(special), iter(rest)
    return [next(first) if spot in spots else next(second) for spot in range(total)]


class _Occupancy:
    """What is faulted when, so a new fault keeps the schedule's promises."""

    def __init__(self, shape: Shape) -> None:
        self.shape = shape
        self.session_until = dict.fromkeys(shape.sessions, 0.0)
        self.last_server = -shape.server_gap_s

    def free_sessions(self, at: float) -> list[str]:
        busy = [s for s, until in self.session_until.items() if until > at]
        if len(busy) >= len(self.shape.sessions) - 1:
            return []  # one session always works
        return sorted(s for s in self.shape.sessions if s not in busy)

    def allows(self, kind: FaultKind, at: float) -> bool:
        if kind in SESSION_ACTIONS:
            room = self.shape.duration_s - self.shape.settle_s - at
            return bool(self.free_sessions(at)) and room >= self.shape.hold_s[0]
        if kind in SERVER_RESTARTS:
            return at - self.last_server >= self.shape.server_gap_s
        return True

    def take(self, fault: Fault) -> None:
        if fault.is_session:
            self.session_until[fault.target] = fault.heal_s
        elif fault.kind in SERVER_RESTARTS:
            self.last_server = fault.at_s


def _feasible_kind(
    order: list[FaultKind], index: int, at: float, state: _Occupancy, rng: random.Random
) -> FaultKind | None:
    """The planned kind if it fits now; else the next planned one that does, swapped forward.

    None when no allowed kind fits at all.
    """
    for later in range(index, len(order)):
        if state.allows(order[later], at):
            order[index], order[later] = order[later], order[index]
            return order[index]
    fallback = [kind for kind in ALWAYS_POSSIBLE if kind in state.shape.kinds]
    return rng.choice(fallback) if fallback else None


def _make_fault(
    index: int, at: float, kind: FaultKind, shape: Shape, state: _Occupancy, rng: random.Random
) -> Fault:
    if kind in SESSION_ACTIONS:
        target = rng.choice(state.free_sessions(at))
        longest = shape.duration_s - shape.settle_s - at
        hold = round(min(rng.uniform(*shape.hold_s), longest), 1)
        param = 0
        if kind is FaultKind.SESSION_SLOW:
            param = rng.choice(SLOW_DELAYS_MS)
        elif kind is FaultKind.SESSION_FLAP:
            param = rng.randint(*FLAP_PERIOD_MS) // 100 * 100
        return Fault(index, at, kind, target, hold, param)
    if kind is FaultKind.KILL_DISPATCHER:
        return Fault(index, at, kind, f"dispatcher-{rng.randint(1, shape.dispatchers)}")
    if kind is FaultKind.KILL_WEB:
        return Fault(index, at, kind, f"web-{rng.randint(1, shape.webs)}")
    if kind in (FaultKind.KILL_QCLUSTER, FaultKind.KILL_QWORKER):
        return Fault(index, at, kind, "qcluster")
    return Fault(index, at, kind)


def timeline(faults: Sequence[Fault]) -> list[Step]:
    """Every injection and every heal in the order the run performs them."""
    steps = [Step(f.at_s, False, f) for f in faults]
    steps += [Step(f.heal_s, True, f) for f in faults if f.is_session]
    # At the same moment a heal goes first: a session healed and re-faulted stays faulted.
    return sorted(steps, key=lambda step: (step.at_s, not step.heal, step.fault.index))


def format_schedule(seed: int, faults: Sequence[Fault]) -> str:
    """Return the schedule as the run prints it at the start, one fault a line."""
    lines = [f"Fault schedule (seed {seed}, {len(faults)} faults):"]
    lines += [f"  #{f.index:<3} t+{f.at_s:7.1f} s  {f.describe()}" for f in faults]
    return "\n".join(lines)
