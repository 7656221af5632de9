"""Replayed, tampered and oversized gateway webhooks: refused or counted once, nothing else.

tests/test_gateway_webhooks.py proves the forgeries (bad, missing or foreign
signatures, wrong session, bad JSON, a body over the cap with its length
declared). Here: the same delivery arriving again (a gateway's retry or a
captured request replayed), a replay whose timestamp was rewritten, copies
racing each other, and an oversized body streamed without a length to a real
daphne process.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import requests
from django.db import connection
from django.test import Client

from masters.choices import EventKind, GatewayKind, HealthStatus
from masters.models import Event, Master
from masters.webhooks import MAX_BODY_BYTES
from tests.conftest import make_master

SECRET = "hook-secret-replays"


@pytest.fixture
def masters(db, settings) -> dict[str, Master]:
    """Two masters with a webhook secret (committed when the test asks for transactional_db)."""
    settings.HEALTH = {**settings.HEALTH, "fall": 3, "rise": 2}
    return {
        "m1": make_master("m1", "+971505760056", webhook_secret=SECRET),
        "evo": make_master(
            "evo", "+971505760057", gateway_kind=GatewayKind.EVOLUTION, webhook_secret=SECRET
        ),
    }


def now_ms(offset: timedelta = timedelta(0)) -> int:
    return int((datetime.now(UTC) + offset).timestamp() * 1000)


def waha_delivery(status: str = "FAILED", event_id: str = "evt_01", **fields: Any) -> bytes:
    """A session.status delivery as WAHA sends it: an event id and a timestamp in the body."""
    body = {
        "id": event_id,
        "timestamp": now_ms(),
        "event": "session.status",
        "session": "m1",
        "payload": {"name": "m1", "status": status},
        "engine": "WEBJS",
    }
    return json.dumps(body | fields).encode()


def evolution_delivery(state: str = "close", date_time: str = "2025-01-01T10:00:00.000Z") -> bytes:
    return json.dumps(
        {
            "event": "connection.update",
            "instance": "evo",
            "data": {"instance": "evo", "state": state},
            "date_time": date_time,
        }
    ).encode()


def signed(body: bytes) -> dict[str, str]:
    digest = hmac.new(SECRET.encode(), body, hashlib.sha512).hexdigest()
    return {"X-Webhook-Hmac": digest, "X-Webhook-Hmac-Algorithm": "sha512"}


def post(path: str, body: bytes, headers: dict[str, str]):
    return Client().post(path, body, content_type="application/json", headers=headers)


def state() -> tuple[list[dict[str, Any]], int]:
    """The masters and the number of events: what a webhook may change."""
    return list(Master.objects.order_by("pk").values()), Event.objects.count()


def health(external_id: str) -> tuple[str, int]:
    master = Master.objects.get(external_id=external_id)
    return master.health_status, master.consecutive_failures


def hook_events(external_id: str) -> int:
    return Event.objects.filter(
        master__external_id=external_id, kind=EventKind.GATEWAY_WEBHOOK
    ).count()


# --- the same delivery again ----------------------------------------------------------


def test_a_replayed_waha_delivery_is_acknowledged_and_counted_once(masters):
    body = waha_delivery("FAILED")

    answers = [post("/hooks/waha/m1", body, signed(body)) for _ in range(4)]

    assert [a.status_code for a in answers] == [200] * 4
    assert answers[0].json() == {"accepted": True, "status": "degraded"}
    # Three more copies would reach the fall threshold (3) if they counted.
    assert [a.json() for a in answers[1:]] == [
        {"accepted": True, "duplicate": True, "status": "degraded"}
    ] * 3
    assert health("m1") == (HealthStatus.DEGRADED, 1)
    assert hook_events("m1") == 1


def test_a_copy_reserialised_with_the_same_event_id_is_the_same_delivery(masters):
    first = waha_delivery("FAILED", event_id="evt_retry")
    again = json.dumps(json.loads(first), indent=2, sort_keys=True).encode()

    post("/hooks/waha/m1", first, signed(first))
    answer = post("/hooks/waha/m1", again, signed(again))

    assert answer.json()["duplicate"] is True
    assert health("m1") == (HealthStatus.DEGRADED, 1)


def test_distinct_deliveries_of_the_same_state_each_count(masters):
    bodies = [waha_delivery("FAILED", event_id=f"evt_{i}") for i in range(3)]

    answers = [post("/hooks/waha/m1", body, signed(body)).json() for body in bodies]

    assert [a["status"] for a in answers] == ["degraded", "degraded", "failed"]
    assert "duplicate" not in answers[-1]
    assert health("m1") == (HealthStatus.FAILED, 3)
    assert hook_events("m1") == 3


def test_a_retried_evolution_delivery_is_counted_once(masters):
    body = evolution_delivery("close")
    token = {"X-HA-Token": SECRET}

    answers = [post("/hooks/evolution/evo", body, token).json() for _ in range(3)]

    assert answers == [
        {"accepted": True, "status": "degraded"},
        {"accepted": True, "duplicate": True, "status": "degraded"},
        {"accepted": True, "duplicate": True, "status": "degraded"},
    ]
    assert health("evo") == (HealthStatus.DEGRADED, 1)
    later = evolution_delivery("close", date_time="2025-01-01T10:00:05.000Z")
    assert post("/hooks/evolution/evo", later, token).json() == {
        "accepted": True,
        "status": "degraded",
    }
    assert health("evo") == (HealthStatus.DEGRADED, 2)


@pytest.mark.skipif("connection.vendor != 'postgresql'")
def test_copies_of_one_delivery_racing_each_other_count_once(transactional_db, masters):
    body = waha_delivery("FAILED", event_id="evt_race")
    copies = 6
    start = threading.Barrier(copies)
    answers: list[dict] = []

    def deliver() -> None:
        try:
            start.wait(5)
            answers.append(post("/hooks/waha/m1", body, signed(body)).json())
        finally:
            connection.close()

    threads = [threading.Thread(target=deliver) for _ in range(copies)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(20)

    assert len(answers) == copies
    assert sum(1 for answer in answers if "duplicate" not in answer) == 1
    assert health("m1") == (HealthStatus.DEGRADED, 1)
    assert hook_events("m1") == 1


# --- a replay after the window, or with its timestamp rewritten -------------------------


@pytest.mark.parametrize(
    ("timestamp", "error"),
    [
        pytest.param(
            now_ms(-timedelta(minutes=61)),
            "timestamp: sent over 60 minutes ago: refused as a replay or a stale retry",
            id="sent 61 minutes ago",
        ),
        pytest.param(
            now_ms(timedelta(minutes=30)),
            "timestamp: over 5 minutes ahead of the portal's clock",
            id="sent 30 minutes from now",
        ),
        pytest.param("yesterday", "timestamp: expected milliseconds since 1970", id="words"),
        pytest.param(True, "timestamp: expected milliseconds since 1970", id="true"),
        pytest.param(10**30, "timestamp: expected milliseconds since 1970", id="past year 9999"),
    ],
)
def test_a_signed_delivery_stamped_outside_the_window_is_refused_and_changes_nothing(
    masters, timestamp, error
):
    body = waha_delivery("FAILED", timestamp=timestamp)
    before = state()

    answer = post("/hooks/waha/m1", body, signed(body))

    assert (answer.status_code, answer.json()) == (400, {"error": error})
    assert state() == before


def test_a_captured_delivery_with_its_timestamp_rewritten_fails_the_signature(masters):
    captured = waha_delivery("FAILED", timestamp=now_ms(-timedelta(hours=3)))
    headers = signed(captured)
    rewritten = json.dumps(json.loads(captured) | {"timestamp": now_ms()}).encode()
    before = state()

    answer = post("/hooks/waha/m1", rewritten, headers)

    assert answer.status_code == 401
    assert state() == before


# --- hostile bodies through the real web process ------------------------------------------


def stream(total: int, chunk: int = 64 * 1024):
    """Yield ``total`` bytes in chunks: requests sends them chunked, with no Content-Length."""
    sent = 0
    while sent < total:
        size = min(chunk, total - sent)
        sent += size
        yield b"x" * size


def test_an_oversized_body_streamed_without_a_length_is_refused_and_the_server_goes_on(
    web, transactional_db, masters
):
    before = state()

    answer = requests.post(
        f"{web.url}/hooks/waha/m1",
        data=stream(8 * 1024 * 1024),
        headers={"Content-Type": "application/json", "X-HA-Token": SECRET},
        timeout=30,
    )

    assert answer.status_code == 413
    assert answer.json() == {"error": f"body: over {MAX_BODY_BYTES} bytes"}
    assert state() == before
    body = waha_delivery("FAILED")
    after = requests.post(f"{web.url}/hooks/waha/m1", data=body, headers=signed(body), timeout=10)
    assert after.json() == {"accepted": True, "status": "degraded"}


@pytest.mark.parametrize(
    ("body", "error"),
    [
        pytest.param(b"", "body: not JSON", id="empty"),
        pytest.param(bytes(range(256)), "body: not JSON", id="binary"),
        pytest.param(
            b'{"event": "session.status", "session": "m1", "payload": {"status": "FA\xffD"}}',
            "body: not JSON",
            id="invalid utf-8",
        ),
        pytest.param(b"null", "body: expected a JSON object", id="null"),
        pytest.param(
            json.dumps({"event": ["session.status"], "session": "m1"}).encode(),
            "event: expected a non-empty string",
            id="event as a list",
        ),
    ],
)
def test_a_signed_body_that_is_garbage_is_refused_by_the_web_process(
    web, transactional_db, masters, body, error
):
    before = state()

    answer = requests.post(
        f"{web.url}/hooks/waha/m1",
        data=body,
        headers={"Content-Type": "application/json", **signed(body)},
        timeout=10,
    )

    assert (answer.status_code, answer.json()) == (400, {"error": error})
    assert state() == before


def test_a_burst_of_forged_deliveries_changes_nothing_and_stays_fast(
    web, transactional_db, masters
):
    body = waha_delivery("FAILED")
    forged = {"X-Webhook-Hmac": "0" * 128}
    before = state()
    started = time.monotonic()

    with requests.Session() as session:
        codes = {
            session.post(
                f"{web.url}/hooks/waha/m1", data=body, headers=forged, timeout=10
            ).status_code
            for _ in range(60)
        }

    assert codes == {401}
    assert state() == before
    # A loose bound: 60 refusals on loopback take a second or two, not one timeout each.
    assert time.monotonic() - started < 15


@pytest.mark.parametrize(
    "status",
    [
        pytest.param("FAILED\x00", id="NUL"),
        pytest.param("\ud800", id="lone surrogate"),
        pytest.param("FAILED\r\nX-Injected: 1", id="line break"),
        pytest.param("X" * 60_000, id="60,000 characters"),
    ],
)
def test_a_signed_state_no_column_can_hold_is_refused_not_a_server_error(masters, status):
    # Signed, so it comes from the gateway: still nothing the database could store
    # (PostgreSQL refuses NUL; neither database takes half a surrogate pair).
    body = json.dumps(
        {"event": "session.status", "session": "m1", "payload": {"status": status}}
    ).encode()
    before = state()

    answer = post("/hooks/waha/m1", body, signed(body))

    assert (answer.status_code, answer.json()) == (
        400,
        {"error": "payload.status: expected at most 200 printable characters"},
    )
    assert state() == before
