"""Meta Cloud API gateway against a real local HTTP server playing the Graph API."""

from __future__ import annotations

import pytest

from ha_portal.lib.http import HttpClient
from masters.choices import GatewayKind, HealthStatus
from masters.gateways import GatewayConfig, GatewayError, gateway_for

PHONE_PATH = "/v21.0/1234567890"
SEND_PATH = "/v21.0/1234567890/messages"


@pytest.fixture
def config(fake_gateway):
    return GatewayConfig(
        kind=GatewayKind.CLOUD_API, url=fake_gateway.url, session="1234567890", api_key="EAAG-tok"
    )


def health(can_send: str, errors: list[dict] | None = None) -> dict:
    entity = {"entity_type": "PHONE_NUMBER", "id": "1234567890", "can_send_message": can_send}
    if errors is not None:
        entity["errors"] = errors
    return {"health_status": {"can_send_message": can_send, "entities": [entity]}, "id": "1"}


def graph_error(message: str, code: int, **extra) -> dict:
    return {"error": {"message": message, "type": "OAuthException", "code": code, **extra}}


def test_it_reports_an_available_number_as_healthy(fake_gateway, config, check_health):
    fake_gateway.reply("GET", PHONE_PATH, json=health("AVAILABLE"))

    result = check_health(config)

    assert result.status == HealthStatus.HEALTHY
    assert result.gateway_state == "AVAILABLE"
    assert result.detail == "Cloud API can_send_message AVAILABLE"
    request = fake_gateway.last
    assert request.query == {"fields": "health_status"}
    assert request.headers["Authorization"] == "Bearer EAAG-tok"


def test_it_marks_a_limited_number_as_degraded(fake_gateway, config, check_health):
    fake_gateway.reply("GET", PHONE_PATH, json=health("LIMITED"))

    result = check_health(config)

    assert result.status == HealthStatus.DEGRADED
    assert result.gateway_state == "LIMITED"


def test_it_marks_a_blocked_number_as_failed_with_meta_s_reasons(
    fake_gateway, config, check_health
):
    errors = [
        {"error_code": 141006, "error_description": "Payment method is missing."},
        {"error_code": 141010, "error_description": "Business is not verified."},
    ]
    fake_gateway.reply("GET", PHONE_PATH, json=health("BLOCKED", errors))

    result = check_health(config)

    assert result.status == HealthStatus.FAILED
    assert result.detail == (
        "Cloud API can_send_message BLOCKED: Payment method is missing.; Business is not verified."
    )


def test_it_marks_an_expired_token_as_failed(fake_gateway, config, check_health):
    fake_gateway.reply(
        "GET",
        PHONE_PATH,
        status=401,
        json=graph_error("Error validating access token: Session has expired", 190),
    )

    result = check_health(config)

    assert result.status == HealthStatus.FAILED
    assert result.detail == (
        "Cloud API authentication failed (HTTP 401): "
        "Error validating access token: Session has expired [code 190]"
    )


def test_it_marks_a_server_error_as_failed(fake_gateway, config, check_health):
    fake_gateway.reply("GET", PHONE_PATH, status=503, body=b"Service Unavailable")

    result = check_health(config)

    assert result.status == HealthStatus.FAILED
    assert result.detail == "Cloud API HTTP 503: Service Unavailable"


@pytest.mark.parametrize(
    ("reply", "detail"),
    [
        ({"id": "1"}, "malformed reply: no health_status in reply"),
        ({"health_status": {}}, "malformed reply: no health_status.can_send_message in reply"),
    ],
)
def test_it_marks_a_reply_without_health_status_as_failed(
    fake_gateway, config, check_health, reply, detail
):
    fake_gateway.reply("GET", PHONE_PATH, json=reply)

    result = check_health(config)

    assert result.status == HealthStatus.FAILED
    assert result.detail == detail


def test_it_marks_a_non_json_reply_as_failed(fake_gateway, config, check_health):
    fake_gateway.reply("GET", PHONE_PATH, body=b"<html>captive portal</html>")

    result = check_health(config)

    assert result.status == HealthStatus.FAILED
    assert result.detail.startswith("malformed reply: response is not JSON")


def test_it_marks_a_gateway_that_never_answers_as_failed_after_the_timeout(
    fake_gateway, config, check_health
):
    fake_gateway.hang("GET", PHONE_PATH)

    result = check_health(config, timeout=0.3)

    assert result.status == HealthStatus.FAILED
    assert result.detail == "timed out after 0.3s"


def test_it_marks_a_refused_connection_as_failed(refused_url, check_health):
    config = GatewayConfig(kind=GatewayKind.CLOUD_API, url=refused_url, session="1234567890")

    result = check_health(config)

    assert result.status == HealthStatus.FAILED
    assert result.detail.startswith("cannot connect to 127.0.0.1:")


def test_it_talks_to_graph_facebook_com_when_no_url_is_set():
    config = GatewayConfig(kind=GatewayKind.CLOUD_API, url="", session="1234567890")

    gateway = gateway_for(config, HttpClient())

    assert (
        gateway.health_url() == "https://graph.facebook.com/v21.0/1234567890?fields=health_status"
    )


def test_it_sends_a_text_and_returns_the_wamid(fake_gateway, config, send_text):
    fake_gateway.reply(
        "POST",
        SEND_PATH,
        json={
            "messaging_product": "whatsapp",
            "contacts": [{"input": "971505760056", "wa_id": "971505760056"}],
            "messages": [{"id": "wamid.HBgM"}],
        },
    )

    message_id = send_text(config, to="+971505760056", text="Hello", idempotency_key="msg-9")

    assert message_id == "wamid.HBgM"
    request = fake_gateway.last
    assert request.json == {
        "messaging_product": "whatsapp",
        "recipient_type": "individual",
        "to": "971505760056",
        "type": "text",
        "text": {"body": "Hello"},
    }
    assert request.headers["Authorization"] == "Bearer EAAG-tok"
    assert request.headers["Idempotency-Key"] == "msg-9"


@pytest.mark.parametrize("reply", [{"messages": []}, {"messages": [{}]}, {"contacts": []}])
def test_it_calls_a_send_reply_without_a_message_id_malformed_and_retryable(
    fake_gateway, config, send_text, reply
):
    fake_gateway.reply("POST", SEND_PATH, json=reply)

    with pytest.raises(GatewayError) as caught:
        send_text(config)

    assert caught.value.retryable is True
    assert caught.value.detail.startswith("malformed reply: no messages")


@pytest.mark.parametrize(
    ("code", "message"),
    [(131026, "Message undeliverable"), (100, "Invalid parameter"), (131047, "Re-engagement")],
)
def test_it_does_not_retry_a_message_meta_rejects(fake_gateway, config, send_text, code, message):
    fake_gateway.reply("POST", SEND_PATH, status=400, json=graph_error(message, code))

    with pytest.raises(GatewayError) as caught:
        send_text(config)

    assert caught.value.retryable is False
    assert caught.value.http_status == 400
    assert caught.value.detail == f"Cloud API HTTP 400: {message} [code {code}]"


def test_it_names_the_invalid_parameter_meta_complains_about(fake_gateway, config, send_text):
    reply = graph_error(
        "(#100) Invalid parameter", 100, error_data={"details": "Param to is not a valid number"}
    )
    fake_gateway.reply("POST", SEND_PATH, status=400, json=reply)

    with pytest.raises(GatewayError) as caught:
        send_text(config)

    assert caught.value.detail == (
        "Cloud API HTTP 400: (#100) Invalid parameter (Param to is not a valid number) [code 100]"
    )


@pytest.mark.parametrize(
    ("status", "code"),
    [
        (401, 190),  # expired token
        (429, 130429),  # throughput
        (400, 4),  # too many calls
        (400, 80007),  # account rate limit
        (400, 131048),  # spam rate limit
        (400, 131056),  # pair rate limit
        (500, 131000),  # something went wrong
    ],
)
def test_it_retries_auth_errors_rate_limits_and_server_errors(
    fake_gateway, config, send_text, status, code
):
    fake_gateway.reply("POST", SEND_PATH, status=status, json=graph_error("try later", code))

    with pytest.raises(GatewayError) as caught:
        send_text(config)

    assert caught.value.retryable is True
    assert caught.value.http_status == status
    assert caught.value.detail.endswith(f"try later [code {code}]")


def test_it_retries_when_the_phone_number_id_does_not_exist(fake_gateway, config, send_text):
    reply = graph_error("Unsupported post request", 100, error_subcode=33)
    fake_gateway.reply("POST", SEND_PATH, status=400, json=reply)

    with pytest.raises(GatewayError) as caught:
        send_text(config)

    assert caught.value.retryable is True


def test_it_retries_a_send_the_gateway_never_answers(fake_gateway, config, send_text):
    fake_gateway.hang("POST", SEND_PATH)

    with pytest.raises(GatewayError) as caught:
        send_text(config, timeout=0.3)

    assert caught.value.retryable is True
    assert caught.value.detail == "timed out after 0.3s"
