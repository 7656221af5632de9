"""Routing messages to masters from the database: snapshot, strategy switch, affinity."""

from __future__ import annotations

from collections import Counter
from datetime import datetime, timedelta

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from masters.choices import HealthStatus, MessageStatus, Role, Strategy
from masters.health import Observation
from masters.models import ConversationAffinity, Master, Message, RuntimeSettings
from masters.routing import Router
from tests.conftest import make_master

pytestmark = pytest.mark.django_db

CONTACT = "+971501111111"


class Clock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = timezone.now()

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def router(clock):
    return Router(clock=clock, seed=1)


def use_strategy(strategy: str) -> None:
    RuntimeSettings.objects.update_or_create(pk=1, defaults={"load_balancing_strategy": strategy})


def queue(master: Master | None, status: str = MessageStatus.QUEUED, count: int = 1) -> None:
    Message.objects.bulk_create(
        Message(to=CONTACT, text="hi", body_hash="x", master=master, status=status)
        for _ in range(count)
    )


def affinity(contact: str, master: Master, expires_in_s: float, now: datetime):
    return ConversationAffinity.objects.create(
        contact=contact, master=master, expires_at=now + timedelta(seconds=expires_in_s)
    )


def contacts(n: int) -> list[str]:
    return [f"+97150000{i:04d}" for i in range(n)]


# --- only healthy masters ----------------------------------------------------------


@pytest.mark.parametrize("strategy", list(Strategy))
def test_only_active_healthy_masters_are_ever_routed(router, clock, strategy):
    use_strategy(strategy)
    healthy = make_master("ok", "+971500000001", region="UAE")
    others = [
        make_master(f"s-{status}", f"+97150000010{i}", health_status=status, region="UAE")
        for i, status in enumerate(
            [
                HealthStatus.DEGRADED,
                HealthStatus.FAILED,
                HealthStatus.MAINTENANCE,
                HealthStatus.UNKNOWN,
            ]
        )
    ]
    others.append(make_master("off", "+971500000200", is_active=False, region="UAE"))
    # Even a contact pinned to a degraded master goes to the healthy one.
    affinity(CONTACT, others[0], 3600, clock.now)

    decisions = router.route_many(
        [(i, CONTACT if i % 2 else c, "") for i, c in enumerate(contacts(40))]
    )
    decisions[99] = router.route(CONTACT)

    assert {d.candidate_id for d in decisions.values()} == {healthy.pk}


def test_messages_wait_when_no_master_is_healthy(router):
    make_master("down", health_status=HealthStatus.FAILED)
    make_master("off", "+971500000002", is_active=False)

    assert router.route(CONTACT) is None
    assert router.route_many([(1, CONTACT, ""), (2, "+966501234567", "")]) == {}


def test_a_master_that_fails_leaves_rotation_at_the_next_refresh(router, clock, settings):
    settings.BALANCING = settings.BALANCING | {"snapshot_max_age_ms": 1000}
    first = make_master("a", "+971500000001")
    second = make_master("b", "+971500000002")
    assert router.route(CONTACT).candidate_id == first.pk

    Master.objects.filter(pk=first.pk).update(health_status=HealthStatus.FAILED)
    clock.advance(1.0)

    picks = {router.route(c).candidate_id for c in contacts(10)}
    assert picks == {second.pk}


# --- strategy from RuntimeSettings -------------------------------------------------


def test_an_admin_strategy_switch_takes_effect_at_the_next_refresh(router, clock):
    make_master("a", "+971500000001")
    make_master("b", "+971500000002", role=Role.SECONDARY)
    use_strategy(Strategy.ROUND_ROBIN)
    assert router.route(CONTACT).reason == "round-robin"

    use_strategy(Strategy.PRIORITY)
    assert router.route(CONTACT).reason == "round-robin"  # the snapshot is still fresh

    router.invalidate()
    assert router.route(CONTACT).reason == "priority"

    use_strategy(Strategy.LEAST_LOADED)
    clock.advance(2.0)  # older than snapshot_max_age_ms
    assert router.route(CONTACT).reason == "least-loaded"


def test_round_robin_is_the_default_strategy(router):
    make_master("a", "+971500000001")
    assert RuntimeSettings.current().load_balancing_strategy == Strategy.ROUND_ROBIN
    assert router.route(CONTACT).reason == "round-robin"


def test_round_robin_spreads_a_batch_evenly_over_the_masters(router):
    masters = [make_master(f"m{i}", f"+97150000000{i}") for i in range(3)]
    batch = [(i, contact, "") for i, contact in enumerate(contacts(300))]

    counts = Counter(d.candidate_id for d in router.route_many(batch).values())

    assert counts == {m.pk: 100 for m in masters}


def test_priority_weighted_follows_roles_or_a_masters_own_weight(router):
    use_strategy(Strategy.PRIORITY)
    primary = make_master("p", "+971500000001", role=Role.PRIMARY)
    secondary = make_master("s", "+971500000002", role=Role.SECONDARY)
    tertiary = make_master("t", "+971500000003", role=Role.TERTIARY)
    own = make_master("w", "+971500000004", role=Role.BACKUP, weight=1.5)
    batch = [(i, contact, "") for i, contact in enumerate(contacts(600))]

    counts = Counter(d.candidate_id for d in router.route_many(batch).values())

    # Weights 3 / 1 / 0.5 by role, and 1.5 of its own: a total of 6 per 600.
    assert counts == {primary.pk: 300, secondary.pk: 100, tertiary.pk: 50, own.pk: 150}


def test_geo_routes_by_the_recipients_number_or_the_messages_region(router):
    use_strategy(Strategy.GEO)
    uae = make_master("uae", "+971500000001", region="UAE")
    ksa = make_master("ksa", "+966500000001", region="KSA")
    make_master("uk", "+442079460001", region="UK")

    decisions = router.route_many(
        [
            (1, "+971509999999", ""),
            (2, "+966509999999", ""),
            (3, "+971508888888", "KSA"),  # the sender's region wins over the number
        ]
    )

    assert decisions[1].candidate_id == uae.pk and decisions[1].reason == "geo:AE"
    assert decisions[2].candidate_id == ksa.pk and decisions[2].reason == "geo:SA"
    assert decisions[3].candidate_id == ksa.pk


# --- load from the database --------------------------------------------------------


def test_pending_counts_come_from_the_database(router):
    busy = make_master("busy", "+971500000001")
    idle = make_master("idle", "+971500000002", priority=2)
    queue(busy, MessageStatus.QUEUED, 3)
    queue(busy, MessageStatus.RETRYING)
    queue(busy, MessageStatus.SENDING)
    queue(busy, MessageStatus.SENT, 4)  # done: not load
    queue(busy, MessageStatus.DEAD)
    queue(idle, MessageStatus.QUEUED, 2)
    queue(None, MessageStatus.QUEUED, 7)  # not assigned to anyone yet

    pending = {c.id: c.pending for c in router.snapshot().candidates}

    assert pending == {busy.pk: 5, idle.pk: 2}


def test_least_loaded_fills_the_idle_master_until_the_loads_meet(router):
    use_strategy(Strategy.LEAST_LOADED)
    busy = make_master("busy", "+971500000001")
    idle = make_master("idle", "+971500000002", priority=2)
    queue(busy, MessageStatus.QUEUED, 4)
    batch = [(i, contact, "") for i, contact in enumerate(contacts(6))]

    order = [d.candidate_id for d in router.route_many(batch).values()]

    # Four to the idle master (counted locally between refreshes), then in turn.
    assert order == [idle.pk] * 4 + [busy.pk, idle.pk]


def test_the_snapshot_costs_the_same_few_queries_however_many_masters(clock):
    make_master("a", "+971500000001")
    RuntimeSettings.current()  # created once per deployment; read at every refresh
    with CaptureQueriesContext(connection) as few:
        Router(clock=clock).snapshot()
    for i in range(2, 13):
        master = make_master(f"m{i}", f"+9715000000{i:02d}")
        queue(master, MessageStatus.QUEUED, 2)
    with CaptureQueriesContext(connection) as many:
        snapshot = Router(clock=clock).snapshot()

    assert len(snapshot.candidates) == 12
    assert len(many) == len(few) <= 3


# --- conversation affinity ---------------------------------------------------------


def test_route_many_reads_every_affinity_in_one_query(router, clock, django_assert_num_queries):
    pinned = make_master("pinned", "+971500000001")
    make_master("other", "+971500000002")
    known = contacts(10)
    for contact in known:
        affinity(contact, pinned, 3600, clock.now)
    router.snapshot()  # warm: the snapshot is refreshed once a second, not per batch
    batch = [(i, known[i % 10], "") for i in range(50)]

    with django_assert_num_queries(1):
        decisions = router.route_many(batch)

    assert {(d.candidate_id, d.reason) for d in decisions.values()} == {(pinned.pk, "affinity")}


def test_route_reads_the_contacts_affinity_in_one_query(router, clock, django_assert_num_queries):
    make_master("a", "+971500000001")
    pinned = make_master("b", "+971500000002", priority=2)
    affinity(CONTACT, pinned, 3600, clock.now)
    router.snapshot()

    with django_assert_num_queries(1):
        decision = router.route(CONTACT)

    assert (decision.candidate_id, decision.reason) == (pinned.pk, "affinity")


def test_a_new_contact_keeps_one_master_within_a_batch(router):
    make_master("a", "+971500000001")
    make_master("b", "+971500000002")
    batch = [(i, CONTACT, "") for i in range(5)]

    decisions = router.route_many(batch)

    assert len({d.candidate_id for d in decisions.values()}) == 1
    assert [d.reason for d in decisions.values()] == ["round-robin"] + ["affinity"] * 4


def test_round_robin_evens_out_a_batch_that_kept_conversations_tilted(router, clock):
    # Six conversations live on master a; twelve new contacts arrive in the
    # same batch. The dispatcher sends each master's share through that
    # master's own send slots, so the new contacts go where a batch is short.
    a, b, c = (make_master(n, f"+97150000000{i}") for i, n in enumerate("abc"))
    kept, new = contacts(18)[:6], contacts(18)[6:]
    for contact in kept:
        affinity(contact, a, 3600, clock.now)
    batch = [(i, contact, "") for i, contact in enumerate(kept + new)]

    decisions = router.route_many(batch)

    counts = Counter(d.candidate_id for d in decisions.values())
    assert counts == {a.pk: 6, b.pk: 6, c.pk: 6}
    assert all(decisions[i].candidate_id == a.pk for i in range(6))  # still kept


def test_levelling_counts_kept_conversations_wherever_they_fall_in_the_batch(router, clock):
    a, b, c = (make_master(n, f"+97150000000{i}") for i, n in enumerate("abc"))
    kept, new = contacts(18)[:6], contacts(18)[6:]
    for contact in kept:
        affinity(contact, a, 3600, clock.now)
    batch = [(i, contact, "") for i, contact in enumerate(new + kept)]  # kept ones last

    counts = Counter(d.candidate_id for d in router.route_many(batch).values())

    assert counts == {a.pk: 6, b.pk: 6, c.pk: 6}


def test_levelling_counts_what_the_claim_took_with_its_master_already_set(router):
    # Nine retried messages of the same claim go to master a whatever happens:
    # the nine new contacts go to b and c.
    a, b, c = (make_master(n, f"+97150000000{i}") for i, n in enumerate("abc"))
    batch = [(i, contact, "") for i, contact in enumerate(contacts(9))]

    decisions = router.route_many(batch, assigned={a.pk: 9})

    counts = Counter(d.candidate_id for d in decisions.values())
    assert counts == {b.pk: 5, c.pk: 4} or counts == {b.pk: 4, c.pk: 5}


def test_an_expired_affinity_is_ignored(router, clock):
    first = make_master("a", "+971500000001")
    make_master("b", "+971500000002")
    stale = make_master("c", "+971500000003", priority=9)
    affinity(CONTACT, stale, -1, clock.now)

    decision = router.route(CONTACT)

    assert (decision.candidate_id, decision.reason) == (first.pk, "round-robin")


def test_affinity_yields_when_its_master_holds_too_many_unsent_messages(router, settings):
    settings.BALANCING = settings.BALANCING | {"affinity_max_pending": 3}
    use_strategy(Strategy.LEAST_LOADED)
    pinned = make_master("a", "+971500000001")
    other = make_master("b", "+971500000002", priority=2)
    queue(pinned, MessageStatus.QUEUED, 2)
    affinity(CONTACT, pinned, 3600, timezone.now())

    decisions = router.route_many([(i, CONTACT, "") for i in range(3)])

    # The second message finds three unsent on its master (two queued + one routed).
    assert [(d.candidate_id, d.reason) for d in decisions.values()] == [
        (pinned.pk, "affinity"),
        (other.pk, "least-loaded"),
        (other.pk, "affinity"),
    ]


def test_a_contact_routed_moments_ago_keeps_its_master_until_the_send_is_recorded(
    router, clock, settings
):
    # The affinity row is written when the send is recorded; until then the
    # router's own choice keeps the conversation on one number.
    make_master("a", "+971500000001")
    make_master("b", "+971500000002")
    [first] = router.route_many([(1, CONTACT, "")]).values()

    clock.advance(1)
    [second] = router.route_many([(2, CONTACT, "")]).values()
    assert (second.candidate_id, second.reason) == (first.candidate_id, "affinity")
    assert not ConversationAffinity.objects.exists()

    clock.advance(settings.QUEUE["lease_s"] + 1)  # the claim's lease is over: forgotten
    [third] = router.route_many([(3, CONTACT, "")]).values()
    assert third.reason == "round-robin"


def test_a_released_affinity_is_not_pinned_again_by_the_routers_memory(router, clock):
    # Rebalancing and failover release a master's contacts by deleting their
    # rows; a contact the router had just kept on that master by its row must
    # be routed afresh, not held there by the router's own memory.
    pinned = make_master("a", "+971500000001")
    make_master("b", "+971500000002")
    affinity(CONTACT, pinned, 3600, clock.now)
    [first] = router.route_many([(1, CONTACT, "")]).values()
    assert (first.candidate_id, first.reason) == (pinned.pk, "affinity")

    ConversationAffinity.objects.filter(master=pinned).delete()
    clock.advance(1)
    [second] = router.route_many([(2, CONTACT, "")]).values()

    assert second.reason == "round-robin"


# --- slow start --------------------------------------------------------------------


def observe(master: Master, status: str, at: datetime) -> None:
    master.record_observation(Observation(status, at, "test"))


def test_a_master_back_from_failure_ramps_up_and_a_newly_healthy_one_does_not(router, clock):
    steady = make_master("steady", "+971500000001")
    back = make_master("back", "+971500000002", health_status=HealthStatus.FAILED)
    new = make_master("new", "+971500000003", health_status=HealthStatus.UNKNOWN)
    for _ in range(2):  # the rise threshold
        observe(back, HealthStatus.HEALTHY, clock.now)
    observe(new, HealthStatus.HEALTHY, clock.now)
    back.refresh_from_db()
    assert back.health_status == new.health_status == HealthStatus.HEALTHY

    clock.advance(6)
    recovered = {c.id: c.recovered_at for c in router.snapshot().candidates}
    assert recovered == {steady.pk: None, back.pk: back.health_changed_at, new.pk: None}

    clock.advance(60)  # past the slow-start window
    router.invalidate()
    assert {c.recovered_at for c in router.snapshot().candidates} == {None}


def test_a_recovered_master_gets_a_small_share_at_first(router, clock):
    steady = make_master("steady", "+971500000001")
    back = make_master("back", "+971500000002", health_status=HealthStatus.DEGRADED)
    for _ in range(2):
        observe(back, HealthStatus.HEALTHY, clock.now)
    clock.advance(6)  # 10 % into a 60 s window
    batch = [(i, contact, "") for i, contact in enumerate(contacts(4000))]

    counts = Counter(d.candidate_id for d in router.route_many(batch).values())

    assert counts[back.pk] / counts[steady.pk] == pytest.approx(0.1, abs=0.03)
