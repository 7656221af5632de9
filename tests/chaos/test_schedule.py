"""The fault schedule: the same seed gives the same faults, and the schedule keeps its promises."""

from __future__ import annotations

import itertools
from collections import Counter

import pytest

from monitoring.chaos.schedule import (
    SERVER_RESTARTS,
    FaultKind,
    Shape,
    build_schedule,
    format_schedule,
    timeline,
)

SESSIONS = ("chaos-a", "chaos-b", "chaos-c")
SHORT = Shape(120, 12, SESSIONS, dispatchers=3, webs=2, hold_s=(8, 30))
FULL = Shape(1860, 200, SESSIONS, dispatchers=3, webs=2, hold_s=(10, 60))


def test_the_same_seed_gives_the_same_schedule():
    assert build_schedule(42, SHORT) == build_schedule(42, SHORT)
    assert format_schedule(42, build_schedule(42, FULL)) == format_schedule(
        42, build_schedule(42, FULL)
    )


def test_another_seed_gives_another_schedule():
    assert build_schedule(1, SHORT) != build_schedule(2, SHORT)


@pytest.mark.parametrize("seed", range(20))
def test_a_short_run_tries_every_kind_of_fault(seed):
    kinds = {fault.kind for fault in build_schedule(seed, SHORT)}

    assert kinds == set(FaultKind)


def test_faults_come_in_order_inside_the_run_with_the_asked_count():
    faults = build_schedule(7, FULL)

    assert len(faults) == 200
    assert [f.index for f in faults] == list(range(1, 201))
    assert all(0 < f.at_s < FULL.duration_s for f in faults)
    assert [f.at_s for f in faults] == sorted(f.at_s for f in faults)


@pytest.mark.parametrize("seed", range(20))
def test_every_session_heals_before_the_load_stops(seed):
    for fault in build_schedule(seed, FULL):
        if fault.is_session:
            assert fault.target in SESSIONS
            assert fault.hold_s >= FULL.hold_s[0]
            assert fault.heal_s <= FULL.duration_s - FULL.settle_s


@pytest.mark.parametrize("seed", range(20))
def test_one_session_always_works(seed):
    faults = [f for f in build_schedule(seed, FULL) if f.is_session]
    for fault in faults:
        faulted = {other.target for other in faults if other.at_s <= fault.at_s < other.heal_s}
        assert len(faulted) <= len(SESSIONS) - 1


@pytest.mark.parametrize("seed", range(20))
def test_server_restarts_keep_their_distance(seed):
    restarts = [f.at_s for f in build_schedule(seed, FULL) if f.kind in SERVER_RESTARTS]

    assert all(b - a >= FULL.server_gap_s for a, b in itertools.pairwise(restarts))


def test_process_kills_name_a_slot_that_exists():
    targets = Counter(
        f.target
        for f in build_schedule(3, FULL)
        if f.kind in (FaultKind.KILL_DISPATCHER, FaultKind.KILL_WEB)
    )

    assert set(targets) <= {"dispatcher-1", "dispatcher-2", "dispatcher-3", "web-1", "web-2"}


def test_slow_and_flapping_sessions_carry_their_timing():
    faults = build_schedule(5, FULL)

    assert all(f.param >= 500 for f in faults if f.kind is FaultKind.SESSION_SLOW)
    assert all(1000 <= f.param <= 4000 for f in faults if f.kind is FaultKind.SESSION_FLAP)
    assert any(f.kind is FaultKind.SESSION_SLOW for f in faults)


def test_the_timeline_heals_each_session_fault_after_injecting_it():
    faults = build_schedule(11, SHORT)
    steps = timeline(faults)
    sessions = [f for f in faults if f.is_session]

    assert len(steps) == len(faults) + len(sessions)
    for fault in sessions:
        inject = next(i for i, s in enumerate(steps) if s.fault == fault and not s.heal)
        heal = next(i for i, s in enumerate(steps) if s.fault == fault and s.heal)
        assert inject < heal


def test_no_room_gives_no_faults():
    assert build_schedule(1, Shape(5, 3, SESSIONS, 3, 2, (8, 30))) == []
    assert build_schedule(1, Shape(120, 0, SESSIONS, 3, 2, (8, 30))) == []


def test_the_printed_schedule_names_the_seed_and_every_fault():
    faults = build_schedule(9, SHORT)
    printed = format_schedule(9, faults)

    assert printed.startswith("Fault schedule (seed 9, 12 faults):")
    assert len(printed.splitlines()) == 13
    assert all(str(f.kind) in printed for f in faults)


def test_skipped_kinds_are_never_drawn_and_the_rest_still_come():
    allowed = frozenset(FaultKind) - SERVER_RESTARTS
    shape = Shape(120, 12, SESSIONS, 3, 2, (8, 30), kinds=allowed)

    for seed in range(20):
        assert {fault.kind for fault in build_schedule(seed, shape)} == allowed


def test_a_schedule_of_session_faults_only_skips_the_slots_where_none_fits():
    sessions_only = frozenset({FaultKind.SESSION_FAIL})
    shape = Shape(120, 12, SESSIONS, 3, 2, (20, 30), kinds=sessions_only)

    faults = build_schedule(1, shape)

    assert faults
    assert {fault.kind for fault in faults} == sessions_only
    assert [fault.index for fault in faults] == list(range(1, len(faults) + 1))
