"""Dispatchers share each master's send rate: WhatsApp sees the master's limit in all,
however many dispatchers run."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from masters.choices import MessageStatus
from masters.models import DispatcherNode, Message
from masters.models.dispatch import FORGET_AFTER, LIVE_FOR, rate_share
from masters.queue import NewMessage, enqueue_batch
from tests.conftest import make_master, wait_until


@pytest.mark.django_db
def test_check_in_counts_the_dispatchers_heard_from_lately():
    now = timezone.now()
    assert DispatcherNode.check_in("one", now) == 1
    assert DispatcherNode.check_in("two", now) == 2
    assert DispatcherNode.check_in("one", now + timedelta(seconds=1)) == 2

    # "two" went silent (killed): after LIVE_FOR it no longer takes a share.
    later = now + LIVE_FOR + timedelta(seconds=1)
    assert DispatcherNode.check_in("one", later) == 1

    # A clean stop leaves at once.
    DispatcherNode.check_in("two", later)
    DispatcherNode.check_out("two")
    assert DispatcherNode.check_in("one", later) == 1


@pytest.mark.django_db
def test_long_gone_dispatchers_are_forgotten():
    now = timezone.now()
    DispatcherNode.check_in("gone", now)
    DispatcherNode.check_in("here", now + FORGET_AFTER + timedelta(seconds=1))
    assert list(DispatcherNode.objects.values_list("name", flat=True)) == ["here"]


def test_each_dispatcher_takes_an_equal_share():
    assert rate_share(30, 3) == 10
    assert rate_share(30, 1) == 30
    assert rate_share(30, 0) == 30  # never divides by zero


@pytest.fixture
def limited(simulator, transactional_db):
    return make_master(
        "a",
        "+971505760056",
        gateway_url=simulator.url,
        gateway_session="a",
        max_messages_per_second=20,
    )


def rate_of(thread, master) -> float | None:
    lane = thread.dispatcher.lanes.get(master.pk)
    return lane and lane.limiter.rate


def test_two_dispatchers_each_send_at_half_a_masters_rate(limited, start_dispatcher):
    one = start_dispatcher("one")
    two = start_dispatcher("two")

    # Each hears of the other at its next check-in, within a second.
    wait_until(lambda: rate_of(one, limited) == rate_of(two, limited) == 10)

    two.stop()  # a clean stop: the other takes the full rate at its next check-in
    wait_until(lambda: rate_of(one, limited) == 20)


def test_two_dispatchers_together_keep_within_a_masters_rate(
    limited, simulator, start_dispatcher, settings
):
    # Small claims, so both dispatchers hold some of the work.
    settings.QUEUE = settings.QUEUE | {"claim_batch": 4}
    one, two = start_dispatcher("one"), start_dispatcher("two")
    wait_until(lambda: rate_of(one, limited) == rate_of(two, limited) == 10)
    enqueue_batch([NewMessage(f"+9715012{i:05d}", f"m{i}") for i in range(100)])
    wait_until(lambda: Message.objects.filter(status=MessageStatus.SENT).count() == 100, timeout=60)

    deliveries = simulator.state.messages()
    assert len(deliveries) == 100
    # Each token bucket holds one second of its share (10): at most 20 messages
    # at once, then 20 a second in all, so 100 take at least 4 s. Two
    # dispatchers each at the master's full rate took about 1.5 s.
    times = sorted(d.received_at for d in deliveries)
    assert times[-1] - times[0] >= (100 - 20) / 20 * 0.9
