"""The gateway simulator speaks WAHA over real HTTP and breaks on command."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from masters.gateways.simulator import SimulatorServer, flap_status

BASE_DIR = Path(__file__).resolve().parent.parent
CHAT = "15551234567@c.us"


def http(
    method: str,
    url: str,
    body: Any = None,
    *,
    raw: bytes | None = None,
    headers: dict[str, str] | None = None,
    timeout: float = 5.0,
) -> tuple[int, Any]:
    """Send one request with the standard library; return the status and the decoded JSON."""
    data = raw if raw is not None else None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        with error:
            return error.code, json.loads(error.read())


def send(url: str, session: str = "a", *, key: str | None = None, **fields: Any) -> tuple[int, Any]:
    """POST /api/sendText for a session, with an optional Idempotency-Key."""
    body = {"session": session, "chatId": CHAT, "text": "hello", **fields}
    return http(
        "POST", f"{url}/api/sendText", body, headers={"Idempotency-Key": key} if key else {}
    )


def control(url: str, session: str, action: str, body: Any = None) -> tuple[int, Any]:
    """POST a control action for a session."""
    return http("POST", f"{url}/_sim/sessions/{session}/{action}", body)


def status_of(url: str, session: str = "a") -> str:
    """Return the WAHA status the session reports."""
    code, body = http("GET", f"{url}/api/sessions/{session}")
    assert code == 200, body
    return body["status"]


@pytest.fixture
def sim() -> Iterator[SimulatorServer]:
    with SimulatorServer(["a", "b"]) as server:
        yield server


# --- Session status -----------------------------------------------------------------


def test_a_working_session_reports_working_with_its_phone_number(sim: SimulatorServer) -> None:
    code, body = http("GET", f"{sim.url}/api/sessions/a")

    assert code == 200
    assert body["name"] == "a"
    assert body["status"] == "WORKING"
    assert body["config"] == {}
    assert body["me"]["id"].endswith("@c.us")
    assert body["me"]["id"].removesuffix("@c.us").isdigit()
    assert body["me"]["pushName"] == "a"


@pytest.mark.parametrize(
    ("action", "status"),
    [
        ("fail", "FAILED"),
        ("stop", "STOPPED"),
        ("starting", "STARTING"),
        ("scan_qr", "SCAN_QR_CODE"),
        ("break_sends", "WORKING"),
        ("slow", "WORKING"),
    ],
)
def test_each_mode_reports_its_waha_status(sim: SimulatorServer, action: str, status: str) -> None:
    body = {"delay_ms": 0} if action == "slow" else None
    assert control(sim.url, "a", action, body)[0] == 200

    assert status_of(sim.url, "a") == status
    assert status_of(sim.url, "b") == "WORKING"


def test_a_session_that_is_not_working_does_not_say_who_it_is(sim: SimulatorServer) -> None:
    control(sim.url, "a", "fail")

    assert http("GET", f"{sim.url}/api/sessions/a")[1]["me"] is None


def test_recover_brings_a_failed_session_back_to_working(sim: SimulatorServer) -> None:
    control(sim.url, "a", "fail")
    code, body = control(sim.url, "a", "recover")

    assert code == 200
    assert body["mode"] == "working"
    assert status_of(sim.url, "a") == "WORKING"


def test_an_unknown_session_is_404(sim: SimulatorServer) -> None:
    code, body = http("GET", f"{sim.url}/api/sessions/nope")

    assert code == 404
    assert "nope" in body["error"]


def test_flap_fails_first_then_alternates_every_period() -> None:
    assert flap_status(100.0, 1000, 100.0) == "FAILED"
    assert flap_status(100.0, 1000, 100.999) == "FAILED"
    assert flap_status(100.0, 1000, 101.0) == "WORKING"
    assert flap_status(100.0, 1000, 102.5) == "FAILED"
    assert flap_status(100.0, 1000, 103.2) == "WORKING"


def test_a_flapping_session_alternates_by_its_clock_over_http() -> None:
    now = [50.0]
    with SimulatorServer(["a"], clock=lambda: now[0]) as server:
        code, body = control(server.url, "a", "flap", {"period_ms": 200})
        assert (code, body["mode"], body["period_ms"]) == (200, "flap", 200)

        seen = []
        # Mid-period offsets: period boundaries are at the mercy of float rounding.
        for offset in (0.05, 0.15, 0.25, 0.35, 0.45, 0.65):
            now[0] = 50.0 + offset
            seen.append(status_of(server.url, "a"))

    assert seen == ["FAILED", "FAILED", "WORKING", "WORKING", "FAILED", "WORKING"]


def test_a_flapping_session_refuses_sends_while_it_reports_failed() -> None:
    now = [0.0]
    with SimulatorServer(["a"], clock=lambda: now[0]) as server:
        control(server.url, "a", "flap", {"period_ms": 1000})
        refused = send(server.url)
        now[0] = 1.5
        accepted = send(server.url)

    assert refused[0] == 422
    assert accepted[0] == 201


# --- Sending --------------------------------------------------------------------------


def test_send_text_is_accepted_and_recorded(sim: SimulatorServer) -> None:
    code, body = send(sim.url, "a", key="k-1", text="Your order shipped")

    assert code == 201
    assert body["id"].startswith(f"true_{CHAT}_")
    suffix = body["id"].rsplit("_", 1)[1]
    assert len(suffix) == 20
    assert int(suffix, 16) >= 0
    assert body["body"] == "Your order shipped"
    assert body["to"] == CHAT
    assert abs(body["timestamp"] - time.time()) < 60

    code, log = http("GET", f"{sim.url}/_sim/messages")
    assert code == 200
    assert len(log) == 1
    assert log[0]["session"] == "a"
    assert log[0]["chat_id"] == CHAT
    assert log[0]["text"] == "Your order shipped"
    assert log[0]["id"] == body["id"]
    assert log[0]["idempotency_key"] == "k-1"
    assert abs(log[0]["received_at"] - time.time()) < 60


def test_a_resend_with_the_same_idempotency_key_returns_the_same_id_and_delivers_once(
    sim: SimulatorServer,
) -> None:
    first = send(sim.url, "a", key="order-42")
    again = send(sim.url, "a", key="order-42")

    assert first[0] == 201
    assert again[0] == 200
    assert again[1]["id"] == first[1]["id"]
    assert len(sim.state.messages("a")) == 1


def test_different_keys_and_keyless_sends_are_each_delivered(sim: SimulatorServer) -> None:
    ids = {send(sim.url, "a", key="k-1")[1]["id"], send(sim.url, "a", key="k-2")[1]["id"]}
    ids |= {send(sim.url, "a")[1]["id"], send(sim.url, "a")[1]["id"]}

    assert len(ids) == 4
    assert len(http("GET", f"{sim.url}/_sim/messages")[1]) == 4


def test_the_delivery_log_filters_by_session_and_can_be_cleared(sim: SimulatorServer) -> None:
    send(sim.url, "a", key="k")
    send(sim.url, "b")

    assert [m["session"] for m in http("GET", f"{sim.url}/_sim/messages?session=b")[1]] == ["b"]
    assert http("DELETE", f"{sim.url}/_sim/messages") == (200, {"cleared": 2})
    assert http("GET", f"{sim.url}/_sim/messages")[1] == []
    # Clearing also forgets keys, so each test or benchmark phase starts afresh.
    assert send(sim.url, "a", key="k")[0] == 201


@pytest.mark.parametrize(
    ("override", "field"),
    [
        ({"session": ""}, "session"),
        ({"session": 7}, "session"),
        ({"chatId": "12345@c.us"}, "chatId"),
        ({"chatId": "+15551234567@c.us"}, "chatId"),
        ({"chatId": "15551234567@s.whatsapp.net"}, "chatId"),
        ({"chatId": None}, "chatId"),
        ({"text": ""}, "text"),
        ({"text": 5}, "text"),
    ],
)
def test_a_bad_send_field_is_400_naming_it(
    sim: SimulatorServer, override: dict[str, Any], field: str
) -> None:
    payload = {"session": "a", "chatId": CHAT, "text": "hello", **override}

    code, body = http("POST", f"{sim.url}/api/sendText", payload)

    assert code == 400
    assert body["error"].startswith(f"{field}:")
    assert sim.state.messages() == []


@pytest.mark.parametrize("raw", [b"{not json", b"", b"[1, 2]", b"\xff\xfe"])
def test_a_send_body_that_is_not_a_json_object_is_400(sim: SimulatorServer, raw: bytes) -> None:
    code, body = http("POST", f"{sim.url}/api/sendText", raw=raw)

    assert code == 400
    assert "JSON object" in body["error"]


def test_a_missing_send_field_is_400_naming_it(sim: SimulatorServer) -> None:
    code, body = http("POST", f"{sim.url}/api/sendText", {"session": "a", "chatId": CHAT})

    assert code == 400
    assert body["error"].startswith("text:")


def test_sending_through_an_unknown_session_is_404(sim: SimulatorServer) -> None:
    code, body = send(sim.url, "nope")

    assert code == 404
    assert "nope" in body["error"]


@pytest.mark.parametrize(
    ("action", "status"),
    [
        ("fail", "FAILED"),
        ("stop", "STOPPED"),
        ("starting", "STARTING"),
        ("scan_qr", "SCAN_QR_CODE"),
    ],
)
def test_sending_through_a_session_that_is_not_working_is_422(
    sim: SimulatorServer, action: str, status: str
) -> None:
    control(sim.url, "a", action)

    code, body = send(sim.url, "a")

    assert code == 422
    assert "Session status is not as expected" in body["error"]
    assert f"(status {status})" in body["error"]
    assert sim.state.messages() == []


def test_broken_sends_report_working_but_answer_500(sim: SimulatorServer) -> None:
    control(sim.url, "a", "break_sends")

    assert status_of(sim.url, "a") == "WORKING"
    code, body = send(sim.url, "a")
    assert code == 500
    assert body["error"]
    assert sim.state.messages() == []
    assert send(sim.url, "b")[0] == 201


# --- API key ---------------------------------------------------------------------------


def test_an_api_key_is_required_on_the_api_but_not_on_the_controls() -> None:
    with SimulatorServer(["a"], api_key="s3cret") as server:
        session_url = f"{server.url}/api/sessions/a"
        assert http("GET", session_url)[0] == 401
        assert http("GET", session_url, headers={"X-Api-Key": "wrong"})[0] == 401
        assert send(server.url)[0] == 401
        assert http("GET", session_url, headers={"X-Api-Key": "s3cret"})[0] == 200
        body = {"session": "a", "chatId": CHAT, "text": "hi"}
        sent = http("POST", f"{server.url}/api/sendText", body, headers={"X-Api-Key": "s3cret"})
        assert sent[0] == 201
        assert control(server.url, "a", "fail")[0] == 200
        assert http("GET", f"{server.url}/_sim/messages")[0] == 200


def test_a_401_says_which_header_is_wrong() -> None:
    with SimulatorServer(["a"], api_key="s3cret") as server:
        code, body = http("GET", f"{server.url}/api/sessions/a")

    assert code == 401
    assert "X-Api-Key" in body["error"]


# --- Hang and slow ------------------------------------------------------------------------


async def fetch(
    client: aiohttp.ClientSession, method: str, url: str, body: Any = None, timeout: float = 5.0
) -> tuple[int, Any]:
    """Send one request with aiohttp; return the status and decoded JSON."""
    async with client.request(
        method, url, json=body, timeout=aiohttp.ClientTimeout(total=timeout)
    ) as response:
        return response.status, await response.json()


async def until_waiting(client: aiohttp.ClientSession, url: str, session: str, count: int) -> None:
    """Wait until the simulator holds `count` hung requests for a session (bounded)."""
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        _, sessions = await fetch(client, "GET", f"{url}/_sim/sessions")
        if next(s for s in sessions if s["name"] == session)["waiting"] == count:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"{session} never held {count} request(s)")


def test_a_hung_session_never_answers_until_recovered_while_everything_else_does(
    sim: SimulatorServer,
) -> None:
    async def scenario() -> None:
        async with aiohttp.ClientSession() as client:
            assert (await fetch(client, "POST", f"{sim.url}/_sim/sessions/a/hang"))[0] == 200
            with pytest.raises(asyncio.TimeoutError):
                await fetch(client, "GET", f"{sim.url}/api/sessions/a", timeout=0.2)

            held_status = asyncio.create_task(fetch(client, "GET", f"{sim.url}/api/sessions/a"))
            held_send = asyncio.create_task(
                fetch(
                    client,
                    "POST",
                    f"{sim.url}/api/sendText",
                    {"session": "a", "chatId": CHAT, "text": "hi"},
                )
            )
            await until_waiting(client, sim.url, "a", 2)
            assert (await fetch(client, "GET", f"{sim.url}/api/sessions/b", timeout=1))[0] == 200
            assert (await fetch(client, "GET", f"{sim.url}/_sim/health", timeout=1))[0] == 200
            assert not held_status.done()

            await fetch(client, "POST", f"{sim.url}/_sim/sessions/a/recover", timeout=1)
            assert (await held_status)[1]["status"] == "WORKING"
            assert (await held_send)[0] == 201

    asyncio.run(scenario())
    assert len(sim.state.messages("a")) == 1


def test_stopping_the_server_releases_hung_requests_promptly() -> None:
    server = SimulatorServer(["a"]).start()

    async def scenario() -> tuple[int, float]:
        async with aiohttp.ClientSession() as client:
            await fetch(client, "POST", f"{server.url}/_sim/sessions/a/hang")
            held = asyncio.create_task(fetch(client, "GET", f"{server.url}/api/sessions/a"))
            await until_waiting(client, server.url, "a", 1)
            started = time.monotonic()
            await asyncio.get_running_loop().run_in_executor(None, server.stop)
            return (await held)[0], time.monotonic() - started

    code, elapsed = asyncio.run(scenario())

    assert code == 503
    assert elapsed < 2


@pytest.mark.parametrize("path", ["/api/sessions/a", "/api/sendText"])
def test_a_slow_session_answers_after_its_delay(sim: SimulatorServer, path: str) -> None:
    code, body = control(sim.url, "a", "slow", {"delay_ms": 300})
    assert (code, body["mode"], body["delay_ms"]) == (200, "slow", 300)
    payload = {"session": "a", "chatId": CHAT, "text": "hi"} if path.endswith("Text") else None

    started = time.monotonic()
    code, _ = http("POST" if payload else "GET", f"{sim.url}{path}", payload)
    elapsed = time.monotonic() - started

    assert code in (200, 201)
    assert elapsed >= 0.3
    started = time.monotonic()
    assert status_of(sim.url, "b") == "WORKING"
    assert time.monotonic() - started < 0.3


def test_slow_defaults_to_two_seconds_and_flap_to_three(sim: SimulatorServer) -> None:
    assert control(sim.url, "a", "slow")[1]["delay_ms"] == 2000
    assert control(sim.url, "b", "flap")[1]["period_ms"] == 3000


# --- Controls ---------------------------------------------------------------------------


def test_an_unknown_action_is_400_naming_it(sim: SimulatorServer) -> None:
    code, body = control(sim.url, "a", "explode")

    assert code == 400
    assert "'explode'" in body["error"]


def test_a_control_on_an_unknown_session_is_404(sim: SimulatorServer) -> None:
    assert control(sim.url, "nope", "fail")[0] == 404


@pytest.mark.parametrize(
    ("action", "body", "field"),
    [
        ("slow", {"delay_ms": -1}, "delay_ms"),
        ("slow", {"delay_ms": "fast"}, "delay_ms"),
        ("slow", {"delay_ms": True}, "delay_ms"),
        ("flap", {"period_ms": 0}, "period_ms"),
    ],
)
def test_a_bad_control_parameter_is_400_naming_it(
    sim: SimulatorServer, action: str, body: dict[str, Any], field: str
) -> None:
    code, answer = control(sim.url, "a", action, body)

    assert code == 400
    assert answer["error"].startswith(f"{field}:")
    assert sim.state.sessions["a"].mode == "working"


def test_sessions_can_be_added_and_listed(sim: SimulatorServer) -> None:
    code, body = http("POST", f"{sim.url}/_sim/sessions", {"name": "c"})
    assert (code, body["name"], body["mode"], body["status"]) == (201, "c", "working", "WORKING")
    assert http("POST", f"{sim.url}/_sim/sessions", {"name": "c"})[0] == 200
    control(sim.url, "b", "fail")

    code, sessions = http("GET", f"{sim.url}/_sim/sessions")

    assert code == 200
    assert [(s["name"], s["mode"]) for s in sessions] == [
        ("a", "working"),
        ("b", "failed"),
        ("c", "working"),
    ]
    assert status_of(sim.url, "c") == "WORKING"


@pytest.mark.parametrize("name", ["", "has space", "a/b", None])
def test_a_bad_session_name_is_400(sim: SimulatorServer, name: str | None) -> None:
    code, body = http("POST", f"{sim.url}/_sim/sessions", {"name": name})

    assert code == 400
    assert body["error"].startswith("name:")


def test_the_simulator_health_endpoint_says_ok(sim: SimulatorServer) -> None:
    assert http("GET", f"{sim.url}/_sim/health") == (200, {"status": "ok"})


# --- Management command -------------------------------------------------------------------


def free_port() -> int:
    """Return a port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_health(url: str, process: subprocess.Popen[str]) -> None:
    """Wait until the simulator answers, failing fast if its process dies (bounded)."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"ha_simulator exited early: {process.communicate()}")
        try:
            if http("GET", f"{url}/_sim/health", timeout=1)[0] == 200:
                return
        except (ConnectionError, urllib.error.URLError):
            time.sleep(0.05)
    raise AssertionError("ha_simulator never answered /_sim/health")


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_the_management_command_serves_and_exits_cleanly_on_a_signal(signum: int) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    process = subprocess.Popen(
        [sys.executable, "manage.py", "ha_simulator", "--port", str(port), "--sessions", "a,b"],
        cwd=BASE_DIR,
        env={**os.environ, "HA_DEV": "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for_health(url, process)
        assert status_of(url, "b") == "WORKING"
        assert send(url, "a")[0] == 201

        process.send_signal(signum)
        stdout, stderr = process.communicate(timeout=10)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()

    assert process.returncode == 0, stderr
    assert f"listening on {url}" in stdout
    assert "stopped" in stdout


def test_the_management_command_refuses_a_port_in_use() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(
            [sys.executable, "manage.py", "ha_simulator", "--port", str(port)],
            cwd=BASE_DIR,
            env={**os.environ, "HA_DEV": "1"},
            capture_output=True,
            text=True,
            timeout=30,
        )

    assert result.returncode != 0
    assert f"Cannot listen on 127.0.0.1:{port}" in result.stderr
