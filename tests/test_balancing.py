"""Load balancing strategies as pure functions: no database."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime, timedelta

import pytest

from masters.balancing import (
    BalancerState,
    Candidate,
    Snapshot,
    affinities_to_write,
    pick,
    recipient_country,
    region_code,
)
from masters.choices import Strategy

NOW = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)
LIMITS = {"affinity_max_pending": 10, "slow_start_s": 60, "slow_start_min_share": 0.1}


def snapshot(*candidates: Candidate) -> Snapshot:
    return Snapshot(candidates, NOW)


def master(id: int, priority: int = 1, weight: float = 1.0, **fields) -> Candidate:
    return Candidate(id=id, priority=priority, weight=weight, **fields)


def run(snap: Snapshot, strategy: str, picks: int, state=None, **options) -> Counter:
    """Pick ``picks`` times, adding each pick to its master's load as the router does."""
    state = state or BalancerState(seed=7)
    options = {"now": NOW, **LIMITS, **options}
    counts: Counter = Counter()
    for _ in range(picks):
        decision = pick(snap, strategy, state, **options)
        snap.add_pending(decision.candidate_id)
        counts[decision.candidate_id] += 1
    return counts


def shares_relative_to(counts: Counter, candidate_id: int, peer_id: int) -> float:
    return counts[candidate_id] / counts[peer_id]


# --- round robin -----------------------------------------------------------------


def test_round_robin_gives_three_masters_exactly_a_third_each():
    counts = run(snapshot(master(1), master(2), master(3)), Strategy.ROUND_ROBIN, 3000)
    assert counts == {1: 1000, 2: 1000, 3: 1000}


def test_round_robin_stays_within_one_of_even_at_any_point():
    snap = snapshot(master(1), master(2), master(3))
    state = BalancerState()
    counts: Counter = Counter()
    for _ in range(1001):
        counts[pick(snap, Strategy.ROUND_ROBIN, state, now=NOW, **LIMITS).candidate_id] += 1
        assert max(counts.values()) - min(counts[i] for i in (1, 2, 3)) <= 1


def test_round_robin_cycles_in_priority_order():
    snap = snapshot(master(3, priority=2), master(1, priority=1), master(2, priority=1))
    state = BalancerState()
    order = [pick(snap, Strategy.ROUND_ROBIN, state, now=NOW, **LIMITS) for _ in range(6)]
    assert [d.candidate_id for d in order] == [1, 2, 3, 1, 2, 3]
    assert {d.reason for d in order} == {"round-robin"}


def test_round_robin_levels_a_batch_that_kept_conversations_made_uneven():
    # Kept conversations gave master 1 two messages of the batch and master 2
    # one: the rotation (next up: master 1) skips them until master 3 catches up.
    snap = snapshot(master(1), master(2), master(3))
    state, level = BalancerState(), [2, 1, 0]
    picks = []
    for _ in range(6):
        chosen = pick(snap, Strategy.ROUND_ROBIN, state, now=NOW, level=level, **LIMITS)
        level[snap.positions[chosen.candidate_id]] += 1
        picks.append(chosen.candidate_id)
    # Master 3 twice and master 2 once to level, then the plain rotation.
    assert picks == [3, 2, 3, 1, 2, 3]
    assert level == [3, 3, 3]


def test_round_robin_levelling_changes_nothing_in_a_level_batch():
    snap = snapshot(master(1), master(2), master(3))
    plain, levelled = BalancerState(), BalancerState()
    level = [0, 0, 0]
    for _ in range(10):
        expected = pick(snap, Strategy.ROUND_ROBIN, plain, now=NOW, **LIMITS).candidate_id
        chosen = pick(snap, Strategy.ROUND_ROBIN, levelled, now=NOW, level=level, **LIMITS)
        level[snap.positions[chosen.candidate_id]] += 1
        assert chosen.candidate_id == expected


def test_slow_start_is_not_undone_by_levelling():
    # Master 3 ramps up (a tenth of a share at first) and has had nothing from
    # this batch: levelling would hand it every pick. Slow start wins.
    snap = snapshot(master(1), master(2), master(3, recovered_at=NOW))
    state, level = BalancerState(seed=3), [50, 50, 0]
    counts: Counter = Counter()
    for _ in range(300):
        chosen = pick(snap, Strategy.ROUND_ROBIN, state, now=NOW, level=level, **LIMITS)
        counts[chosen.candidate_id] += 1
    assert counts[3] < 60


# --- priority-weighted -----------------------------------------------------------


def test_priority_weighted_shares_follow_the_plans_weights_3_1_and_half():
    snap = snapshot(master(1, weight=3.0), master(2, weight=1.0), master(3, weight=0.5))
    counts = run(snap, Strategy.PRIORITY, 9000)
    total = sum(counts.values())
    for candidate_id, weight in ((1, 3.0), (2, 1.0), (3, 0.5)):
        assert counts[candidate_id] / total == pytest.approx(weight / 4.5, abs=0.01)


def test_priority_weighted_follows_each_masters_own_weight():
    snap = snapshot(master(1, weight=10.0), master(2, weight=30.0))
    counts = run(snap, Strategy.PRIORITY, 4000)
    assert counts == {1: 1000, 2: 3000}


def test_priority_weighted_interleaves_instead_of_sending_bursts():
    # nginx's smooth weighted round robin: weights 5/1/1 give a a b a c a a.
    snap = snapshot(master(1, weight=5.0), master(2, weight=1.0), master(3, weight=1.0))
    state = BalancerState()
    picks = [pick(snap, Strategy.PRIORITY, state, now=NOW, **LIMITS) for _ in range(7)]
    assert [d.candidate_id for d in picks] == [1, 1, 2, 1, 3, 1, 1]
    assert picks[0].reason == "priority"


def test_priority_weighted_never_picks_a_master_weighted_zero():
    snap = snapshot(master(1, weight=0.0), master(2, weight=1.0), master(3, weight=2.0))
    counts = run(snap, Strategy.PRIORITY, 300)
    assert counts == {2: 100, 3: 200}


def test_priority_weighted_shares_evenly_when_every_weight_is_zero():
    snap = snapshot(master(1, weight=0.0), master(2, weight=0.0))
    assert run(snap, Strategy.PRIORITY, 10) == {1: 5, 2: 5}


def test_priority_weighted_keeps_proportions_across_snapshot_refreshes():
    state = BalancerState()
    counts: Counter = Counter()
    for _ in range(100):  # a fresh snapshot every 9 picks, as the router refreshes
        snap = snapshot(master(1, weight=3.0), master(2, weight=1.0), master(3, weight=0.5))
        counts += run(snap, Strategy.PRIORITY, 9, state=state)
    assert counts == {1: 600, 2: 200, 3: 100}


# --- least loaded ------------------------------------------------------------------


def test_least_loaded_picks_the_master_with_fewest_unsent_messages():
    snap = snapshot(master(1, pending=5), master(2, pending=2), master(3, pending=9))
    decision = pick(snap, Strategy.LEAST_LOADED, BalancerState(), now=NOW, **LIMITS)
    assert (decision.candidate_id, decision.reason) == (2, "least-loaded")


def test_least_loaded_breaks_ties_by_priority():
    snap = snapshot(master(1, priority=3), master(2, priority=1), master(3, priority=2))
    decision = pick(snap, Strategy.LEAST_LOADED, BalancerState(), now=NOW, **LIMITS)
    assert decision.candidate_id == 2


def test_least_loaded_spreads_successive_picks_as_load_is_counted():
    snap = snapshot(master(1, pending=10), master(2, pending=0), master(3, pending=4))
    counts = run(snap, Strategy.LEAST_LOADED, 16)
    # 2 catches up with 3 (4 picks), then both with 1 (12 more): all end at 10 + 0.
    assert counts == {2: 10, 3: 6}
    assert {c.pending for c in snap.candidates} == {10}


# --- geo ---------------------------------------------------------------------------


GEO = snapshot(master(1, region="UAE"), master(2, region="KSA"), master(3, region="AE"), master(4))


@pytest.mark.parametrize(
    ("number", "country", "expected"),
    [("+971505760056", "AE", {1, 3}), ("+966501234567", "SA", {2})],
)
def test_geo_sends_to_masters_in_the_recipients_country(number, country, expected):
    state = BalancerState()
    found = recipient_country(number)
    decisions = [
        pick(GEO, Strategy.GEO, state, country=found, now=NOW, **LIMITS) for _ in range(10)
    ]
    assert found == country
    assert {d.candidate_id for d in decisions} == expected
    assert {d.reason for d in decisions} == {f"geo:{country}"}


def test_geo_takes_turns_among_masters_of_the_same_country():
    counts = Counter(
        pick(GEO, Strategy.GEO, state, country="AE", now=NOW, **LIMITS).candidate_id
        for state in [BalancerState()]
        for _ in range(100)
    )
    assert counts == {1: 50, 3: 50}


def test_geo_falls_back_to_round_robin_over_all_when_no_region_matches():
    state = BalancerState()
    decisions = [pick(GEO, Strategy.GEO, state, country="GB", now=NOW, **LIMITS) for _ in range(8)]
    assert Counter(d.candidate_id for d in decisions) == {1: 2, 2: 2, 3: 2, 4: 2}
    assert {d.reason for d in decisions} == {"geo-fallback"}


def test_geo_falls_back_when_the_recipients_country_is_unknown():
    decision = pick(GEO, Strategy.GEO, BalancerState(), country=None, now=NOW, **LIMITS)
    assert decision.reason == "geo-fallback"


@pytest.mark.parametrize(
    ("region", "code"),
    [
        ("UAE", "AE"),
        ("ksa", "SA"),
        ("UK", "GB"),
        ("USA", "US"),
        ("Saudi  Arabia", "SA"),
        ("ae", "AE"),
        (" EG ", "EG"),
        ("Dubai", None),
        ("", None),
    ],
)
def test_a_masters_region_maps_to_a_country_code_through_aliases(region, code):
    assert region_code(region) == code


@pytest.mark.parametrize(
    ("number", "country"),
    [
        ("+971505760056", "AE"),
        ("+966501234567", "SA"),
        ("+442079460000", "GB"),
        ("+447911123456", "GG"),  # Guernsey shares +44: the full number decides,
        ("+14155552671", "US"),
        ("+80012345678", None),  # international freephone: no country
        ("not a number", None),
    ],
)
def test_the_recipients_country_comes_from_its_number(number, country):
    assert recipient_country(number) == country


# --- conversation affinity ---------------------------------------------------------


@pytest.mark.parametrize("strategy", list(Strategy))
def test_a_contact_sticks_to_its_master_whatever_the_strategy(strategy):
    snap = snapshot(master(1), master(2), master(3, pending=4))
    state = BalancerState()
    decisions = [
        pick(snap, strategy, state, affinity_id=3, country="AE", now=NOW, **LIMITS)
        for _ in range(20)
    ]
    assert {(d.candidate_id, d.reason) for d in decisions} == {(3, "affinity")}


def test_affinity_yields_when_its_master_has_left_rotation():
    snap = snapshot(master(1), master(2))  # master 3 is unhealthy: not in the snapshot
    decision = pick(snap, Strategy.ROUND_ROBIN, BalancerState(), affinity_id=3, now=NOW, **LIMITS)
    assert (decision.candidate_id, decision.reason) == (1, "round-robin")


def picks_for_contact(snap: Snapshot, strategy: str, affinity_id: int, count: int) -> list:
    """Route ``count`` messages of one contact, counting each pick as the router does."""
    state = BalancerState()
    decisions = []
    for _ in range(count):
        decision = pick(snap, strategy, state, affinity_id=affinity_id, now=NOW, **LIMITS)
        snap.add_pending(decision.candidate_id)
        decisions.append((decision.candidate_id, decision.reason))
    return decisions


def test_affinity_yields_once_its_master_reaches_the_pending_bound():
    snap = snapshot(master(1), master(2, pending=LIMITS["affinity_max_pending"] - 2))
    decisions = picks_for_contact(snap, Strategy.LEAST_LOADED, affinity_id=2, count=4)
    assert decisions == [
        (2, "affinity"),
        (2, "affinity"),
        (1, "least-loaded"),
        (1, "least-loaded"),
    ]


def test_under_a_backlog_affinity_holds_until_its_master_is_a_quarter_above_the_mean():
    # Every master far past the absolute bound (10): a backlog, not one busy contact.
    snap = snapshot(master(1, pending=500), master(2, pending=500), master(3, pending=500))
    decisions = picks_for_contact(snap, Strategy.ROUND_ROBIN, affinity_id=2, count=300)
    # Master 2 keeps the contact while 500 + k <= 1.25 * (1500 + k) / 3: k = 0..214.
    assert decisions[:215] == [(2, "affinity")] * 215
    assert decisions[215] == (1, "round-robin")
    # From then on it takes the contact back only while the others catch up.
    assert snap.get(2).pending <= 1.25 * snap.total_pending / 3 + 1


# --- slow start --------------------------------------------------------------------


def ramping_snapshot(recovered_s_ago: float) -> Snapshot:
    """Three masters; master 3, first by priority, became healthy ``recovered_s_ago`` s ago."""
    recovered_at = NOW - timedelta(seconds=recovered_s_ago)
    return snapshot(master(1), master(2), master(3, priority=0, recovered_at=recovered_at))


@pytest.mark.parametrize("strategy", list(Strategy))
@pytest.mark.parametrize(("recovered_s_ago", "share"), [(1, 0.1), (6, 0.1), (30, 0.5)])
def test_a_recovered_master_ramps_up_its_share_over_the_window(strategy, recovered_s_ago, share):
    counts = Counter()
    state = BalancerState(seed=11)
    snap = ramping_snapshot(recovered_s_ago)
    for _ in range(20_000):
        decision = pick(snap, strategy, state, country="ZZ", now=NOW, **LIMITS)
        counts[decision.candidate_id] += 1
    # Its share relative to a master at full share. Least-loaded is measured
    # without counting load, so its first choice is the ramping master every time.
    if strategy == Strategy.LEAST_LOADED:
        assert counts[3] / sum(counts.values()) == pytest.approx(share, abs=0.02)
    else:
        assert shares_relative_to(counts, 3, 1) == pytest.approx(share, abs=0.03)


@pytest.mark.parametrize("strategy", list(Strategy))
def test_a_master_recovered_a_full_window_ago_takes_a_full_share(strategy):
    counts = run(ramping_snapshot(60), strategy, 3000, country="ZZ")
    assert counts == {1: 1000, 2: 1000, 3: 1000}


def test_slow_start_is_off_when_its_window_is_zero():
    counts = run(ramping_snapshot(1), Strategy.ROUND_ROBIN, 300, slow_start_s=0)
    assert counts == {1: 100, 2: 100, 3: 100}


@pytest.mark.parametrize("strategy", list(Strategy))
def test_a_ramping_master_alone_in_rotation_still_gets_every_message(strategy):
    snap = snapshot(master(1, region="UAE", recovered_at=NOW - timedelta(seconds=1)))
    state = BalancerState(seed=3)
    decisions = {
        pick(snap, strategy, state, country="AE", now=NOW, **LIMITS).candidate_id for _ in range(50)
    }
    assert decisions == {1}


def test_a_ramping_master_alone_in_its_region_passes_most_local_messages_to_others():
    snap = snapshot(
        master(1, region="KSA"),
        master(2, region="UAE", recovered_at=NOW - timedelta(seconds=6)),
    )
    state = BalancerState(seed=5)
    decisions = Counter(
        pick(snap, Strategy.GEO, state, country="AE", now=NOW, **LIMITS) for _ in range(5000)
    )
    local = sum(n for d, n in decisions.items() if d.candidate_id == 2)
    assert local / 5000 == pytest.approx(0.1, abs=0.02)
    assert {d.reason for d in decisions if d.candidate_id == 1} == {"geo-fallback"}


# --- no master ---------------------------------------------------------------------


@pytest.mark.parametrize("strategy", list(Strategy))
def test_no_routable_master_means_no_decision(strategy):
    empty = snapshot()
    assert pick(empty, strategy, BalancerState(), affinity_id=1, now=NOW, **LIMITS) is None


def test_an_unknown_strategy_is_refused():
    with pytest.raises(ValueError, match="unknown load balancing strategy"):
        pick(snapshot(master(1)), "random", BalancerState(), now=NOW, **LIMITS)


# --- which affinity rows to write --------------------------------------------------


def test_only_new_moved_or_soon_expiring_affinities_are_written():
    ttl_s = 3600
    fresh = NOW + timedelta(seconds=3000)
    soon = NOW + timedelta(seconds=1000)  # under half the TTL away
    existing = {
        "+971500000001": (1, fresh),
        "+971500000002": (1, fresh),
        "+971500000003": (1, soon),
        "+971500000004": (1, NOW - timedelta(seconds=1)),  # expired
    }
    wanted = {
        "+971500000001": 1,  # unchanged: skipped
        "+971500000002": 2,  # moved
        "+971500000003": 1,  # expiring soon
        "+971500000004": 1,
        "+971500000005": 2,  # new
    }
    stale = affinities_to_write(wanted, existing, now=NOW, ttl_s=ttl_s)
    assert sorted(stale) == [
        "+971500000002",
        "+971500000003",
        "+971500000004",
        "+971500000005",
    ]
