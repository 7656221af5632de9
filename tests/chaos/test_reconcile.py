"""Reconciliation: every accepted message ends delivered, expired or dead, or it counts as lost."""

from __future__ import annotations

import pytest

from monitoring.chaos.reconcile import (
    Delivered,
    FailoverRecord,
    FaultRecord,
    Move,
    Row,
    Sample,
    availability,
    failover_for,
    in_windows,
    last_delivery_after,
    left_rotation,
    not_survived,
    reason_group,
    tally_messages,
    unanswered_requests,
    undetected,
)
from monitoring.chaos.schedule import FaultKind


def tally(rows, deliveries, accepted=None, refused=()):
    accepted = accepted if accepted is not None else {row.key: True for row in rows}
    return tally_messages(accepted, refused, dict.fromkeys(accepted, 1.0), rows, deliveries)


def test_a_delivered_message_counts_once_and_nothing_is_lost():
    result = tally([Row("k1", 1, "sent")], [Delivered("k1", "a", 10.0)])

    assert (result.submitted, result.delivered, result.lost, result.duplicates) == (1, 1, [], [])


def test_the_same_key_delivered_on_two_sessions_is_a_duplicate():
    deliveries = [Delivered("k1", "b", 12.0), Delivered("k1", "a", 10.0)]

    result = tally([Row("k1", 1, "sent")], deliveries)

    assert result.delivered == 1
    [duplicate] = result.duplicates
    assert duplicate.key == "k1"
    assert duplicate.sessions == ("a", "b")
    assert duplicate.at == 12.0


def test_expired_and_dead_messages_are_accounted_for_with_their_reasons():
    rows = [
        Row("k1", 1, "expired", "expired before it could be sent"),
        Row("k2", 2, "dead", "gave up after 10 attempts: HTTP 500"),
        Row("k3", 3, "dead", "gave up after 12 attempts: HTTP 500"),
    ]

    result = tally(rows, [])

    assert (result.expired, result.dead, result.lost) == (1, 2, [])
    assert result.dead_reasons == {"gave up after N attempts: HTTP N": 2}
    assert result.expired_reasons == {"expired before it could be sent": 1}


def test_a_message_still_queued_at_the_end_is_lost():
    result = tally([Row("k1", 1, "retrying", updated_at=50.0)], [])

    [lost] = result.lost
    assert (lost.key, lost.why, lost.at) == ("k1", "still retrying", 50.0)


def test_a_message_marked_sent_that_the_gateway_never_saw_is_lost():
    result = tally([Row("k1", 1, "sent")], [])

    assert [lost.why for lost in result.lost] == ["marked sent, never delivered"]


def test_an_accepted_message_without_a_row_is_lost():
    result = tally([], [], accepted={"k1": True})

    assert [lost.why for lost in result.lost] == ["accepted, but the portal has no row for it"]


def test_a_message_recorded_dead_yet_delivered_is_flagged_not_lost():
    result = tally([Row("k1", 1, "dead", "rejected")], [Delivered("k1", "a", 3.0)])

    assert (result.dead, result.delivered_but_failed, result.lost) == (1, 1, [])


def test_unconfirmed_and_refused_submissions_are_counted_apart():
    accepted = {"k1": True, "k2": False, "k3": False, "k4": False}
    rows = [Row("k1", 1, "sent"), Row("k2", 2, "sent")]
    deliveries = [Delivered("k1", "a", 1.0), Delivered("k2", "a", 2.0), Delivered("x", "a", 3.0)]

    result = tally(rows, deliveries, accepted, refused=["k4"])

    assert result.submitted == 1
    assert result.refused == 1
    assert result.unconfirmed == 2  # k2 and k3: the client gave up
    assert result.unconfirmed_queued == 1  # k2 went in anyway, and was reconciled
    assert result.delivered == 2
    assert result.unknown_deliveries == 1
    assert result.lost == []


@pytest.mark.parametrize(
    ("text", "group"),
    [
        (
            "gave up after 10 attempts: timed out after 10s",
            "gave up after N attempts: timed out after Ns",
        ),
        ("rejected: id 9f8e7d6c5b4a", "rejected: id …"),
        ("", "(no reason recorded)"),
    ],
)
def test_reasons_group_without_their_numbers(text, group):
    assert reason_group(text) == group


def test_availability_needs_a_routable_master_and_a_moving_queue():
    samples = [
        Sample(0, True, routable=1, unsent=5, sent=0),
        Sample(1, True, routable=1, unsent=5, sent=10),  # up: sent moved
        Sample(2, True, routable=0, unsent=5, sent=20),  # down: nothing routable
        Sample(3, True, routable=1, unsent=5, sent=20),  # down: the queue stood still
        Sample(4, False),  # down: the database did not answer
        Sample(5, True, routable=2, unsent=0, sent=20),  # down: follows an unreadable second
        Sample(6, True, routable=2, unsent=0, sent=20),  # up: nothing waits
    ]

    share, count, down = availability(samples)

    assert count == 6
    assert share == pytest.approx(2 / 6)
    assert down == {"no master routable": 1, "queue not draining": 1, "database unreachable": 2}


def fault(kind=FaultKind.SESSION_FAIL, at=100.0, healed=130.0, master=1, **extra):
    return FaultRecord(1, kind, "chaos-a", at, healed, master, **extra)


def test_the_time_to_leave_rotation_comes_from_the_first_move_out_after_the_fault():
    moves = [Move(90.0, 1, left=False), Move(104.5, 1, left=True), Move(104.0, 2, left=True)]

    assert left_rotation(fault(), moves) == ("left", pytest.approx(4.5))


def test_a_master_already_out_of_rotation_or_never_out_says_so():
    assert left_rotation(fault(), [Move(95.0, 1, left=True)])[0] == "already out"
    assert left_rotation(fault(), [Move(140.0, 1, left=True)]) == ("stayed", None)
    assert left_rotation(fault(master=None), []) == ("n/a", None)


def test_the_last_delivery_while_faulted_is_measured_on_its_session_only():
    deliveries = [
        Delivered("a", "chaos-a", 101.0),
        Delivered("b", "chaos-a", 102.5),
        Delivered("c", "chaos-b", 120.0),
        Delivered("d", "chaos-a", 140.0),
    ]

    assert last_delivery_after(fault(), "chaos-a", deliveries) == pytest.approx(2.5)
    assert last_delivery_after(fault(), "chaos-c", deliveries) is None


def test_a_failover_of_the_faulted_master_is_found_in_its_window():
    failovers = [FailoverRecord(2, "completed", 110.0), FailoverRecord(1, "failed", 115.0)]

    assert failover_for(fault(), failovers) == "failed"
    assert failover_for(fault(master=3), failovers) == "—"


def test_alerts_count_between_one_fault_and_the_next():
    faults = [fault(at=10.0), fault(at=20.0)]

    assert in_windows([5.0, 11.0, 12.0, 21.0, 40.0], faults, end=30.0) == [2, 1]


def test_a_failover_request_with_no_outcome_is_counted():
    requests = [(1, 100.0), (2, 200.0)]
    outcomes = [(1, 101.0), (2, 300.0)]

    assert unanswered_requests(requests, outcomes, wait_s=60) == [(2, 200.0)]


def test_problems_are_blamed_on_the_faults_under_way():
    tally_ = tally([Row("k1", 1, "queued", updated_at=125.0)], [])
    faults = [
        fault(),
        fault(kind=FaultKind.KILL_WEB, at=105.0, healed=None, master=None),
        fault(kind=FaultKind.KILL_WEB, at=500.0, healed=None, master=None),
    ]

    gaps = not_survived(
        faults, tally_, crash_times=[505.0], undetected=[], dropped_failovers=[(1, 110.0)]
    )

    # The lost message came during both faults; the failover is the failed master's.
    assert gaps == {
        FaultKind.SESSION_FAIL: ["failover asked for, never ran (1)", "message lost (1)"],
        FaultKind.KILL_WEB: ["message lost (1)", "process crashed (1)"],
    }


def test_a_failed_session_that_stayed_in_rotation_is_undetected():
    slow = fault(kind=FaultKind.SESSION_SLOW)
    short = fault(healed=105.0)

    assert undetected([fault(), slow, short], moves=[]) == [fault()]
    assert undetected([fault()], moves=[Move(103.0, 1, left=True)]) == []
