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


@pytest.mark.django_db(transaction=True)
def test_requests_racing_with_one_key_queue_one_message():
    # The key table's primary key is the guard: whichever insert comes second
    # fails, its batch rolls back, and the retry returns the first message.
    import threading

    from django.db import connection, connections

    if connection.vendor != "postgresql":
        pytest.skip("SQLite serialises writers: no two requests can race")
    rounds, answers = 15, []
    for round_ in range(rounds):
        barrier = threading.Barrier(2)

        def send(round_=round_, barrier=barrier):
            barrier.wait()
            try:
                accepted = enqueue(
                    NewMessage("+971505760056", "once", idempotency_key=f"r{round_}")
                )
                answers.append((round_, accepted.message.pk))
            finally:
                connections.close_all()

        threads = [threading.Thread(target=send) for _ in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert Message.objects.count() == rounds
    for round_ in range(rounds):
        ids = {pk for r, pk in answers if r == round_}
        assert len(ids) == 1, f"round {round_}: both requests got the same message"
    assert len(answers) == 2 * rounds


def test_the_key_is_kept_beside_the_message():
    from masters.models import IdempotencyKey

    accepted = enqueue(NewMessage("+971505760056", "hi", idempotency_key="kept"))
    assert IdempotencyKey.objects.get(key="kept").message_id == accepted.message.pk
    assert accepted.message.idempotency_key == "kept"
