"""The dispatcher's flow control: how much it claims while sends and records are under way."""

from __future__ import annotations

from masters.dispatcher import Dispatcher


def test_results_waiting_to_be_recorded_do_not_starve_the_send_lanes():
    dispatcher = Dispatcher("flow")
    dispatcher.max_unsent = 10

    dispatcher.track(+10, unsent=+10)  # a claim of ten, all waiting to be sent
    assert dispatcher.room() == 0 and not dispatcher.capacity.is_set()

    # All ten sent, their results not recorded yet: claim more, so that every
    # master has messages waiting for its next free slot.
    dispatcher.track(0, unsent=-10)
    assert dispatcher.room() == 10 and dispatcher.capacity.is_set()


def test_a_slow_database_still_slows_the_claims():
    dispatcher = Dispatcher("flow")
    dispatcher.max_unsent = 10
    for _ in range(2):
        dispatcher.track(+10, unsent=+10)
        dispatcher.track(0, unsent=-10)

    # Twenty results wait to be recorded: as many as the allowance lets pile up.
    assert (dispatcher.unsent, dispatcher.in_flight) == (0, 20)
    assert dispatcher.room() == 0 and not dispatcher.capacity.is_set()

    dispatcher.track(-20)  # recorded
    assert dispatcher.room() == 10 and dispatcher.capacity.is_set()
