"""WAHA gateway against a real local HTTP server playing WAHA."""

from __future__ import annotations

import pytest

from masters.choices import GatewayKind, HealthStatus
from masters.gateways import GatewayConfig, GatewayError

SESSION_PATH = "/api/sessions/default"


@pytest.fixture
def config(fake_gateway):
    return GatewayConfig(
        kind=GatewayKind.WAHA, url=fake_gateway.url, session="default", api_key="waha-key"
    )


def session(status: str) -> dict:
    return {"name": "default", "status": status, "me": {"id": "971505760056@c.us"}}


def test_it_reports_a_working_session_as_healthy(fake_gateway, config, check_health):
    fake_gateway.reply("GET", SESSION_PATH, json=session("WORKING"))

    result = check_health(config)

    assert result.status == HealthStatus.HEALTHY
    assert result.gateway_state == "WORKING"
    assert result.detail == "WAHA status WORKING"
    assert result.latency_ms > 0
    assert fake_gateway.last.headers["X-Api-Key"] == "waha-key"


def test_it_sends_no_api_key_header_when_none_is_configured(fake_gateway, check_health):
    fake_gateway.reply("GET", SESSION_PATH, json=session("WORKING"))
    config = GatewayConfig(kind=GatewayKind.WAHA, url=fake_gateway.url, session="default")

    check_health(config)

    assert "X-Api-Key" not in fake_gateway.last.headers


def test_it_marks_a_starting_session_as_degraded_not_failed(fake_gateway, config, check_health):
    fake_gateway.reply("GET", SESSION_PATH, json=session("STARTING"))

    result = check_health(config)

    assert result.status == HealthStatus.DEGRADED
    assert result.gateway_state == "STARTING"


def test_it_marks_scan_qr_code_as_failed_and_asks_for_re_linking(
    fake_gateway, config, check_health
):
    fake_gateway.reply("GET", SESSION_PATH, json=session("SCAN_QR_CODE"))

    result = check_health(config)

    assert result.status == HealthStatus.FAILED
    assert result.gateway_state == "SCAN_QR_CODE"
    assert result.detail.startswith("WAHA status SCAN_QR_CODE")
    assert "re-linking" in result.detail


@pytest.mark.parametrize("state", ["FAILED", "STOPPED"])
def test_it_marks_failed_and_stopped_sessions_as_failed(fake_gateway, config, check_health, state):
    fake_gateway.reply("GET", SESSION_PATH, json=session(state))

    result = check_health(config)

    assert result.status == HealthStatus.FAILED
    assert result.detail.startswith(f"WAHA status {state}")


def test_it_marks_an_unknown_status_as_failed_and_names_it(fake_gateway, config, check_health):
    fake_gateway.reply("GET", SESSION_PATH, json=session("NAPPING"))

    result = check_health(config)

    assert result.status == HealthStatus.FAILED
    assert result.detail == "WAHA status NAPPING (unknown state)"


def test_it_marks_a_missing_session_as_failed(fake_gateway, config, check_health):
    fake_gateway.reply(
        "GET", SESSION_PATH, status=404, json={"statusCode": 404, "message": "Session not found"}
    )

    result = check_health(config)

    assert result.status == HealthStatus.FAILED
    assert "session 'default' not found" in result.detail


def test_it_marks_a_rejected_api_key_as_failed(fake_gateway, config, check_health):
    fake_gateway.reply(
        "GET", SESSION_PATH, status=401, json={"statusCode": 401, "message": "Unauthorized"}
    )

    result = check_health(config)

    assert result.status == HealthStatus.FAILED
    assert result.detail == "WAHA authentication failed (HTTP 401): Unauthorized"


def test_it_marks_a_server_error_as_failed_with_its_latency(fake_gateway, config, check_health):
    fake_gateway.reply("GET", SESSION_PATH, status=502, body=b"Bad Gateway")

    result = check_health(config)

    assert result.status == HealthStatus.FAILED
    assert result.detail == "WAHA HTTP 502: Bad Gateway"
    assert result.latency_ms > 0


def test_it_marks_a_non_json_reply_as_failed(fake_gateway, config, check_health):
    fake_gateway.reply("GET", SESSION_PATH, body=b"<html>login</html>")

    result = check_health(config)

    assert result.status == HealthStatus.FAILED
    assert result.detail.startswith("malformed reply: response is not JSON")


def test_it_marks_a_reply_without_status_as_failed(fake_gateway, config, check_health):
    fake_gateway.reply("GET", SESSION_PATH, json={"name": "default"})

    result = check_health(config)

    assert result.status == HealthStatus.FAILED
    assert result.detail == "malformed reply: no status in reply"


def test_it_marks_a_gateway_that_never_answers_as_failed_after_the_timeout(
    fake_gateway, config, check_health
):
    fake_gateway.hang("GET", SESSION_PATH)

    result = check_health(config, timeout=0.3)

    assert result.status == HealthStatus.FAILED
    assert result.detail == "timed out after 0.3s"
    assert result.latency_ms is None


def test_it_marks_a_refused_connection_as_failed(refused_url, check_health):
    config = GatewayConfig(kind=GatewayKind.WAHA, url=refused_url, session="default")

    result = check_health(config)

    assert result.status == HealthStatus.FAILED
    assert result.detail.startswith("cannot connect to 127.0.0.1:")
    assert result.latency_ms is None


def test_it_still_classifies_a_slow_answer_by_its_state(fake_gateway, config, check_health):
    fake_gateway.reply("GET", SESSION_PATH, json=session("WORKING"), delay=0.1)

    result = check_health(config, timeout=2.0)

    assert result.status == HealthStatus.HEALTHY
    assert result.latency_ms >= 100


def test_it_sends_a_text_and_returns_the_serialized_message_id(fake_gateway, config, send_text):
    fake_gateway.reply(
        "POST",
        "/api/sendText",
        status=201,
        json={"id": {"fromMe": True, "id": "ABC", "_serialized": "true_971505760056@c.us_ABC"}},
    )

    message_id = send_text(config, to="+971505760056", text="Hello", idempotency_key="msg-7")

    assert message_id == "true_971505760056@c.us_ABC"
    request = fake_gateway.last
    assert request.json == {"session": "default", "chatId": "971505760056@c.us", "text": "Hello"}
    assert request.headers["X-Api-Key"] == "waha-key"
    assert request.headers["Idempotency-Key"] == "msg-7"


def test_it_accepts_a_plain_string_message_id(fake_gateway, config, send_text):
    fake_gateway.reply("POST", "/api/sendText", json={"id": "true_971505760056@c.us_DEF"})

    assert send_text(config) == "true_971505760056@c.us_DEF"


def test_it_reads_the_key_id_of_the_noweb_engine(fake_gateway, config, send_text):
    fake_gateway.reply("POST", "/api/sendText", json={"key": {"id": "BAE5F1", "fromMe": True}})

    assert send_text(config) == "BAE5F1"


@pytest.mark.parametrize(
    ("reply", "detail"),
    [
        ({"ok": True}, "malformed reply: no id in reply"),
        ({"id": {"fromMe": True}}, "malformed reply: no id._serialized in reply"),
        ({"id": ""}, "malformed reply: id is neither a string nor an object with _serialized"),
    ],
)
def test_it_calls_a_send_reply_without_an_id_malformed_and_retryable(
    fake_gateway, config, send_text, reply, detail
):
    fake_gateway.reply("POST", "/api/sendText", json=reply)

    with pytest.raises(GatewayError) as caught:
        send_text(config)

    assert caught.value.detail == detail
    assert caught.value.retryable is True


def test_it_calls_a_non_json_send_reply_retryable(fake_gateway, config, send_text):
    fake_gateway.reply("POST", "/api/sendText", body=b"sent!")

    with pytest.raises(GatewayError) as caught:
        send_text(config)

    assert caught.value.retryable is True
    assert caught.value.detail.startswith("malformed reply: response is not JSON")


def test_it_does_not_retry_a_message_the_gateway_rejects(fake_gateway, config, send_text):
    fake_gateway.reply(
        "POST",
        "/api/sendText",
        status=400,
        json={"statusCode": 400, "message": ["chatId must be a string"], "error": "Bad Request"},
    )

    with pytest.raises(GatewayError) as caught:
        send_text(config)

    assert caught.value.retryable is False
    assert caught.value.http_status == 400
    assert caught.value.detail == "WAHA HTTP 400: chatId must be a string"


def test_it_retries_when_the_session_is_not_working(fake_gateway, config, send_text):
    fake_gateway.reply(
        "POST",
        "/api/sendText",
        status=422,
        json={
            "error": "Session status is not as expected. Try again later or restart the session",
            "session": "default",
            "status": "SCAN_QR_CODE",
            "expected": ["WORKING"],
        },
    )

    with pytest.raises(GatewayError) as caught:
        send_text(config)

    assert caught.value.retryable is True
    assert caught.value.http_status == 422
    assert caught.value.detail.endswith("(session status SCAN_QR_CODE)")


@pytest.mark.parametrize("status", [401, 403, 429, 500, 503])
def test_it_retries_auth_rate_limit_and_server_errors(fake_gateway, config, send_text, status):
    fake_gateway.reply("POST", "/api/sendText", status=status, json={"message": "nope"})

    with pytest.raises(GatewayError) as caught:
        send_text(config)

    assert caught.value.retryable is True
    assert caught.value.http_status == status


def test_it_retries_a_send_the_gateway_never_answers(fake_gateway, config, send_text):
    fake_gateway.hang("POST", "/api/sendText")

    with pytest.raises(GatewayError) as caught:
        send_text(config, timeout=0.3)

    assert caught.value.retryable is True
    assert caught.value.detail == "timed out after 0.3s"
    assert caught.value.http_status is None


def test_it_retries_a_send_whose_connection_is_refused(refused_url, send_text):
    config = GatewayConfig(kind=GatewayKind.WAHA, url=refused_url, session="default")

    with pytest.raises(GatewayError) as caught:
        send_text(config)

    assert caught.value.retryable is True
    assert caught.value.detail.startswith("cannot connect to 127.0.0.1:")


def test_it_refuses_an_invalid_number_without_calling_the_gateway(fake_gateway, config, send_text):
    with pytest.raises(GatewayError) as caught:
        send_text(config, to="+97150abc")

    assert caught.value.retryable is False
    assert caught.value.detail == "invalid recipient number '+97150abc'"
    assert fake_gateway.requests == []
