"""Putting messages on the queue: idempotent and all-or-nothing."""

from __future__ import annotations

import pytest

from masters.choices import MessageStatus
from masters.models import Message
from masters.queue import IdempotencyConflict, NewMessage, enqueue, enqueue_batch

pytestmark = pytest.mark.django_db


def test_a_new_message_is_queued_unassigned_with_its_ttl(settings):
    accepted = enqueue(NewMessage("+971505760056", "hi", idempotency_key="a", ttl_seconds=60))
    message = accepted.message
    assert accepted.created and message.status == MessageStatus.QUEUED and message.master is None
    assert round((message.expires_at - message.created_at).total_seconds()) == 60


def test_the_same_key_and_body_returns_the_same_message():
    first = enqueue(NewMessage("+971505760056", "hi", idempotency_key="same"))
    again = enqueue(NewMessage("+971505760056", "hi", idempotency_key="same"))
    assert (again.message.pk, again.created) == (first.message.pk, False)
    assert Message.objects.count() == 1


def test_the_same_key_with_another_body_is_a_conflict_and_writes_nothing():
    enqueue(NewMessage("+971505760056", "hi", idempotency_key="k"))
    with pytest.raises(IdempotencyConflict) as caught:
        enqueue_batch(
            [
                NewMessage("+971505760057", "fine", idempotency_key="other"),
                NewMessage("+971505760056", "changed", idempotency_key="k"),
            ]
        )
    assert caught.value.index == 1
    assert Message.objects.count() == 1


def test_a_batch_is_written_in_order_and_repeats_inside_it_are_one_message():
    results = enqueue_batch(
        [
            NewMessage("+971505760056", "one", idempotency_key="x"),
            NewMessage("+971505760057", "two"),
            NewMessage("+971505760056", "one", idempotency_key="x"),
        ]
    )
    assert [r.created for r in results] == [True, True, False]
    assert results[0].message.pk == results[2].message.pk
    assert Message.objects.count() == 2


def test_leaving_the_ttl_out_is_the_same_request_as_sending_the_default(settings):
    default = settings.QUEUE["default_ttl_s"]
    first = enqueue(NewMessage("+971505760056", "hi", idempotency_key="ttl"))
    again = enqueue(NewMessage("+971505760056", "hi", idempotency_key="ttl", ttl_seconds=default))
    assert again.message.pk == first.message.pk and not again.created


def test_the_any_lookup_matches_like_in_and_an_empty_list_matches_nothing():
    ids = [enqueue(NewMessage(f"+97150123450{i}", f"any {i}")).message.pk for i in range(3)]
    assert sorted(Message.objects.filter(pk__any=ids[:2]).values_list("pk", flat=True)) == ids[:2]
    assert list(Message.objects.filter(to__any=["+971501234502"]).values_list("pk", flat=True)) == [
        ids[2]
    ]
    assert not Message.objects.filter(pk__any=[]).exists()
    assert Message.objects.filter(pk__any=ids).update(text="changed") == 3
