"""Routing: the balancer (masters.balancing) fed from the database.

The dispatcher keeps one ``Router`` per process (or thread: it is not
thread-safe). The router caches a snapshot of the routable masters and their
unsent load for ``settings.BALANCING["snapshot_max_age_ms"]``, so a routing
decision costs no query beyond the contact's affinity; it counts what it
assigned since the snapshot so least-loaded spreads between refreshes. The
strategy comes from ``RuntimeSettings`` at each refresh: an admin's switch
takes effect within one snapshot age.

Only healthy, active masters are routable. When none is, ``route`` returns
None and the message waits in the queue.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime, timedelta

from django.conf import settings
from django.db.models import Count
from django.utils import timezone

from masters.balancing import (
    BalancerState,
    Candidate,
    Decision,
    Snapshot,
    affinities_to_write,
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
    """Choose masters for messages from a cached snapshot; remember conversations."""

    def __init__(
        self, *, clock: Callable[[], datetime] = timezone.now, seed: int | None = None
    ) -> None:
        self.clock = clock
        self.state = BalancerState(seed)
        self.strategy: str = Strategy.ROUND_ROBIN
        self._snapshot: Snapshot | None = None
        self._max_age = timedelta(0)
        self._options: dict[str, float] = {}
        # Affinity rows (contact -> (master, expires_at), or None for no row)
        # that the last route_many read, for remember().
        self._stored: dict[str, tuple[int, datetime] | None] = {}

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

    def route_many(self, messages: list[tuple[int, str, str]]) -> dict[int, Decision]:
        """Choose masters for (message id, to, region) triples, reading affinities in one query.

        Messages left out of the answer have no routable master and stay queued.
        A contact routed earlier in the batch keeps that master for the rest of it.
        """
        now = self.clock()
        snapshot = self.snapshot(now)
        if not snapshot.candidates or not messages:
            return {}
        contacts = {to for _, to, _ in messages}
        # Expired rows too, and None for no row: remember() needs both to
        # decide what to write without reading them again.
        self._stored = dict.fromkeys(contacts) | {
            contact: (master_id, expires_at)
            for contact, master_id, expires_at in ConversationAffinity.objects.filter(
                contact__any=list(contacts)
            ).values_list("contact", "master_id", "expires_at")
        }
        affinities = {
            contact: stored[0]
            for contact, stored in self._stored.items()
            if stored is not None and stored[1] > now
        }
        decisions = {}
        for message_id, to, region in messages:
            decision = self._pick(snapshot, now, to, region, affinities.get(to))
            affinities[to] = decision.candidate_id
            decisions[message_id] = decision
        return decisions

    def _pick(
        self, snapshot: Snapshot, now: datetime, to: str, region: str, affinity_id: int | None
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
            **self._options,
        )
        snapshot.add_pending(decision.candidate_id)
        return decision

    def remember(self, decisions: dict[str, int]) -> int:
        """Save contact → master affinities; return how many rows were written.

        Only new rows, rows that moved to another master and rows expiring
        within half the TTL are written, in one upsert.
        """
        if not decisions:
            return 0
        now = self.clock()
        ttl_s = settings.BALANCING["affinity_ttl_s"]
        # route_many just read these contacts' rows: read only the others.
        existing = {c: self._stored[c] for c in decisions if self._stored.get(c)}
        unread = [c for c in decisions if c not in self._stored]
        self._stored = {}
        if unread:
            existing |= {
                contact: (master_id, expires_at)
                for contact, master_id, expires_at in ConversationAffinity.objects.filter(
                    contact__any=unread
                ).values_list("contact", "master_id", "expires_at")
            }
        stale = affinities_to_write(decisions, existing, now=now, ttl_s=ttl_s)
        if not stale:
            return 0
        expires_at = now + timedelta(seconds=ttl_s)
        ConversationAffinity.upsert({c: decisions[c] for c in stale}, expires_at, now)
        return len(stale)
