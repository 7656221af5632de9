"""Gateways that answer garbage, huge bodies or never finish, met by real probes and sends.

Each gets a clear, retryable error within the configured timeout; a body is
never read past the cap; whatever the gateway says leaves the gateway module
as short printable text any database can store; and the dispatcher and the
prober survive it: the message is retried until it goes out once, the other
masters keep being probed.

tests/gateways/ covers the polite failures (a silent server, a body that
stalls after its headers, an over-long declared or chunked body, non-JSON
error pages); this module covers the rude ones, through a raw TCP server
(tests/hostile/gateway_server.py).
"""

from __future__ import annotations

import time
import tracemalloc
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import timedelta

import pytest
from django.utils import timezone

from ha_portal.lib.http import DEFAULT_MAX_BODY_BYTES, HttpClient, run
from masters.choices import HealthStatus, MessageStatus
from masters.gateways import GatewayConfig, GatewayError, HealthResult, gateway_for
from masters.gateways.base import MAX_DETAIL_CHARS, MAX_MESSAGE_ID_CHARS
from masters.models import HealthCheck, Master, Message
from masters.queue import NewMessage, enqueue
from tests.conftest import make_master, wait_until
from tests.hostile.gateway_server import HostileGateway, running_gateway

TIMEOUT = 0.5
DEEP = b"[" * 100_000 + b"]" * 100_000  # 200 kB, under the cap, past the parser's recursion


@pytest.fixture
def hostile() -> Iterator[HostileGateway]:
    yield from running_gateway()


@pytest.fixture
def start_hostile() -> Iterator[Callable[[], HostileGateway]]:
    """Start as many hostile gateways as a test needs; stop them after it."""
    running: list[Iterator[HostileGateway]] = []

    def start() -> HostileGateway:
        server = running_gateway()
        running.append(server)
        return next(server)

    yield start
    for server in running:
        server.close()


def call_both(url: str) -> tuple[HealthResult, GatewayError, float]:
    """Probe, then send, through a WAHA gateway at ``url``; return both outcomes and the time."""

    async def go() -> tuple[HealthResult, GatewayError]:
        async with HttpClient() as http:
            gateway = gateway_for(GatewayConfig("waha", url, "s"), http, TIMEOUT)
            result = await gateway.health()
            with pytest.raises(GatewayError) as caught:
                await gateway.send("+971505760056", "hello", "key-1")
            return result, caught.value

    started = time.monotonic()
    result, error = run(go())
    return result, error, time.monotonic() - started


def storable(text: str) -> bool:
    text.encode("utf-8")  # raises on a lone surrogate
    return text.isprintable() and len(text) <= MAX_DETAIL_CHARS


# --- one exchange: a clear, retryable error, in bounded time ---------------------------------


@pytest.mark.parametrize(
    ("mode", "reply", "error"),
    [
        pytest.param(
            "garbage",
            None,
            "WAHA: not a valid HTTP response: Bad status line",
            id="bytes that are not HTTP",
        ),
        pytest.param(
            "close", None, "server closed the connection without answering", id="hangs up"
        ),
        pytest.param(
            "short",
            None,
            "WAHA: response body cut short (received 9 of 1000 bytes)",
            id="body shorter than its length",
        ),
        pytest.param(
            "drip", None, f"timed out after {TIMEOUT:g}s", id="a byte at a time, never done"
        ),
        pytest.param(
            "endless",
            None,
            f"WAHA: response body over {DEFAULT_MAX_BODY_BYTES} bytes",
            id="no length, never closes",
        ),
        pytest.param(
            "declared",
            None,
            f"WAHA: response body over {DEFAULT_MAX_BODY_BYTES} bytes",
            id="declares ten gigabytes",
        ),
        pytest.param(
            "json",
            (200, DEEP),
            "malformed reply: response is not JSON we can read (HTTP 200, nested too deeply)",
            id="JSON nested 100,000 deep",
        ),
    ],
)
def test_a_misbehaving_gateway_fails_the_probe_and_the_send_with_a_clear_retryable_error(
    hostile, mode, reply, error
):
    hostile.behave(mode, *(reply or ()))

    result, failure, elapsed = call_both(hostile.url)

    assert result.status == HealthStatus.FAILED
    assert result.detail.startswith(error), result.detail
    assert failure.detail.startswith(error), failure.detail
    assert failure.retryable
    assert storable(result.detail) and storable(failure.detail)
    # Two calls, each bounded by the timeout (plus loopback slack).
    assert elapsed < 2 * TIMEOUT + 2


def test_a_body_that_never_ends_is_cut_at_the_cap_not_read_whole(hostile):
    hostile.behave("endless")

    tracemalloc.start()
    try:
        result, _, _ = call_both(hostile.url)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    assert result.detail == f"WAHA: response body over {DEFAULT_MAX_BODY_BYTES} bytes"
    # The cap and a chunk or two, however much the server would go on sending.
    assert peak < 4 * DEFAULT_MAX_BODY_BYTES
    assert [exchange.mode for exchange in hostile.received] == ["endless", "endless"]


# --- what a gateway says leaves the gateway module as storable text ----------------------------


@pytest.mark.parametrize(
    ("said", "shown"),
    [
        pytest.param("WORK\x00ING", "WORK ING", id="NUL"),
        pytest.param("\ud800", "?", id="lone surrogate"),
        pytest.param("FAILED\r\n\x1b[2J", "FAILED [2J", id="line break and terminal escape"),
    ],
)
def test_a_state_or_error_no_column_could_store_is_made_printable(hostile, said, shown):
    hostile.behave("json", 200, {"status": said})
    result, _, _ = call_both(hostile.url)
    hostile.behave("json", 500, {"message": said})
    _, failure, _ = call_both(hostile.url)

    assert result.detail == f"WAHA status {shown} (unknown state)"
    assert result.gateway_state == shown
    assert failure.detail == f"WAHA HTTP 500: {shown}"
    assert storable(result.detail) and storable(failure.detail)


def test_a_huge_error_message_is_cut_short(hostile):
    hostile.behave("json", 503, {"message": "overloaded " * 50_000})

    _, failure, _ = call_both(hostile.url)

    assert failure.detail.startswith("WAHA HTTP 503: overloaded overloaded")
    assert len(failure.detail) == MAX_DETAIL_CHARS and failure.detail.endswith("…")


@pytest.mark.parametrize(
    ("message_id", "error"),
    [
        pytest.param(
            "true_1@c.us\x00", "message id 'true_1@c.us ' is not printable text", id="NUL"
        ),
        pytest.param("\ud800", "message id '?' is not printable text", id="lone surrogate"),
        pytest.param(
            "i" * (MAX_MESSAGE_ID_CHARS + 1),
            f"message id over {MAX_MESSAGE_ID_CHARS} characters",
            id="longer than the column",
        ),
    ],
)
def test_a_send_answered_with_an_id_no_column_can_hold_is_a_retryable_malformed_reply(
    hostile, message_id, error
):
    # The message may have gone out: retryable, and the idempotency key keeps it to one.
    hostile.behave("json", 200, {"id": message_id})

    _, failure, _ = call_both(hostile.url)

    assert failure.detail == f"malformed reply: {error}"
    assert failure.retryable and failure.http_status == 200


def test_the_id_limit_is_the_column_s():
    assert Message._meta.get_field("gateway_message_id").max_length == MAX_MESSAGE_ID_CHARS


# --- the dispatcher: retried, not lost, sent once ------------------------------------------------


@pytest.fixture
def sending(settings, start_dispatcher):
    """Send through one master only, with fast retries and every failure left to the message."""
    settings.QUEUE = settings.QUEUE | {
        "send_timeout_ms": int(TIMEOUT * 1000),
        "lease_s": 8,
        "max_attempts": 30,
    }
    # Send errors would eject the only master after five: here only the message is watched.
    settings.HEALTH = settings.HEALTH | {"send_error_limit": 1000}
    return start_dispatcher


def message(pk: int) -> Message:
    return Message.objects.get(pk=pk)


def failed_again(pk: int, after: int, error: str) -> int:
    """Return the message's attempts once one after ``after`` failed with ``error``, else 0."""
    found = message(pk)
    return found.attempts if found.attempts > after and error in found.last_error else 0


def test_a_message_is_retried_through_every_kind_of_garbage_and_sent_once_when_the_gateway_mends(
    hostile, sending
):
    make_master("h", gateway_url=hostile.url, gateway_session="h", max_messages_per_second=100)
    pk = enqueue(NewMessage("+971501234567", "hello", idempotency_key="hostile-1")).message.pk
    hostile.behave("garbage")
    sending()

    attempts = 0
    for mode, reply, error in [
        ("garbage", None, "not a valid HTTP response"),
        ("endless", None, "response body over"),
        ("short", None, "response body cut short"),
        ("json", (200, DEEP), "nested too deeply"),
        ("json", (200, {"id": "x\x00"}), "is not printable text"),
        ("drip", None, f"timed out after {TIMEOUT:g}s"),
    ]:
        hostile.behave(mode, *(reply or ()))
        attempts = wait_until(
            lambda n=attempts, e=error: failed_again(pk, n, e),
            what=f"a retry that failed with {error!r}",
        )
        assert message(pk).status in (MessageStatus.RETRYING, MessageStatus.SENDING)
    hostile.behave("waha")

    wait_until(lambda: message(pk).status == MessageStatus.SENT, what="the message sent")
    sent = message(pk)
    assert sent.gateway_message_id.startswith("true_") and sent.last_error == ""
    answered = [e for e in hostile.sends() if e.mode == "waha"]
    assert len(answered) == 1
    assert {e.headers["idempotency-key"] for e in hostile.sends()} == {"hostile-1"}


def lapse_lease(pk: int) -> None:
    """Move the claim's lease into the past: what waiting out ``lease_s`` would do."""
    Message.objects.filter(pk=pk).update(lease_expires_at=timezone.now() - timedelta(seconds=1))


def test_a_dispatcher_stopped_mid_send_to_a_silent_gateway_stops_promptly_and_loses_nothing(
    hostile, sending
):
    make_master("h", gateway_url=hostile.url, gateway_session="h")
    pk = enqueue(NewMessage("+971501234567", "hello", idempotency_key="silent-1")).message.pk
    hostile.behave("hang")
    dispatcher = sending()
    wait_until(lambda: message(pk).attempts >= 2, what="two timed-out attempts")

    started = time.monotonic()
    dispatcher.stop()

    # The send under way ends at its timeout; nothing waits on the silent gateway longer.
    assert time.monotonic() - started < TIMEOUT + 5
    stopped = message(pk)
    assert stopped.status in (MessageStatus.RETRYING, MessageStatus.SENDING)
    assert stopped.last_error.startswith(f"timed out after {TIMEOUT:g}s")
    hostile.behave("waha")
    lapse_lease(pk)
    sending()
    wait_until(lambda: message(pk).status == MessageStatus.SENT, what="sent by the next dispatcher")
    assert len([e for e in hostile.sends() if e.mode == "waha"]) == 1


def test_sends_that_succeed_while_the_dispatcher_stops_are_recorded_and_not_sent_again(
    hostile, sending
):
    make_master("h", gateway_url=hostile.url, gateway_session="h")
    hostile.behave("slow", 200, 0.3)
    # The loss is a race (about one stop in two here): eight rounds make it near-certain.
    for round_ in range(8):
        key = f"slow-{round_}"
        enqueue(NewMessage("+971501234567", f"hello {round_}", idempotency_key=key))
        dispatcher = sending()
        wait_until(
            lambda k=key: any(e.headers["idempotency-key"] == k for e in hostile.sends()),
            what=f"send {key} under way",
        )
        dispatcher.stop()
        Message.objects.filter(status=MessageStatus.SENDING).update(
            lease_expires_at=timezone.now() - timedelta(seconds=1)
        )
    sending()

    wait_until(
        lambda: not Message.objects.exclude(status=MessageStatus.SENT).exists(),
        what="every message sent",
    )
    deliveries = Counter(e.headers["idempotency-key"] for e in hostile.sends())
    assert [key for key, count in deliveries.items() if count > 1] == [], "sent twice"


# --- the prober: each hostile gateway failed, the others still probed ----------------------------


def test_the_prober_fails_each_hostile_gateway_clearly_and_keeps_probing_the_rest(
    simulator, start_prober, start_hostile
):
    behaviours = {
        "garbage": ((), "WAHA: not a valid HTTP response"),
        "endless": ((), f"WAHA: response body over {DEFAULT_MAX_BODY_BYTES} bytes"),
        "drip": ((), "timed out after 0.3s"),
        "json": ((200, {"status": "\ud800"}), "WAHA status ? (unknown state)"),
    }
    hostile_masters = {}
    for index, (mode, (reply, _)) in enumerate(behaviours.items()):
        server = start_hostile()
        server.behave(mode, *reply)
        hostile_masters[mode] = make_master(
            f"h{index}",
            f"+97150576010{index}",
            gateway_url=server.url,
            gateway_session="s",
            health_status=HealthStatus.UNKNOWN,
        )
    healthy = make_master("a", "+966501234567", gateway_url=simulator.url, gateway_session="a")
    prober = start_prober()

    for mode, master in hostile_masters.items():
        wait_until(
            lambda m=master: Master.objects.get(pk=m.pk).health_status == HealthStatus.FAILED,
            what=f"the {mode} master failed",
        )
        latest = HealthCheck.objects.filter(master=master).latest("checked_at")
        assert latest.error.startswith(behaviours[mode][1]), latest.error
    probes = HealthCheck.objects.filter(master=healthy).count()
    wait_until(
        lambda: HealthCheck.objects.filter(master=healthy).count() >= probes + 3,
        what="the healthy master still probed",
    )
    assert Master.objects.get(pk=healthy.pk).health_status == HealthStatus.HEALTHY
    prober.stop()
