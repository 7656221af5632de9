"""The simulator restarts sessions and serves QR codes the way WAHA does, over real HTTP."""

from __future__ import annotations

import base64
import json
import struct
import urllib.error
import urllib.request
import zlib
from collections.abc import Iterator
from typing import Any

import pytest

from ha_portal.lib.http import HttpClient, run
from masters.choices import GatewayKind, HealthStatus
from masters.gateways import GatewayConfig, HealthResult
from masters.gateways.base import QrCode, RestartResult
from masters.gateways.simulator import SimulatorServer
from masters.gateways.waha import WahaGateway

CHAT = "15551234567@c.us"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# 25 modules plus a 4-module quiet zone on each side, 4 pixels a module.
QR_PIXELS = (25 + 2 * 4) * 4


class Clock:
    """A clock the test moves by hand, so restarts finish without sleeping."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def request(
    method: str, url: str, body: Any = None, headers: dict[str, str] | None = None
) -> tuple[int, str, bytes]:
    """Send one request; return the status, the Content-Type and the raw body."""
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=5) as response:
            return response.status, response.headers.get_content_type(), response.read()
    except urllib.error.HTTPError as error:
        with error:
            return error.code, error.headers.get_content_type(), error.read()


def call(method: str, url: str, body: Any = None, **headers: str) -> tuple[int, Any]:
    """Send one request; return the status and the decoded JSON body."""
    code, _, raw = request(method, url, body, headers)
    return code, json.loads(raw)


def control(url: str, session: str, action: str, body: Any = None) -> tuple[int, Any]:
    return call("POST", f"{url}/_sim/sessions/{session}/{action}", body)


def restart(url: str, session: str = "a") -> tuple[int, Any]:
    return call("POST", f"{url}/api/sessions/{session}/restart")


def status_of(url: str, session: str = "a") -> str:
    code, body = call("GET", f"{url}/api/sessions/{session}")
    assert code == 200, body
    return body["status"]


def described(url: str, session: str = "a") -> dict[str, Any]:
    """Return the session as GET /_sim/sessions lists it."""
    sessions = call("GET", f"{url}/_sim/sessions")[1]
    return next(s for s in sessions if s["name"] == session)


def send(url: str, session: str = "a") -> int:
    body = {"session": session, "chatId": CHAT, "text": "hello"}
    return call("POST", f"{url}/api/sendText", body)[0]


def read_png(data: bytes) -> tuple[int, int, bytes]:
    """Check a PNG's structure and CRCs; return its width, height and decompressed rows."""
    assert data.startswith(PNG_SIGNATURE)
    position, chunks, idat = len(PNG_SIGNATURE), [], b""
    while position < len(data):
        (length,) = struct.unpack(">I", data[position : position + 4])
        kind = data[position + 4 : position + 8]
        body = data[position + 8 : position + 8 + length]
        (crc,) = struct.unpack(">I", data[position + 8 + length : position + 12 + length])
        assert crc == zlib.crc32(kind + body), f"bad CRC in {kind!r}"
        chunks.append(kind)
        idat += body if kind == b"IDAT" else b""
        position += 12 + length
    assert chunks[0] == b"IHDR" and chunks[-1] == b"IEND"
    ihdr = data[16:29]
    width, height, depth, colour, _, _, _ = struct.unpack(">IIBBBBB", ihdr)
    assert (depth, colour) == (8, 0), "8-bit greyscale"
    rows = zlib.decompress(idat)
    assert len(rows) == height * (width + 1)
    return width, height, rows


def pixel(rows: bytes, width: int, x: int, y: int) -> int:
    return rows[y * (width + 1) + 1 + x]


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def sim(clock: Clock) -> Iterator[SimulatorServer]:
    with SimulatorServer(["a", "b"], clock=clock) as server:
        yield server


# --- Restart ----------------------------------------------------------------------------


def test_a_restart_brings_a_crashed_session_back_after_restart_ms(
    sim: SimulatorServer, clock: Clock
) -> None:
    control(sim.url, "a", "crash")
    assert status_of(sim.url) == "FAILED"

    code, body = restart(sim.url)

    assert code == 201
    assert (body["name"], body["status"], body["me"]) == ("a", "STARTING", None)
    clock.advance(0.5)
    assert status_of(sim.url) == "STARTING"
    assert send(sim.url) == 422
    clock.advance(0.5)
    assert status_of(sim.url) == "WORKING"
    assert send(sim.url) == 201
    assert (described(sim.url)["mode"], described(sim.url)["restarts"]) == ("working", 1)


@pytest.mark.parametrize("action", ["fail", "crash", "stop", "starting", "flap", "break_sends"])
def test_a_restart_fixes_every_broken_mode_but_a_logged_out_one(
    sim: SimulatorServer, clock: Clock, action: str
) -> None:
    control(sim.url, "a", action, {"restart_ms": 200})

    assert restart(sim.url)[0] == 201
    assert described(sim.url)["status"] == "STARTING"
    clock.advance(0.25)

    assert status_of(sim.url) == "WORKING"
    assert send(sim.url) == 201


def test_restarting_a_working_session_passes_through_starting_as_waha_does(
    sim: SimulatorServer, clock: Clock
) -> None:
    assert restart(sim.url)[1]["status"] == "STARTING"
    assert status_of(sim.url, "b") == "WORKING"
    clock.advance(1.0)

    assert status_of(sim.url) == "WORKING"


def test_a_restart_cannot_log_a_logged_out_session_back_in(
    sim: SimulatorServer, clock: Clock
) -> None:
    control(sim.url, "a", "logout")

    code, body = restart(sim.url)
    clock.advance(60)

    assert (code, body["status"]) == (201, "SCAN_QR_CODE")
    assert status_of(sim.url) == "SCAN_QR_CODE"
    assert send(sim.url) == 422
    assert described(sim.url)["restarts"] == 1


def test_an_unrestartable_session_answers_restarts_with_500_and_stays_down(
    sim: SimulatorServer, clock: Clock
) -> None:
    control(sim.url, "a", "crash")
    assert control(sim.url, "a", "unrestartable")[1]["restartable"] is False

    code, body = restart(sim.url)
    clock.advance(5)

    assert code == 500
    assert "refuse restarts" in body["error"]
    assert status_of(sim.url) == "FAILED"
    assert control(sim.url, "a", "restartable")[1]["restartable"] is True
    assert restart(sim.url)[0] == 201


def test_every_restart_request_is_counted_per_session(sim: SimulatorServer) -> None:
    control(sim.url, "a", "unrestartable")
    restart(sim.url)
    control(sim.url, "a", "restartable")
    restart(sim.url)
    restart(sim.url)

    assert described(sim.url, "a")["restarts"] == 3
    assert described(sim.url, "b")["restarts"] == 0


def test_restart_ms_defaults_to_one_second_and_is_checked(sim: SimulatorServer) -> None:
    assert described(sim.url)["restart_ms"] == 1000
    assert control(sim.url, "a", "crash", {"restart_ms": 250})[1]["restart_ms"] == 250

    code, body = control(sim.url, "a", "crash", {"restart_ms": -1})

    assert code == 400
    assert body["error"].startswith("restart_ms:")


def test_restarting_an_unknown_session_is_404(sim: SimulatorServer) -> None:
    assert restart(sim.url, "nope")[0] == 404


def test_a_hung_session_does_not_answer_a_restart_either(sim: SimulatorServer) -> None:
    control(sim.url, "a", "hang")
    req = urllib.request.Request(f"{sim.url}/api/sessions/a/restart", method="POST")

    with pytest.raises(TimeoutError):
        urllib.request.urlopen(req, timeout=0.2)


# --- QR code and re-linking ---------------------------------------------------------------


def test_a_logged_out_session_serves_its_qr_code_as_a_png(sim: SimulatorServer) -> None:
    control(sim.url, "a", "logout")

    code, content_type, png = request("GET", f"{sim.url}/api/a/auth/qr", headers={})

    assert (code, content_type) == (200, "image/png")
    width, height, rows = read_png(png)
    assert (width, height) == (QR_PIXELS, QR_PIXELS)
    # White quiet zone in the corner, then the top-left finder square's dark edge.
    assert pixel(rows, width, 0, 0) == 255
    assert pixel(rows, width, 16, 16) == 0
    assert {pixel(rows, width, x, 60) for x in range(width)} == {0, 255}


def test_the_qr_code_comes_as_json_base64_or_raw_text_on_request(sim: SimulatorServer) -> None:
    control(sim.url, "a", "scan_qr")
    _, _, png = request("GET", f"{sim.url}/api/a/auth/qr", headers={"Accept": "image/png"})

    code, body = call("GET", f"{sim.url}/api/a/auth/qr", Accept="application/json")
    raw = call("GET", f"{sim.url}/api/a/auth/qr?format=raw")

    assert (code, body["mimetype"]) == (200, "image/png")
    assert base64.b64decode(body["data"]) == png
    assert raw[0] == 200
    assert raw[1]["value"].startswith("ha-simulator:a:")


def test_each_session_has_its_own_qr_code(sim: SimulatorServer) -> None:
    control(sim.url, "a", "logout")
    control(sim.url, "b", "logout")

    first = request("GET", f"{sim.url}/api/a/auth/qr")[2]
    second = request("GET", f"{sim.url}/api/b/auth/qr")[2]

    assert read_png(first)[:2] == read_png(second)[:2]
    assert first != second


@pytest.mark.parametrize(("action", "status"), [("recover", "WORKING"), ("crash", "FAILED")])
def test_a_session_not_waiting_for_a_scan_has_no_qr_code(
    sim: SimulatorServer, action: str, status: str
) -> None:
    control(sim.url, "a", action)

    code, body = call("GET", f"{sim.url}/api/a/auth/qr")

    assert code == 422
    assert body["error"] == f"session is not waiting for a QR scan (status {status})"


def test_scanning_the_qr_code_links_the_session_again(sim: SimulatorServer) -> None:
    control(sim.url, "a", "logout")

    code, body = control(sim.url, "a", "link")

    assert (code, body["mode"], body["status"]) == (200, "working", "WORKING")
    assert send(sim.url) == 201
    assert call("GET", f"{sim.url}/api/a/auth/qr")[0] == 422


def test_linking_a_session_that_shows_no_qr_code_is_409(sim: SimulatorServer) -> None:
    code, body = control(sim.url, "a", "link")

    assert code == 409
    assert "(status WORKING)" in body["error"]


def test_restart_and_qr_code_need_the_api_key_when_one_is_set() -> None:
    key = {"X-Api-Key": "s3cret"}
    with SimulatorServer(["a"], api_key="s3cret") as server:
        control(server.url, "a", "logout")
        restart_url, qr_url = f"{server.url}/api/sessions/a/restart", f"{server.url}/api/a/auth/qr"

        assert request("POST", restart_url)[0] == 401
        assert request("GET", qr_url)[0] == 401
        assert request("POST", restart_url, headers=key)[0] == 201
        assert request("GET", qr_url, headers=key)[0] == 200


# --- End to end: the WAHA gateway recovers a session on the simulator ---------------------


def probe(config: GatewayConfig) -> HealthResult:
    return run(with_gateway(config, "health"))


async def with_gateway(config: GatewayConfig, method: str) -> Any:
    async with HttpClient() as http:
        return await getattr(WahaGateway(config, http, timeout=2.0), method)()


def test_the_waha_gateway_restarts_a_crashed_session_and_fetches_a_logged_out_ones_qr_code(
    clock: Clock,
) -> None:
    with SimulatorServer(["a"], api_key="k", clock=clock) as sim:
        config = GatewayConfig(kind=GatewayKind.WAHA, url=sim.url, session="a", api_key="k")
        control(sim.url, "a", "crash")
        assert probe(config).status == HealthStatus.FAILED

        restarted: RestartResult = run(with_gateway(config, "restart"))
        assert restarted == RestartResult(True, "WAHA restarted session 'a' (state STARTING)")
        assert probe(config).status == HealthStatus.DEGRADED
        clock.advance(1.0)
        assert probe(config).status == HealthStatus.HEALTHY

        control(sim.url, "a", "logout")
        down = probe(config)
        assert (down.status, WahaGateway.needs_relink(down)) == (HealthStatus.FAILED, True)
        qr: QrCode = run(with_gateway(config, "qr_code"))
        assert qr.mimetype == "image/png"
        assert qr.data.startswith(PNG_SIGNATURE)
        assert read_png(qr.data)[:2] == (QR_PIXELS, QR_PIXELS)

        control(sim.url, "a", "link")
        assert probe(config).status == HealthStatus.HEALTHY
        assert sim.state.sessions["a"].restarts == 1
