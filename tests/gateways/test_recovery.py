"""Gateway recovery: restarting a session and fetching the QR code that re-links it."""

from __future__ import annotations

import base64
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from aiohttp import web

from ha_portal.lib.http import HttpClient, run
from masters.choices import GatewayKind, HealthStatus
from masters.gateways import Gateway, GatewayConfig, GatewayError, HealthResult, gateway_for
from masters.gateways.base import QrCode, RestartResult
from masters.gateways.cloud_api import CloudApiGateway
from masters.gateways.evolution import EvolutionGateway
from masters.gateways.waha import WahaGateway
from tests.gateways.conftest import SHORT_TIMEOUT, TIMEOUT

# Enough of a PNG for the gateway, which checks only the signature.
PNG = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(32))
JPEG = b"\xff\xd8\xff\xe0" + bytes(range(32))
WAHA_RESTART = "/api/sessions/default/restart"
WAHA_QR = "/api/default/auth/qr"
EVOLUTION_RESTART = "/instance/restart/inst"


def waha(url: str, api_key: str = "waha-key") -> GatewayConfig:
    return GatewayConfig(kind=GatewayKind.WAHA, url=url, session="default", api_key=api_key)


def evolution(url: str) -> GatewayConfig:
    return GatewayConfig(kind=GatewayKind.EVOLUTION, url=url, session="inst", api_key="evo-key")


def cloud_api(url: str) -> GatewayConfig:
    return GatewayConfig(
        kind=GatewayKind.CLOUD_API, url=url, session="1234567890", api_key="meta-token"
    )


def call(
    config: GatewayConfig, action: Callable[[Gateway], Awaitable[Any]], timeout: float = TIMEOUT
) -> Any:
    """Run one gateway call from sync code over a fresh client."""

    async def go() -> Any:
        async with HttpClient() as http:
            return await action(gateway_for(config, http, timeout))

    return run(go())


def restart(config: GatewayConfig, timeout: float = TIMEOUT) -> RestartResult:
    return call(config, lambda gateway: gateway.restart(), timeout)


def qr_code(config: GatewayConfig, timeout: float = TIMEOUT) -> QrCode | None:
    return call(config, lambda gateway: gateway.qr_code(), timeout)


def serve_bytes(body: bytes, content_type: str) -> Callable[[web.Request], Awaitable[web.Response]]:
    async def handler(request: web.Request) -> web.Response:
        return web.Response(body=body, content_type=content_type)

    return handler


# --- Restart -----------------------------------------------------------------------------


def test_waha_restart_posts_to_the_session_restart_path_with_its_api_key(fake_gateway) -> None:
    fake_gateway.reply(
        "POST", WAHA_RESTART, status=201, json={"name": "default", "status": "STARTING"}
    )

    result = restart(waha(fake_gateway.url))

    assert result == RestartResult(True, "WAHA restarted session 'default' (state STARTING)")
    assert fake_gateway.last.method == "POST"
    assert fake_gateway.last.path == WAHA_RESTART
    assert fake_gateway.last.headers["X-Api-Key"] == "waha-key"


def test_waha_restart_sends_no_api_key_header_when_none_is_configured(fake_gateway) -> None:
    fake_gateway.reply("POST", WAHA_RESTART, status=201, json={"status": "STARTING"})

    assert restart(waha(fake_gateway.url, api_key="")).ok

    assert "X-Api-Key" not in fake_gateway.last.headers


def test_a_restart_reply_without_a_state_is_still_ok(fake_gateway) -> None:
    fake_gateway.reply("POST", WAHA_RESTART, status=200, body=b"OK")

    assert restart(waha(fake_gateway.url)) == RestartResult(
        True, "WAHA restarted session 'default'"
    )


def test_evolution_restart_posts_to_the_instance_restart_path_with_its_apikey(
    fake_gateway,
) -> None:
    reply = {"instance": {"instanceName": "inst", "state": "connecting"}}
    fake_gateway.reply("POST", EVOLUTION_RESTART, json=reply)

    result = restart(evolution(fake_gateway.url))

    assert result == RestartResult(True, "Evolution restarted instance 'inst' (state connecting)")
    assert (fake_gateway.last.method, fake_gateway.last.path) == ("POST", EVOLUTION_RESTART)
    assert fake_gateway.last.headers["apikey"] == "evo-key"


def test_evolution_restart_refused_is_not_ok_in_evolutions_words(fake_gateway) -> None:
    refusal = {
        "status": 400,
        "error": "Bad Request",
        "response": {"message": ['The "inst" instance is not connected']},
    }
    fake_gateway.reply("POST", EVOLUTION_RESTART, status=400, json=refusal)

    result = restart(evolution(fake_gateway.url))

    assert result == RestartResult(
        False, 'restart failed: Evolution HTTP 400: The "inst" instance is not connected'
    )


@pytest.mark.parametrize(
    ("status", "reply", "detail"),
    [
        (500, {"message": "boom"}, "restart failed: WAHA HTTP 500: boom"),
        (503, None, "restart failed: WAHA HTTP 503"),
        (401, {"message": "Unauthorized"}, "authentication failed (HTTP 401): Unauthorized"),
        (404, {"message": "no session"}, "session 'default' not found (HTTP 404)"),
    ],
)
def test_a_waha_restart_answered_with_an_error_is_not_ok_and_says_why(
    fake_gateway, status: int, reply: Any, detail: str
) -> None:
    fake_gateway.reply("POST", WAHA_RESTART, status=status, json=reply)

    result = restart(waha(fake_gateway.url))

    assert result.ok is False
    assert detail in result.detail


def test_a_restart_that_times_out_is_not_ok_and_does_not_raise(fake_gateway) -> None:
    fake_gateway.hang("POST", WAHA_RESTART)

    result = restart(waha(fake_gateway.url), timeout=SHORT_TIMEOUT)

    assert result == RestartResult(False, "restart failed: timed out after 0.3s")


def test_a_restart_whose_connection_is_refused_is_not_ok_and_does_not_raise(refused_url) -> None:
    result = restart(evolution(refused_url))

    assert result.ok is False
    assert result.detail.startswith("restart failed: cannot connect to 127.0.0.1:")


def test_a_restart_of_a_master_without_a_url_is_not_ok(fake_gateway) -> None:
    result = restart(waha(""))

    assert result == RestartResult(False, "restart failed: WAHA gateway has no url configured")


def test_cloud_api_has_no_restart_and_calls_nothing(fake_gateway) -> None:
    result = restart(cloud_api(fake_gateway.url))

    assert result == RestartResult(False, "Cloud API has no restart")
    assert fake_gateway.requests == []


def test_each_kind_says_whether_it_can_restart_and_serve_a_qr_code() -> None:
    assert (WahaGateway.supports_restart, WahaGateway.supports_qr) == (True, True)
    assert (EvolutionGateway.supports_restart, EvolutionGateway.supports_qr) == (True, False)
    assert (CloudApiGateway.supports_restart, CloudApiGateway.supports_qr) == (False, False)


# --- Needs re-linking ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("gateway_class", "state", "expected"),
    [
        (WahaGateway, "SCAN_QR_CODE", True),
        (WahaGateway, "FAILED", False),
        (WahaGateway, "STOPPED", False),
        (WahaGateway, "STARTING", False),
        (WahaGateway, "WORKING", False),
        (EvolutionGateway, "refused", True),
        (EvolutionGateway, "close", False),
        (EvolutionGateway, "connecting", False),
        (EvolutionGateway, "open", False),
        # The states are the gateways' own spellings; another kind's means nothing.
        (EvolutionGateway, "SCAN_QR_CODE", False),
        (CloudApiGateway, "BLOCKED", False),
        (WahaGateway, "", False),
    ],
)
def test_only_a_logged_out_session_needs_re_linking(
    gateway_class: type[Gateway], state: str, expected: bool
) -> None:
    result = HealthResult(HealthStatus.FAILED, 12.0, "probe", gateway_state=state)

    assert gateway_class.needs_relink(result) is expected


def test_a_probe_that_finds_waha_waiting_for_a_qr_scan_needs_re_linking(
    fake_gateway, check_health
) -> None:
    fake_gateway.reply("GET", "/api/sessions/default", json={"status": "SCAN_QR_CODE"})
    config = waha(fake_gateway.url)

    result = check_health(config)

    assert result.status == HealthStatus.FAILED
    assert gateway_for(config, HttpClient()).needs_relink(result) is True


def test_a_probe_that_got_no_answer_does_not_need_re_linking(refused_url, check_health) -> None:
    config = waha(refused_url)

    result = check_health(config)

    assert result.status == HealthStatus.FAILED
    assert WahaGateway.needs_relink(result) is False


# --- QR code ------------------------------------------------------------------------------


def test_waha_serves_the_qr_code_as_a_png_image(fake_gateway) -> None:
    fake_gateway.on("GET", WAHA_QR, serve_bytes(PNG, "image/png"))

    qr = qr_code(waha(fake_gateway.url))

    assert qr == QrCode("image/png", PNG)
    assert qr.data_uri == "data:image/png;base64," + base64.b64encode(PNG).decode()
    assert fake_gateway.last.path == WAHA_QR
    assert fake_gateway.last.headers["Accept"] == "image/png"
    assert fake_gateway.last.headers["X-Api-Key"] == "waha-key"


@pytest.mark.parametrize(("mimetype", "image"), [("image/png", PNG), ("image/jpeg", JPEG)])
def test_waha_qr_code_in_the_json_base64_form_is_decoded(
    fake_gateway, mimetype: str, image: bytes
) -> None:
    reply = {"mimetype": mimetype, "data": base64.b64encode(image).decode()}
    fake_gateway.reply("GET", WAHA_QR, json=reply)

    assert qr_code(waha(fake_gateway.url)) == QrCode(mimetype, image)


def test_a_qr_code_of_a_session_not_waiting_for_a_scan_raises_in_wahas_words(
    fake_gateway,
) -> None:
    refusal = {"error": "session is not waiting for a QR scan (status WORKING)"}
    fake_gateway.reply("GET", WAHA_QR, status=422, json=refusal)

    with pytest.raises(GatewayError) as caught:
        qr_code(waha(fake_gateway.url))

    assert caught.value.http_status == 422
    assert caught.value.detail == (
        "WAHA HTTP 422: session is not waiting for a QR scan (status WORKING)"
    )


def test_a_qr_code_request_that_times_out_raises(fake_gateway) -> None:
    fake_gateway.hang("GET", WAHA_QR)

    with pytest.raises(GatewayError, match=r"timed out after 0\.3s"):
        qr_code(waha(fake_gateway.url), timeout=SHORT_TIMEOUT)


@pytest.mark.parametrize(
    ("body", "content_type", "reason"),
    [
        (b"<html>login</html>", "text/html", "not a PNG or JPEG image"),
        (b'{"value": "2@abc"}', "application/json", "no mimetype in reply"),
        (b'{"mimetype": "image/png", "data": "***"}', "application/json", "not base64"),
        (
            b'{"mimetype": "image/svg+xml", "data": "PHN2Zz4="}',
            "application/json",
            "'image/svg+xml' is not image/png or image/jpeg",
        ),
        (
            b'{"mimetype": "image/png", "data": "PHN2Zz4="}',
            "application/json",
            "data is not a valid image/png image",
        ),
        (b"{not json", "application/json", "neither an image nor JSON"),
    ],
)
def test_a_qr_code_reply_that_is_not_a_png_or_jpeg_is_refused(
    fake_gateway, body: bytes, content_type: str, reason: str
) -> None:
    fake_gateway.on("GET", WAHA_QR, serve_bytes(body, content_type))

    with pytest.raises(GatewayError) as caught:
        qr_code(waha(fake_gateway.url))

    assert caught.value.detail.startswith("malformed QR code reply: ")
    assert reason in caught.value.detail


@pytest.mark.parametrize("make_config", [evolution, cloud_api])
def test_gateways_without_a_qr_code_return_none_and_call_nothing(
    fake_gateway, make_config: Callable[[str], GatewayConfig]
) -> None:
    assert qr_code(make_config(fake_gateway.url)) is None
    assert fake_gateway.requests == []
