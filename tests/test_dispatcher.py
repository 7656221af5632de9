"""The dispatcher against the gateway simulator over real HTTP: every message ends
sent, expired or dead, with its reason."""

from __future__ import annotations

from collections import Counter
from datetime import timedelta
from itertools import pairwise

import pytest
from django.utils import timezone

from masters.choices import HealthStatus, MessageStatus
from masters.models import Master, Message
from masters.queue import NewMessage, enqueue, enqueue_batch
from tests.conftest import make_master, sim_control, wait_until

H = HealthStatus.HEALTHY


@pytest.fixture
def masters(simulator, transactional_db):
    return {
        session: make_master(
            session,
            phone,
            gateway_url=simulator.url,
            gateway_session=session,
            max_messages_per_second=1000,
        )
        for session, phone in (
            ("a", "+971505760056"),
            ("b", "+971505760057"),
            ("c", "+966501234567"),
        )
    }


def set_health(master: Master, status: str) -> None:
    Master.objects.filter(pk=master.pk).update(health_status=status)


def status_of(message: Message) -> str:
    return Message.objects.values_list("status", flat=True).get(pk=message.pk)


def deliveries(simulator) -> Counter:
    """How many times each idempotency key reached WhatsApp (the simulator)."""
    return Counter(d.idempotency_key for d in simulator.state.messages())


def test_it_sends_queued_messages_and_records_the_gateway_id(masters, simulator, start_dispatcher):
    accepted = enqueue(NewMessage("+971501234567", "hello", idempotency_key="k-1"))
    start_dispatcher()

    wait_until(lambda: status_of(accepted.message) == MessageStatus.SENT)
    message = Message.objects.get(pk=accepted.message.pk)
    delivered = simulator.state.messages()
    assert [(d.chat_id, d.text, d.id) for d in delivered] == [
        ("971501234567@c.us", "hello", message.gateway_message_id)
    ]
    assert message.master_id in {m.pk for m in masters.values()}
    assert message.attempts == 1 and message.sent_at is not None and message.last_error == ""


def test_round_robin_spreads_messages_over_the_healthy_masters(
    masters, simulator, start_dispatcher
):
    enqueue_batch([NewMessage(f"+9715012345{i:02d}", f"m{i}") for i in range(60)])
    start_dispatcher()
    wait_until(lambda: Message.objects.filter(status=MessageStatus.SENT).count() == 60)
    per_session = Counter(d.session for d in simulator.state.messages())
    assert sorted(per_session) == ["a", "b", "c"]
    assert max(per_session.values()) - min(per_session.values()) <= 2


def test_under_a_backlog_every_contact_keeps_its_master(
    masters, simulator, start_dispatcher, settings
):
    # Every master holds more unsent messages than the absolute bound while the
    # queue drains; load stays even, so no master is overloaded against the others.
    settings.BALANCING = settings.BALANCING | {"affinity_max_pending": 5}
    # 61 contacts in turn: with a multiple of the 3 masters, round robin alone
    # would give each contact the same master every time.
    contacts = [f"+97150123{i:04d}" for i in range(61)]
    enqueue_batch([NewMessage(contacts[i % 61], f"m{i}") for i in range(900)])
    start_dispatcher()
    wait_until(lambda: Message.objects.filter(status=MessageStatus.SENT).count() == 900, timeout=60)

    masters_by_contact: dict[str, list[int]] = {}
    for to, master_id in Message.objects.order_by("pk").values_list("to", "master_id"):
        masters_by_contact.setdefault(to, []).append(master_id)
    repeats = kept = 0
    for chosen in masters_by_contact.values():
        repeats += len(chosen) - 1
        kept += sum(1 for before, after in pairwise(chosen) if before == after)
    # Round robin alone would keep about a third.
    assert kept / repeats >= 0.9
    per_session = Counter(d.session for d in simulator.state.messages())
    assert max(per_session.values()) <= 1.25 * 900 / 3


def test_no_message_goes_to_a_degraded_failed_or_maintenance_master(
    masters, simulator, start_dispatcher
):
    set_health(masters["b"], "failed")
    set_health(masters["c"], "maintenance")
    enqueue_batch([NewMessage(f"+9715012346{i:02d}", f"m{i}") for i in range(20)])
    start_dispatcher()
    wait_until(lambda: Message.objects.filter(status=MessageStatus.SENT).count() == 20)
    assert {d.session for d in simulator.state.messages()} == {"a"}


def test_a_message_the_gateway_cannot_take_goes_dead_with_the_reason(masters, start_dispatcher):
    # Written past the API's validation, as an old client or a bug might leave it.
    message = Message.objects.create(
        to="+12", text="x", body_hash="-", next_attempt_at=timezone.now()
    )
    start_dispatcher()
    wait_until(lambda: status_of(message) == MessageStatus.DEAD)
    message.refresh_from_db()
    assert message.last_error.startswith("rejected: invalid recipient number")
    assert message.attempts == 1


def test_a_failed_send_is_retried_with_backoff_and_delivered_once(
    masters, simulator, start_dispatcher
):
    for session in "bc":
        set_health(masters[session], "failed")
    sim_control(simulator, "a", "break_sends")
    accepted = enqueue(NewMessage("+971501234568", "retry me", idempotency_key="retry-1"))
    start_dispatcher()

    wait_until(lambda: Message.objects.get(pk=accepted.message.pk).attempts >= 2)
    message = Message.objects.get(pk=accepted.message.pk)
    assert message.status in {MessageStatus.RETRYING, MessageStatus.SENDING}
    assert "HTTP 500" in message.last_error
    sim_control(simulator, "a", "recover")
    wait_until(lambda: status_of(message) == MessageStatus.SENT)
    assert deliveries(simulator) == Counter({"retry-1": 1})


def test_a_message_that_keeps_failing_goes_dead_after_the_last_attempt(
    masters, simulator, start_dispatcher, settings
):
    settings.QUEUE = settings.QUEUE | {"max_attempts": 3}
    for session in "abc":
        sim_control(simulator, session, "break_sends")
    accepted = enqueue(NewMessage("+971501234569", "doomed"))
    start_dispatcher()
    wait_until(lambda: status_of(accepted.message) == MessageStatus.DEAD)
    message = Message.objects.get(pk=accepted.message.pk)
    assert message.attempts == 3
    assert message.last_error.startswith("gave up after 3 attempts")


def test_a_message_past_its_ttl_expires_instead_of_going_out_late(
    masters, simulator, start_dispatcher
):
    for master in masters.values():
        set_health(master, "failed")
    accepted = enqueue(NewMessage("+971501234570", "too late", ttl_seconds=1))
    start_dispatcher()
    wait_until(lambda: status_of(accepted.message) == MessageStatus.EXPIRED, timeout=10)
    for master in masters.values():
        set_health(master, H)
    message = Message.objects.get(pk=accepted.message.pk)
    assert message.last_error == "expired before it could be sent"
    assert simulator.state.messages() == []


def test_when_no_master_is_routable_messages_wait_and_go_out_when_one_returns(
    masters, simulator, start_dispatcher
):
    for master in masters.values():
        set_health(master, "failed")
    accepted = enqueue_batch([NewMessage(f"+9715012347{i:02d}", f"w{i}") for i in range(5)])
    start_dispatcher()
    wait_until(
        lambda: Message.objects.filter(last_error="waiting: no master is routable").count() == 5,
        what="messages to wait",
    )
    assert simulator.state.messages() == []
    assert set(Message.objects.values_list("status", flat=True)) == {MessageStatus.QUEUED}

    set_health(masters["b"], H)
    wait_until(lambda: Message.objects.filter(status=MessageStatus.SENT).count() == 5)
    assert {d.session for d in simulator.state.messages()} == {"b"}
    assert all(a.message.attempts == 0 for a in accepted)


def test_a_claim_left_by_a_dead_dispatcher_is_reclaimed_and_delivered_once(
    masters, simulator, start_dispatcher
):
    accepted = enqueue(NewMessage("+971501234571", "orphan", idempotency_key="orphan-1"))
    Message.objects.filter(pk=accepted.message.pk).update(
        status=MessageStatus.SENDING,
        lease_owner="dead-dispatcher",
        attempts=1,
        master=masters["a"],
        lease_expires_at=timezone.now() - timedelta(seconds=1),
    )
    start_dispatcher()
    wait_until(lambda: status_of(accepted.message) == MessageStatus.SENT)
    message = Message.objects.get(pk=accepted.message.pk)
    assert message.epoch == 1, "the reclaim fences the dead claim"
    assert message.master_id == masters["a"].pk, "a retry keeps its master"
    assert deliveries(simulator) == Counter({"orphan-1": 1})


def test_a_late_result_from_a_stale_claim_is_not_written(masters):
    from masters import outbox

    accepted = enqueue(NewMessage("+971501234572", "fenced"))
    [claimed] = outbox.claim("first", 10, timedelta(seconds=30))
    Message.objects.filter(pk=claimed.id).update(epoch=claimed.epoch + 1, lease_owner="second")
    written = outbox.record("first", [outbox.Outcome(claimed.id, claimed.epoch, None, "gw-1")], 10)
    assert written == []
    assert status_of(accepted.message) == MessageStatus.SENDING


def test_sends_that_keep_failing_take_the_master_out_of_rotation(
    masters, simulator, start_dispatcher, settings
):
    settings.HEALTH = settings.HEALTH | {"send_error_limit": 3}
    for session in "bc":
        set_health(masters[session], "failed")
    sim_control(simulator, "a", "break_sends")
    enqueue_batch([NewMessage(f"+9715012348{i:02d}", f"e{i}") for i in range(5)])
    start_dispatcher()
    wait_until(
        lambda: Master.objects.get(pk=masters["a"].pk).health_status == HealthStatus.DEGRADED,
        what="the passive signal",
    )


def test_a_master_that_left_rotation_after_the_snapshot_gets_no_new_message(masters):
    from masters import outbox
    from masters.routing import Router

    enqueue(NewMessage("+971501234573", "late snapshot"))
    for session in "bc":
        set_health(masters[session], HealthStatus.FAILED)
    router = Router()
    router.snapshot()  # the router looks while "a" is healthy ...
    set_health(masters["a"], HealthStatus.DEGRADED)  # ... and "a" leaves rotation after
    assert outbox.claim("me", 10, timedelta(seconds=30), router) == []
    message = Message.objects.get()
    assert (message.status, message.master_id) == (MessageStatus.QUEUED, None)
    assert message.last_error == "waiting: no master is routable"
    assert message.next_attempt_at > timezone.now(), "it waits instead of spinning"
    set_health(masters["b"], HealthStatus.HEALTHY)
    Message.objects.update(next_attempt_at=timezone.now())
    [claimed] = outbox.claim("me", 10, timedelta(seconds=30), router)
    assert claimed.master_id == masters["b"].pk, "the router looked again"


def test_only_the_messages_picked_for_a_master_that_left_rotation_wait(masters):
    from masters import outbox
    from masters.routing import Router

    for number in ("+971501234574", "+971501234575"):
        enqueue(NewMessage(number, "half a late snapshot"))
    set_health(masters["c"], HealthStatus.FAILED)
    router = Router()
    router.snapshot()  # round robin over "a" and "b": one message each ...
    set_health(masters["b"], HealthStatus.DEGRADED)  # ... and "b" leaves rotation

    [claimed] = outbox.claim("me", 10, timedelta(seconds=30), router)

    assert claimed.master_id == masters["a"].pk
    waiting = Message.objects.exclude(pk=claimed.id).get()
    assert (waiting.status, waiting.master_id) == (MessageStatus.QUEUED, None)
    assert Message.objects.get(pk=claimed.id).status == MessageStatus.SENDING


def test_a_claim_levels_new_contacts_against_the_retries_it_took(masters):
    from masters import outbox
    from masters.routing import Router

    # Six retries already on "a" and six new contacts in one claim: the new
    # contacts go to "b" and "c" (plain round robin would give "a" two more).
    retries = enqueue_batch([NewMessage(f"+9715012346{i:02d}", "retry") for i in range(6)])
    Message.objects.filter(pk__in=[r.message.pk for r in retries]).update(master=masters["a"])
    enqueue_batch([NewMessage(f"+9715012347{i:02d}", "new") for i in range(6)])

    claimed = outbox.claim("me", 20, timedelta(seconds=30), Router())

    counts = Counter(c.master_id for c in claimed)
    assert counts == {masters["a"].pk: 6, masters["b"].pk: 3, masters["c"].pk: 3}
