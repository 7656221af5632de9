"""Load balancing as pure functions over a snapshot of routable masters.

``pick`` chooses one master for one message. It knows nothing of the
database: ``masters.routing.Router`` builds the ``Snapshot`` (routable masters
only, with their unsent load) and keeps the ``BalancerState`` between picks.

On top of the strategy (round robin, priority-weighted, least loaded, geo):

- conversation affinity: a contact keeps its master while that master is in
  the snapshot (healthy) and not overloaded: it holds fewer than
  ``affinity_max_pending`` unsent messages, or no more than
  ``AFFINITY_LOAD_SLACK`` above the mean of the routable masters (bounded-load
  affinity). Under a backlog every master passes the first bound, and
  conversations still stick; one busy contact cannot pin a master either way;
- slow start: a master that recovered less than ``slow_start_s`` ago gets a
  share factor ``f = max(min_share, elapsed / slow_start_s)`` of a full share.
  Weighted strategies scale its weight by ``f``; the others admit it with
  probability ``f`` and otherwise move on to their next choice;
- levelling (round robin, for a batch): kept conversations and retries
  give some masters more of a batch than others; the rotation skips those
  ahead until the rest catch up. On a level batch it is plain round robin,
  turn for turn.

pick() runs once per message (the dispatcher's hot path, benchmarked in
microseconds), so it stays allocation-light: no sorting and no per-candidate objects
on the common path, just the Decision.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from functools import lru_cache
from operator import add, attrgetter

import phonenumbers

from masters.choices import Strategy

# Region names operators write in bots-config.json that are not ISO 3166
# alpha-2 codes. Short on purpose: a region that maps to nothing simply never
# matches, and geo falls back to every master.
REGION_ALIASES = {
    "UAE": "AE",
    "KSA": "SA",
    "UK": "GB",
    "USA": "US",
    "UNITED ARAB EMIRATES": "AE",
    "SAUDI ARABIA": "SA",
    "UNITED KINGDOM": "GB",
    "UNITED STATES": "US",
}


@dataclass(slots=True)
class Candidate:
    """One routable master as the balancer sees it.

    Owned by one Snapshot: only ``pending`` changes, through
    ``Snapshot.add_pending`` (counting in place is what keeps a routing
    decision at a couple of microseconds).
    """

    id: int
    priority: int
    weight: float
    region: str = ""
    pending: int = 0  # unsent messages assigned to it: queued, retrying or sending
    recovered_at: datetime | None = None  # when it became healthy again; None = full share


# Past affinity_max_pending, a master keeps its contacts while its unsent load
# is at most this fraction above the mean (consistent hashing with bounded
# loads, Mirrokni et al. 2018): an absolute bound alone switched stickiness
# off under any backlog (35 % of a contact's repeats kept their master in a
# balanced drain at 3,500 msg/s, as round robin would give).
AFFINITY_LOAD_SLACK = 0.25


@dataclass(frozen=True, slots=True)
class Decision:
    candidate_id: int
    reason: str  # "affinity", "round-robin", "priority", "least-loaded", "geo:AE", "geo-fallback"


@dataclass
class Snapshot:
    """Routable masters at one moment, sorted by priority then id.

    Mutable only through ``add_pending``: the router counts what it assigned
    since the snapshot was taken, so least-loaded and affinity bounds see it.
    """

    candidates: tuple[Candidate, ...]
    taken_at: datetime
    # Derived in __post_init__; positions stay valid across add_pending.
    positions: dict[int, int] = field(init=False, repr=False)
    weighted: tuple[int, ...] = field(init=False, repr=False)  # positions with weight > 0
    weights: tuple[float, ...] = field(init=False, repr=False)  # their weights
    total_weight: float = field(init=False, repr=False)
    by_country: dict[str, tuple[int, ...]] = field(init=False, repr=False)
    recovering: bool = field(init=False, repr=False)  # some candidate may be ramping up
    ramping: tuple[int, ...] = field(init=False, repr=False)  # those, as indexes into weighted
    total_pending: int = field(init=False, repr=False)  # kept by add_pending

    def __post_init__(self) -> None:
        self.candidates = tuple(sorted(self.candidates, key=attrgetter("priority", "id")))
        self.positions = {c.id: i for i, c in enumerate(self.candidates)}
        self.weighted = tuple(i for i, c in enumerate(self.candidates) if c.weight > 0)
        self.weights = tuple(self.candidates[i].weight for i in self.weighted)
        self.total_weight = sum(self.weights)
        countries: dict[str, list[int]] = {}
        for i, c in enumerate(self.candidates):
            code = region_code(c.region)
            if code:
                countries.setdefault(code, []).append(i)
        self.by_country = {code: tuple(found) for code, found in countries.items()}
        self.recovering = any(c.recovered_at is not None for c in self.candidates)
        self.ramping = tuple(
            j for j, i in enumerate(self.weighted) if self.candidates[i].recovered_at is not None
        )
        self.total_pending = sum(c.pending for c in self.candidates)

    def get(self, candidate_id: int) -> Candidate | None:
        position = self.positions.get(candidate_id)
        return None if position is None else self.candidates[position]

    def add_pending(self, candidate_id: int, count: int = 1) -> None:
        """Count messages assigned to a candidate since the snapshot was taken."""
        self.candidates[self.positions[candidate_id]].pending += count
        self.total_pending += count

    def keeps_conversation(self, candidate: Candidate, max_pending: int) -> bool:
        """Whether ``candidate`` may keep a contact: under the absolute bound, or near the mean."""
        if candidate.pending < max_pending:
            return True
        mean = self.total_pending / len(self.candidates)
        return candidate.pending <= (1 + AFFINITY_LOAD_SLACK) * mean


class BalancerState:
    """What the balancer remembers between picks, per process.

    Not thread-safe: each dispatcher thread keeps its own Router and state.
    """

    __slots__ = ("carried", "current", "current_for", "cursor", "geo_cursors", "random")

    def __init__(self, seed: int | None = None) -> None:
        self.cursor = 0  # round robin over all candidates
        self.geo_cursors: dict[str, int] = {}  # round robin within one country
        # Smooth weighted round robin's current weights, keyed by candidate id.
        # While one snapshot is in use they live in ``current``, a list in the
        # snapshot's order (a list is several times faster than a dict here).
        self.carried: dict[int, float] = {}
        self.current: list[float] = []
        self.current_for: Snapshot | None = None
        self.random = random.Random(seed)  # slow-start admission

    def current_weights(self, snapshot: Snapshot) -> list[float]:
        """Return the current weights of ``snapshot.weighted``, carried over by id."""
        if self.current_for is not snapshot:
            if self.current_for is not None:
                old = self.current_for
                ids = (old.candidates[i].id for i in old.weighted)
                self.carried = dict(zip(ids, self.current, strict=True))
            # Masters that left rotation are forgotten, so one that returns starts level.
            ids = (snapshot.candidates[i].id for i in snapshot.weighted)
            self.current = [self.carried.get(id_, 0.0) for id_ in ids]
            self.current_for = snapshot
        return self.current


@dataclass(frozen=True, slots=True)
class _Ramp:
    """Slow-start parameters, built only when some candidate is ramping."""

    now: datetime
    window_s: float
    min_share: float
    rng: random.Random

    def share(self, c: Candidate) -> float:
        if c.recovered_at is None:
            return 1.0
        elapsed = (self.now - c.recovered_at).total_seconds()
        if elapsed >= self.window_s:
            return 1.0
        return max(self.min_share, elapsed / self.window_s)

    def admits(self, c: Candidate) -> bool:
        share = self.share(c)
        return share >= 1.0 or self.rng.random() < share


def pick(
    snapshot: Snapshot,
    strategy: str,
    state: BalancerState,
    *,
    country: str | None = None,
    affinity_id: int | None = None,
    now: datetime,
    affinity_max_pending: int,
    slow_start_s: float,
    slow_start_min_share: float,
    level: list[int] | None = None,
) -> Decision | None:
    """Choose a master for one message; None when no master is routable.

    ``country`` (ISO 3166 alpha-2) is used by the geo strategy only;
    ``affinity_id`` is the contact's current master, if it has one.
    ``level`` counts the messages a batch gave each candidate so far (by
    position in the snapshot): round robin takes its turn among the least
    given. A dispatcher sends each master's share of a claimed batch through
    that master's own send slots, so an uneven batch leaves one master's
    slots idle while another's queue waits.
    """
    candidates = snapshot.candidates
    if not candidates:
        return None
    if affinity_id is not None:
        current = snapshot.get(affinity_id)
        if current is not None and snapshot.keeps_conversation(current, affinity_max_pending):
            return Decision(current.id, "affinity")
    ramp = None
    if snapshot.recovering and slow_start_s > 0:
        ramp = _Ramp(now, slow_start_s, slow_start_min_share, state.random)
    if strategy == Strategy.ROUND_ROBIN:
        # Not while a master ramps up: slow start decides the shares then.
        level = level if ramp is None else None
        return Decision(_round_robin(candidates, state, ramp, level=level).id, "round-robin")
    if strategy == Strategy.PRIORITY:
        return Decision(_smooth_weighted(snapshot, state, ramp).id, "priority")
    if strategy == Strategy.LEAST_LOADED:
        return Decision(_least_loaded(candidates, ramp).id, "least-loaded")
    if strategy == Strategy.GEO:
        return _geo(snapshot, state, country, ramp)
    raise ValueError(f"unknown load balancing strategy {strategy!r}")


def _round_robin(
    candidates: tuple[Candidate, ...],
    state: BalancerState,
    ramp: _Ramp | None,
    skip: tuple[int, ...] = (),
    *,
    level: list[int] | None = None,
) -> Candidate:
    """Take the next candidate in turn; a ramping one may pass its turn to the next.

    ``skip`` holds positions not to take (geo's local masters that passed
    already); with ``level``, so do those given more than the least given.
    """
    n = len(candidates)
    start = state.cursor % n
    first = -1
    low = min(level) if level is not None else 0
    for step in range(n):
        position = (start + step) % n
        if position in skip or (level is not None and level[position] > low):
            continue
        if ramp is None or ramp.admits(candidates[position]):
            state.cursor = (position + 1) % n
            return candidates[position]
        if first < 0:
            first = position
    # Every one passed: slow start never leaves a message without a master.
    state.cursor = (first + 1) % n
    return candidates[first]


def _smooth_weighted(snapshot: Snapshot, state: BalancerState, ramp: _Ramp | None) -> Candidate:
    """Smooth weighted round robin (nginx): exact proportions, interleaved.

    Each pick adds every weight to its candidate's current weight, takes the
    highest (first by priority on ties) and subtracts the total from it.
    """
    if not snapshot.weighted:  # every weight is zero: share evenly rather than stall
        return _round_robin(snapshot.candidates, state, None)
    current = state.current_weights(snapshot)
    weights, total = snapshot.weights, snapshot.total_weight
    if ramp is not None:
        weights = list(weights)
        for j in snapshot.ramping:
            weights[j] *= ramp.share(snapshot.candidates[snapshot.weighted[j]])
        total = sum(weights)
    # Whole-list operations run in C: a few microseconds for a hundred masters.
    current[:] = map(add, current, weights)
    best_value = max(current)
    best = current.index(best_value)  # the first maximum: priority order breaks ties
    current[best] = best_value - total
    return snapshot.candidates[snapshot.weighted[best]]


def _least_loaded(candidates: tuple[Candidate, ...], ramp: _Ramp | None) -> Candidate:
    """Take the candidate with the fewest unsent messages; ties go by priority, then id."""
    best = candidates[0]
    for c in candidates:
        if c.pending < best.pending:  # strict: the earlier (higher priority) wins ties
            best = c
    if ramp is None or ramp.admits(best):
        return best
    ordered = sorted(candidates, key=attrgetter("pending"))  # stable: priority order kept
    for c in ordered[1:]:
        if ramp.admits(c):
            return c
    return best


def _geo(
    snapshot: Snapshot, state: BalancerState, country: str | None, ramp: _Ramp | None
) -> Decision:
    """Round robin among masters in the recipient's country, else among all."""
    local = snapshot.by_country.get(country, ()) if country else ()
    n = len(local)
    if n:
        start = state.geo_cursors.get(country, 0) % n
        for step in range(n):
            c = snapshot.candidates[local[(start + step) % n]]
            if ramp is None or ramp.admits(c):
                state.geo_cursors[country] = (start + step + 1) % n
                return Decision(c.id, f"geo:{country}")
        if n == len(snapshot.candidates):  # ramping, but there is no one else
            state.geo_cursors[country] = (start + 1) % n
            return Decision(snapshot.candidates[local[start]].id, f"geo:{country}")
        # Every local master is ramping and passed: the others take the message.
    return Decision(_round_robin(snapshot.candidates, state, ramp, local).id, "geo-fallback")


def region_code(region: str) -> str | None:
    """Map a master's free-text region to an ISO 3166 alpha-2 code, if it names one."""
    name = " ".join(region.split()).upper()
    if name in REGION_ALIASES:
        return REGION_ALIASES[name]
    if len(name) == 2 and name.isalpha():
        return name
    return None


@lru_cache(maxsize=16_384)
def recipient_country(e164: str) -> str | None:
    """Return the ISO 3166 alpha-2 country of an E.164 number, or None if it has none.

    Cached: parsing costs tens of microseconds and conversations repeat contacts.
    """
    try:
        number = phonenumbers.parse(e164, None)
    except phonenumbers.NumberParseException:
        return None
    code = phonenumbers.region_code_for_number(number)
    # "001" is a non-geographic number (e.g. +800), "ZZ" an unknown one.
    return code if code and code.isalpha() and code != "ZZ" else None


def affinities_to_write(
    wanted: dict[str, int],
    existing: dict[str, tuple[int, datetime]],
    *,
    now: datetime,
    ttl_s: float,
) -> list[str]:
    """Return the contacts whose affinity row must be written.

    ``wanted`` maps contact to master; ``existing`` maps contact to the stored
    (master, expires_at). A row is rewritten only when it is new, points at
    another master, or expires within half the TTL: a steady conversation
    costs one write per half TTL, not one per message.
    """
    refresh_before = now + timedelta(seconds=ttl_s / 2)
    stale = []
    for contact, master_id in wanted.items():
        stored = existing.get(contact)
        if stored is None or stored[0] != master_id or stored[1] < refresh_before:
            stale.append(contact)
    return stale
