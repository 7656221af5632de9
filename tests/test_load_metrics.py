"""Load metrics per master, and rebalancing when one master carries too much."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from masters.choices import EventKind, MessageStatus, Role
from masters.load import record_load_metrics, target_shares
from masters.models import ConversationAffinity, Event, Message
from tests.conftest import make_master

pytestmark = pytest.mark.django_db


def add_messages(master, count: int, status: str, *, sent_ago_s: float = 1, latency_ms=200):
    now = timezone.now()
    for i in range(count):
        message = Message.objects.create(
            to=f"+97150{i:07d}",
            text="x",
            body_hash="-",
            master=master,
            status=status,
            sent_at=now - timedelta(seconds=sent_ago_s) if status == MessageStatus.SENT else None,
        )
        Message.objects.filter(pk=message.pk).update(
            created_at=now - timedelta(seconds=sent_ago_s, milliseconds=latency_ms)
        )


def test_it_records_in_flight_queue_throughput_latency_and_share():
    a = make_master("a", "+971505760056")
    b = make_master("b", "+971505760057")
    add_messages(a, 30, MessageStatus.SENT, latency_ms=200)
    add_messages(b, 10, MessageStatus.SENT, latency_ms=400)
    add_messages(a, 4, MessageStatus.SENDING)
    add_messages(b, 6, MessageStatus.QUEUED)
    add_messages(a, 5, MessageStatus.SENT, sent_ago_s=60)  # before the interval

    metrics = {m.master_id: m for m in record_load_metrics(interval_s=10)}

    assert (metrics[a.pk].sent, metrics[a.pk].in_flight, metrics[a.pk].queue_length) == (30, 4, 0)
    assert (metrics[b.pk].sent, metrics[b.pk].in_flight, metrics[b.pk].queue_length) == (10, 0, 6)
    assert metrics[a.pk].throughput_per_s == 3.0
    assert metrics[a.pk].share_pct == 75.0 and metrics[b.pk].share_pct == 25.0
    assert metrics[a.pk].latency_ms == pytest.approx(200, abs=5)
    assert metrics[b.pk].latency_ms == pytest.approx(400, abs=5)


def test_targets_follow_the_strategy():
    a = make_master("a", "+971505760056", role=Role.PRIMARY)
    b = make_master("b", "+971505760057", role=Role.SECONDARY)
    assert target_shares([a, b], "round-robin") == {a.pk: 50, b.pk: 50}
    assert target_shares([a, b], "priority") == {a.pk: 75, b.pk: 25}
    assert target_shares([a, b], "least-loaded") is None


def test_a_master_far_above_its_share_has_its_affinities_released():
    a = make_master("a", "+971505760056")
    b = make_master("b", "+971505760057")
    ConversationAffinity.objects.create(
        contact="+971501111111", master=a, expires_at=timezone.now() + timedelta(hours=1)
    )
    ConversationAffinity.objects.create(
        contact="+971502222222", master=b, expires_at=timezone.now() + timedelta(hours=1)
    )
    add_messages(a, 90, MessageStatus.SENT)
    add_messages(b, 10, MessageStatus.SENT)

    record_load_metrics(interval_s=10)

    assert list(ConversationAffinity.objects.values_list("master", flat=True)) == [b.pk]
    event = Event.objects.get(kind=EventKind.REBALANCED)
    assert event.master_id == a.pk and event.data["released"] == 1


def test_a_balanced_load_or_too_few_messages_triggers_nothing():
    a = make_master("a", "+971505760056")
    b = make_master("b", "+971505760057")
    add_messages(a, 20, MessageStatus.SENT)
    add_messages(b, 2, MessageStatus.SENT)  # 22 messages: too few to judge
    record_load_metrics(interval_s=10)
    assert not Event.objects.filter(kind=EventKind.REBALANCED).exists()


def test_load_samples_past_the_retention_window_are_pruned(settings):
    from masters.models import LoadMetric
    from masters.retention import prune_load_metrics

    a = make_master("a", "+971505760056")
    now = timezone.now()
    LoadMetric.objects.create(master=a, recorded_at=now - timedelta(days=8))
    LoadMetric.objects.create(master=a, recorded_at=now - timedelta(days=6))
    assert prune_load_metrics(now) == 1
    assert LoadMetric.objects.count() == 1
