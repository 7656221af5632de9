"""A send that may have gone out unanswered is sent again only through the same master.

The idempotency key de-duplicates within one gateway. A message whose send
timed out, lost its connection or lost its dispatcher may already be on
the recipient's phone, so for ``doubt_hold_s`` neither a retry, nor a
reclaim, nor a failover gives it to another master; after that, one whose
master still cannot send is released to any master.
"""

from __future__ import annotations

import socket
from collections import Counter
from datetime import timedelta

import pytest
from django.utils import timezone

from ha_portal.lib.http import HttpClient, run
from masters import outbox
from masters.choices import HealthStatus, MessageStatus
from masters.failover import execute_failover
from masters.gateways import GatewayConfig, GatewayError, gateway_for
from masters.models import Master, Message
from masters.queue import NewMessage, enqueue
from tests.conftest import make_master, sim_control, wait_until
from tests.hostile.gateway_server import running_gateway

pytestmark = pytest.mark.django_db(transaction=True)

HOLD_S = 300


@pytest.fixture(autouse=True)
def _hold(settings):
    settings.QUEUE = settings.QUEUE | {"doubt_hold_s": HOLD_S}


# --- which failures leave a send in doubt -------------------------------------------------


def send_error(url: str, timeout: float = 0.5) -> GatewayError:
    async def go() -> GatewayError:
        async with HttpClient() as http:
            gateway = gateway_for(GatewayConfig("waha", url, "s"), http, timeout)
            with pytest.raises(GatewayError) as caught:
                await gateway.send("+971505760056", "hello", "key-1")
            return caught.value

    return run(go())


def closed_port() -> int:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        return listener.getsockname()[1]


def test_a_refused_connection_is_not_in_doubt_but_silence_and_a_lost_reply_are():
    refused = send_error(f"http://127.0.0.1:{closed_port()}")
    assert refused.retryable and not refused.in_doubt, refused

    server = running_gateway()
    gateway = next(server)
    try:
        for mode, reply in [
            ("drip", None),  # answers a byte at a time, past the timeout
            ("close", None),  # reads the request, hangs up without a word
            ("json", (200, {"no": "id"})),  # 2xx: it went, but we cannot read its id
        ]:
            gateway.behave(mode, *(reply or ()))
            error = send_error(gateway.url)
            assert error.retryable and error.in_doubt, (mode, error)
        gateway.behave("json", 500, {"message": "session failed"})
        answered = send_error(gateway.url)
        assert answered.retryable and not answered.in_doubt, "the gateway said it failed"
    finally:
        server.close()


# --- the outbox and the failover keep it on its master -----------------------------------


def claimed_on(master: Master) -> outbox.Claimed:
    """A message claimed while ``master`` could send; then the master fails."""
    enqueue(NewMessage("+971501234567", "hello", idempotency_key=f"doubt-{master.pk}"))
    Message.objects.filter(master__isnull=True).update(master=master)
    [claimed] = outbox.claim("d1", 10, timedelta(seconds=30))
    Master.objects.filter(pk=master.pk).update(health_status=HealthStatus.FAILED)
    return claimed


def test_a_send_in_doubt_stays_on_its_master_through_a_failover_until_the_hold_ends(trio):
    a, b, _ = trio
    Master.objects.filter(pk=a.pk).update(health_status=HealthStatus.HEALTHY)
    claimed = claimed_on(a)
    timed_out = outbox.Outcome(claimed.id, claimed.epoch, a.pk, error="timed out", in_doubt=True)
    assert outbox.record("d1", [timed_out], 10)

    message = Message.objects.get(pk=claimed.id)
    assert (message.status, message.master_id) == (MessageStatus.RETRYING, a.pk)
    assert message.in_doubt_until > timezone.now() + timedelta(seconds=HOLD_S - 5)
    assert "may have gone out" in message.last_error

    event = execute_failover(a.pk, reason="master failed")

    assert event.backup_master_id == b.pk and event.moved_messages == 0
    assert event.detail["held_in_doubt"] == 1
    assert Message.objects.get(pk=claimed.id).master_id == a.pk, "b would deliver it twice"
    Message.objects.filter(pk=claimed.id).update(next_attempt_at=timezone.now())
    assert outbox.claim("d2", 10, timedelta(seconds=30)) == [], "a cannot send: it waits"
    assert outbox.release_doubts() == 0, "not before the hold ends"

    Message.objects.filter(pk=claimed.id).update(in_doubt_until=timezone.now())
    assert outbox.release_doubts() == 1
    released = Message.objects.get(pk=claimed.id)
    assert (released.master_id, released.in_doubt_until) == (None, None)
    assert released.epoch == message.epoch + 1
    [again] = outbox.claim("d2", 10, timedelta(seconds=30))
    assert again.id == claimed.id and again.master_id is None


def test_a_message_expiring_in_doubt_says_it_may_have_arrived(trio):
    a, _, _ = trio
    Master.objects.filter(pk=a.pk).update(health_status=HealthStatus.HEALTHY)
    claimed = claimed_on(a)
    timed_out = outbox.Outcome(claimed.id, claimed.epoch, a.pk, error="timed out", in_doubt=True)
    outbox.record("d1", [timed_out], 10)
    enqueue(NewMessage("+971501234568", "never tried"))
    Message.objects.update(expires_at=timezone.now())

    assert outbox.expire_overdue() == 2

    reasons = dict(Message.objects.values_list("pk", "last_error"))
    assert "may have gone out" in reasons.pop(claimed.id)
    assert list(reasons.values()) == ["expired before it could be sent"]


def test_a_definite_failure_is_not_held(trio):
    a, _, _ = trio
    Master.objects.filter(pk=a.pk).update(health_status=HealthStatus.HEALTHY)
    claimed = claimed_on(a)
    refused = outbox.Outcome(claimed.id, claimed.epoch, a.pk, error="cannot connect")
    outbox.record("d1", [refused], 10)

    message = Message.objects.get(pk=claimed.id)
    assert (message.master_id, message.in_doubt_until) == (None, None), "any master may retry"


def test_a_claim_whose_dispatcher_died_is_held_for_its_master_and_sent_there(trio):
    a, _, _ = trio
    Master.objects.filter(pk=a.pk).update(health_status=HealthStatus.HEALTHY)
    claimed = claimed_on(a)
    lapsed = timezone.now() - timedelta(seconds=1)
    Message.objects.filter(pk=claimed.id).update(lease_expires_at=lapsed)

    assert execute_failover(a.pk, reason="master failed").moved_messages == 0
    assert outbox.reclaim_expired_leases() == 1

    message = Message.objects.get(pk=claimed.id)
    assert (message.status, message.master_id) == (MessageStatus.RETRYING, a.pk)
    assert message.in_doubt_until == lapsed + timedelta(seconds=HOLD_S)
    assert outbox.claim("d2", 10, timedelta(seconds=30)) == []
    Master.objects.filter(pk=a.pk).update(health_status=HealthStatus.HEALTHY)
    [resent] = outbox.claim("d2", 10, timedelta(seconds=30))
    assert resent.master_id == a.pk, "the gateway that knows its key sends it"
    sent = outbox.Outcome(resent.id, resent.epoch, a.pk, gateway_message_id="g-1")
    outbox.record("d2", [sent], 10)
    done = Message.objects.get(pk=claimed.id)
    assert (done.status, done.in_doubt_until) == (MessageStatus.SENT, None)


def test_a_claim_that_lapsed_longer_ago_than_the_hold_moves_with_the_failover(trio):
    a, b, _ = trio
    Master.objects.filter(pk=a.pk).update(health_status=HealthStatus.HEALTHY)
    claimed = claimed_on(a)
    long_ago = timezone.now() - timedelta(seconds=HOLD_S + 1)
    Message.objects.filter(pk=claimed.id).update(lease_expires_at=long_ago)

    event = execute_failover(a.pk, reason="master failed")

    assert event.moved_messages == 1
    assert Message.objects.get(pk=claimed.id).master_id == b.pk


def test_with_no_hold_a_send_in_doubt_goes_back_to_the_pool_at_once(trio, settings):
    settings.QUEUE = settings.QUEUE | {"doubt_hold_s": 0}
    a, _, _ = trio
    Master.objects.filter(pk=a.pk).update(health_status=HealthStatus.HEALTHY)
    claimed = claimed_on(a)
    timed_out = outbox.Outcome(claimed.id, claimed.epoch, a.pk, error="timed out", in_doubt=True)
    outbox.record("d1", [timed_out], 10)

    message = Message.objects.get(pk=claimed.id)
    assert (message.master_id, message.in_doubt_until) == (None, None)


# --- end to end: a slow gateway delivers late, its master fails, nothing goes twice --------


def test_a_send_that_timed_out_on_a_slow_master_is_delivered_once_after_a_failover(
    simulator, start_dispatcher, settings
):
    settings.QUEUE = settings.QUEUE | {"send_timeout_ms": 300, "lease_s": 8}
    a, b = (
        make_master(
            session,
            phone,
            gateway_url=simulator.url,
            gateway_session=session,
            failover_priority=priority,
            max_messages_per_second=100,
        )
        for session, phone, priority in (
            ("a", "+971505760056", 1),
            ("b", "+971505760057", 2),
        )
    )
    Master.objects.filter(pk=b.pk).update(health_status=HealthStatus.FAILED)
    sim_control(simulator, "a", "slow", delay_ms=1500)  # answers after our timeout, sends anyway
    accepted = enqueue(NewMessage("+971501234567", "late but sent", idempotency_key="slow-1"))
    start_dispatcher()

    wait_until(
        lambda: Message.objects.get(pk=accepted.message.pk).in_doubt_until,
        what="the timed-out send recorded in doubt",
    )
    wait_until(lambda: simulator.state.messages(), what="the slow gateway delivering it")
    # a is failed over to b while the message is in doubt.
    Master.objects.filter(pk=a.pk).update(health_status=HealthStatus.FAILED)
    Master.objects.filter(pk=b.pk).update(health_status=HealthStatus.HEALTHY)
    event = execute_failover(a.pk, reason="master failed", backup_id=b.pk)
    assert event.backup_master_id == b.pk
    assert Message.objects.get(pk=accepted.message.pk).master_id == a.pk

    # a comes back: the retry goes through a, whose gateway knows the key.
    sim_control(simulator, "a", "recover")
    Master.objects.filter(pk=a.pk).update(health_status=HealthStatus.HEALTHY)
    wait_until(
        lambda: Message.objects.get(pk=accepted.message.pk).status == MessageStatus.SENT,
        what="the message recorded as sent",
    )
    delivered = Counter((d.session, d.idempotency_key) for d in simulator.state.messages())
    assert delivered == Counter({("a", "slow-1"): 1})
