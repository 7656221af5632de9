"""Routing: the balancer (masters.balancing) fed from the database.

The dispatcher keeps one ``Router`` per process (or thread: it is not
thread-safe). The router caches a snapshot of the routable masters and their
unsent load for ``settings.BALANCING["snapshot_max_age_ms"]``, so a routing
decision costs no query beyond the contact's affinity; it counts what it
assigned since the snapshot so least-loaded spreads between refreshes. The
strategy comes from ``RuntimeSettings`` at each refresh: an admin's switch
takes effect within one snapshot age.

The router only reads conversation affinities: ``outbox.record`` writes them,
pointing each contact at the master that actually sent to it.

Only healthy, active masters are routable. When none is, ``route`` returns
None and the message waits in the queue.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from datetime import datetime, timedelta

from django.conf import settings
from django.db.models import Count
from django.utils import timezone

from masters.balancing import (
    BalancerState,
    Candidate,
    Decision,
    Snapshot,
    pick,
    recipient_country,
    region_code,
)
from masters.choices import EventKind, HealthStatus, MessageStatus, Strategy
from masters.models import ConversationAffinity, Event, Master, Message, RuntimeSettings

logger = logging.getLogger(__name__)

# Unsent messages a master already holds: its load for least-loaded and the affinity bound.
IN_FLIGHT = MessageStatus.PENDING | {MessageStatus.SENDING}
# Slow start is for a master coming back from trouble. A master that turns
# healthy from unknown (first probe, a new master, the end of maintenance)
# takes a full share at once.
RECOVERED_FROM = frozenset({HealthStatus.DEGRADED, HealthStatus.FAILED})
# An Event row is saved just after the health_changed_at it records; allow for it.
EVENT_SLACK = timedelta(seconds=5)


def load_snapshot(now: datetime, slow_start_s: float) -> Snapshot:
    """Read the routable masters, their unsent load and recoveries: two to three queries."""
    masters = list(
        Master.objects.filter(is_active=True, health_status__in=HealthStatus.ROUTABLE).only(
            "id", "priority", "weight", "role", "region", "health_changed_at"
        )
    )
    if not masters:
        return Snapshot((), now)
    ids = [master.pk for master in masters]
    pending = dict(
        Message.objects.filter(master_id__in=ids, status__in=IN_FLIGHT)
        .order_by()
        .values("master_id")
        .annotate(count=Count("id"))
        .values_list("master_id", "count")
    )
    recovered = recovered_at(masters, now, slow_start_s)
    candidates = tuple(
        Candidate(
            id=master.pk,
            priority=master.priority,
            weight=master.effective_weight,
            region=master.region,
            pending=pending.get(master.pk, 0),
            recovered_at=recovered.get(master.pk),
        )
        for master in masters
    )
    return Snapshot(candidates, now)


def recovered_at(masters: list[Master], now: datetime, slow_start_s: float) -> dict[int, datetime]:
    """Return when each healthy master recovered, for those still in the slow-start window.

    A master recovered if its latest health change came from degraded or
    failed (the ``from`` of its latest ``master.health_changed`` event). One
    query, and none at all when no master changed within the window.
    """
    if slow_start_s <= 0:
        return {}
    since = now - timedelta(seconds=slow_start_s)
    recent = {
        m.pk: m.health_changed_at
        for m in masters
        if m.health_changed_at and m.health_changed_at > since
    }
    if not recent:
        return {}
    latest: dict[int, dict] = {}
    events = (
        Event.objects.filter(
            master_id__in=recent,
            kind=EventKind.HEALTH_CHANGED,
            created_at__gte=min(recent.values()) - EVENT_SLACK,
        )
        .order_by("-id")
        .values_list("master_id", "data")
    )
    for master_id, data in events:
        latest.setdefault(master_id, data)
    return {
        pk: changed_at
        for pk, changed_at in recent.items()
        if latest.get(pk, {}).get("from") in RECOVERED_FROM
    }


class Router:
    """Choose masters for messages from a cached snapshot, keeping conversations together."""

    def __init__(
        self, *, clock: Callable[[], datetime] = timezone.now, seed: int | None = None
    ) -> None:
        self.clock = clock
        self.state = BalancerState(seed)
        self.strategy: str = Strategy.ROUND_ROBIN
        self._snapshot: Snapshot | None = None
        self._max_age = timedelta(0)
        self._options: dict[str, float] = {}
        # Contacts this router chose a master for within the last lease,
        # oldest first. Their affinity row is written when the send is
        # recorded (outbox.record); until then the router itself keeps the
        # conversation on its master.
        self._recent: dict[str, tuple[int, datetime]] = {}

    def invalidate(self) -> None:
        """Force a fresh snapshot (and strategy) on next use."""
        self._snapshot = None

    def snapshot(self, now: datetime | None = None) -> Snapshot:
        """Return the cached snapshot, refreshed when older than the configured age."""
        now = now or self.clock()
        if self._snapshot is None or now - self._snapshot.taken_at >= self._max_age:
            self._refresh(now)
        return self._snapshot

    def _refresh(self, now: datetime) -> None:
        config = settings.BALANCING
        strategy = RuntimeSettings.current().load_balancing_strategy
        if strategy not in Strategy.values:
            logger.warning("unknown load balancing strategy %r: using round robin", strategy)
            strategy = Strategy.ROUND_ROBIN
        if strategy != self.strategy:
            logger.info("load balancing strategy: %s -> %s", self.strategy, strategy)
            self.strategy = strategy
        self._max_age = timedelta(milliseconds=config["snapshot_max_age_ms"])
        self._options = {
            "affinity_max_pending": config["affinity_max_pending"],
            "slow_start_s": config["slow_start_s"],
            "slow_start_min_share": config["slow_start_min_share"],
        }
        self._snapshot = load_snapshot(now, config["slow_start_s"])

    def route(self, to: str, region_hint: str = "") -> Decision | None:
        """Choose a master for one message to ``to``; None when no master is routable.

        Reads the contact's affinity (one indexed query); writes nothing.
        """
        now = self.clock()
        snapshot = self.snapshot(now)
        if not snapshot.candidates:
            return None
        affinity_id = (
            ConversationAffinity.objects.filter(contact=to, expires_at__gt=now)
            .values_list("master_id", flat=True)
            .first()
        )
        return self._pick(snapshot, now, to, region_hint, affinity_id)

    def route_many(
        self,
        messages: list[tuple[int, str, str]],
        affinities: dict[str, int] | None = None,
        assigned: Mapping[int, int] | None = None,
    ) -> dict[int, Decision]:
        """Choose masters for (message id, to, region) triples.

        ``affinities`` maps contact to current master where the caller read
        them already (the claim does, with the rows); without it they are
        read here in one query. Messages left out of the answer have no
        routable master and stay queued. A contact routed earlier in the batch
        keeps that master, and so does one this router routed within the last
        lease while it has no row of its own (the row is written only when the
        send is recorded). A contact kept by its row is not remembered: when
        rebalancing or a failover deletes the row, it is routed afresh.

        Under round robin the new contacts level the batch out over the
        masters (``balancing.pick``'s ``level``): each master's share goes
        through its own send slots, and a tilted batch idles some of them.
        What tilts it: kept conversations, routed first wherever they fall
        in the batch, and ``assigned``, the messages per master the same
        claim took with their master already set (retries, failed-over work).
        """
        now = self.clock()
        snapshot = self.snapshot(now)
        if not snapshot.candidates or not messages:
            return {}
        contacts = {to for _, to, _ in messages}
        if affinities is None:
            affinities = dict(
                ConversationAffinity.objects.filter(
                    contact__any=list(contacts), expires_at__gt=now
                ).values_list("contact", "master_id")
            )
        self._forget_before(now - timedelta(seconds=settings.QUEUE["lease_s"]))
        # A contact with no row may have one on its way: this router's own
        # choice, whose send is not recorded yet. A row wins (a failover moves rows).
        recent = self._recent
        known = {c: recent[c][0] for c in contacts if c in recent} | affinities
        max_pending = self._options["affinity_max_pending"]
        positions = snapshot.positions
        # What the batch gave each master, by snapshot position. A level
        # batch makes levelled round robin plain round robin, turn for turn.
        level = [0] * len(snapshot.candidates) if self.strategy == Strategy.ROUND_ROBIN else None
        if level is not None and assigned:
            for master_id, count in assigned.items():
                if (position := positions.get(master_id)) is not None:
                    level[position] += count
        kept: dict[int, Decision] = {}  # one shared (frozen) Decision per master kept

        def keeps(to: str) -> Decision | None:
            """The contact's current master, if it keeps the conversation (pick's first step)."""
            current = snapshot.get(known[to]) if to in known else None
            if current is None or not snapshot.keeps_conversation(current, max_pending):
                return None
            snapshot.add_pending(current.id)
            decision = kept.get(current.id)
            if decision is None:
                decision = kept[current.id] = Decision(current.id, "affinity")
            return decision

        decisions: dict[int, Decision] = {}
        fresh = []  # messages whose contact is not kept: picked after every kept one
        # Kept conversations first, most of a steady batch: the short way,
        # without a call to pick().
        for message, to, region in messages:
            if (decision := keeps(to)) is None:
                fresh.append((message, to, region))
                continue
            decisions[message] = decision
            self._note(to, decision.candidate_id, affinities, now)
            if level is not None:
                level[positions[decision.candidate_id]] += 1
        for message, to, region in fresh:
            # A contact picked earlier in this pass keeps that master.
            decision = keeps(to) or self._pick(snapshot, now, to, region, None, level)
            chosen = decision.candidate_id
            known[to] = chosen
            decisions[message] = decision
            self._note(to, chosen, affinities, now)
            if level is not None:
                level[positions[chosen]] += 1
        return decisions

    def _note(self, to: str, chosen: int, affinities: dict[str, int], now: datetime) -> None:
        """Remember a choice that no affinity row records yet (newest last: oldest first)."""
        recent = self._recent
        recent.pop(to, None)
        if affinities.get(to) != chosen:  # a matching row says it all
            recent[to] = (chosen, now)

    def _forget_before(self, cutoff: datetime) -> None:
        """Drop the oldest recent choices, those made before ``cutoff``."""
        recent = self._recent
        while recent:
            contact, (_, chosen_at) = next(iter(recent.items()))
            if chosen_at >= cutoff:
                return
            del recent[contact]

    def _pick(
        self,
        snapshot: Snapshot,
        now: datetime,
        to: str,
        region: str,
        affinity_id: int | None,
        level: list[int] | None = None,
    ) -> Decision:
        country = None
        if self.strategy == Strategy.GEO:
            # The sender's explicit region wins over the number's country.
            country = (region_code(region) if region else None) or recipient_country(to)
        decision = pick(
            snapshot,
            self.strategy,
            self.state,
            country=country,
            affinity_id=affinity_id,
            now=now,
            level=level,
            **self._options,
        )
        snapshot.add_pending(decision.candidate_id)
        return decision
