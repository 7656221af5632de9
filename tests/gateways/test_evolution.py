"""Evolution API gateway against a real local HTTP server playing Evolution."""

from __future__ import annotations

import pytest

from masters.choices import GatewayKind, HealthStatus
from masters.gateways import GatewayConfig, GatewayError

STATE_PATH = "/instance/connectionState/sales-1"
SEND_PATH = "/message/sendText/sales-1"


@pytest.fixture
def config(fake_gateway):
    return GatewayConfig(
        kind=GatewayKind.EVOLUTION, url=fake_gateway.url, session="sales-1", api_key="evo-key"
    )


def connection(state: str) -> dict:
    return {"instance": {"instanceName": "sales-1", "state": state}}


def test_it_reports_an_open_instance_as_healthy(fake_gateway, config, check_health):
    fake_gateway.reply("GET", STATE_PATH, json=connection("open"))

    result = check_health(config)

    assert result.status == HealthStatus.HEALTHY
    assert result.gateway_state == "open"
    assert result.detail == "Evolution state open"
    assert result.latency_ms > 0
    assert fake_gateway.last.headers["apikey"] == "evo-key"


def test_it_marks_a_connecting_instance_as_degraded(fake_gateway, config, check_health):
    fake_gateway.reply("GET", STATE_PATH, json=connection("connecting"))

    result = check_health(config)

    assert result.status == HealthStatus.DEGRADED
    assert result.gateway_state == "connecting"


def test_it_marks_a_closed_instance_as_failed(fake_gateway, config, check_health):
    fake_gateway.reply("GET", STATE_PATH, json=connection("close"))

    result = check_health(config)

    assert result.status == HealthStatus.FAILED
    assert result.detail.startswith("Evolution state close")


def test_it_marks_a_refused_login_as_failed_and_asks_for_re_linking(
    fake_gateway, config, check_health
):
    fake_gateway.reply("GET", STATE_PATH, json=connection("refused"))

    result = check_health(config)

    assert result.status == HealthStatus.FAILED
    assert "re-linking" in result.detail


def test_it_marks_an_unknown_instance_as_failed(fake_gateway, config, check_health):
    fake_gateway.reply(
        "GET",
        STATE_PATH,
        status=404,
        json={
            "status": 404,
            "error": "Not Found",
            "response": {"message": ['The "sales-1" instance does not exist']},
        },
    )

    result = check_health(config)

    assert result.status == HealthStatus.FAILED
    assert result.detail == (
        "Evolution instance 'sales-1' not found (HTTP 404): The \"sales-1\" instance does not exist"
    )


def test_it_marks_a_rejected_api_key_as_failed(fake_gateway, config, check_health):
    fake_gateway.reply(
        "GET",
        STATE_PATH,
        status=401,
        json={"status": 401, "error": "Unauthorized", "response": {"message": "Unauthorized"}},
    )

    result = check_health(config)

    assert result.status == HealthStatus.FAILED
    assert result.detail == "Evolution authentication failed (HTTP 401): Unauthorized"


def test_it_marks_a_server_error_as_failed(fake_gateway, config, check_health):
    fake_gateway.reply("GET", STATE_PATH, status=500, json={"message": "Internal server error"})

    result = check_health(config)

    assert result.status == HealthStatus.FAILED
    assert result.detail == "Evolution HTTP 500: Internal server error"


@pytest.mark.parametrize(
    ("reply", "detail"),
    [
        ({"instanceName": "sales-1"}, "malformed reply: no instance in reply"),
        ({"instance": {"instanceName": "sales-1"}}, "malformed reply: no instance.state in reply"),
        ({"instance": {"state": 1}}, "malformed reply: instance.state is not a non-empty string"),
    ],
)
def test_it_marks_a_reply_without_a_state_as_failed(
    fake_gateway, config, check_health, reply, detail
):
    fake_gateway.reply("GET", STATE_PATH, json=reply)

    result = check_health(config)

    assert result.status == HealthStatus.FAILED
    assert result.detail == detail


def test_it_marks_a_non_json_reply_as_failed(fake_gateway, config, check_health):
    fake_gateway.reply("GET", STATE_PATH, body=b"Cannot GET")

    result = check_health(config)

    assert result.status == HealthStatus.FAILED
    assert result.detail.startswith("malformed reply: response is not JSON")


def test_it_marks_a_gateway_that_never_answers_as_failed_after_the_timeout(
    fake_gateway, config, check_health
):
    fake_gateway.hang("GET", STATE_PATH)

    result = check_health(config, timeout=0.3)

    assert result.status == HealthStatus.FAILED
    assert result.detail == "timed out after 0.3s"


def test_it_marks_a_refused_connection_as_failed(refused_url, check_health):
    config = GatewayConfig(kind=GatewayKind.EVOLUTION, url=refused_url, session="sales-1")

    result = check_health(config)

    assert result.status == HealthStatus.FAILED
    assert result.detail.startswith("cannot connect to 127.0.0.1:")


def test_it_sends_a_text_and_returns_the_key_id(fake_gateway, config, send_text):
    fake_gateway.reply(
        "POST",
        SEND_PATH,
        status=201,
        json={
            "key": {"remoteJid": "971505760056@s.whatsapp.net", "fromMe": True, "id": "BAE594"},
            "status": "PENDING",
        },
    )

    message_id = send_text(config, to="+971505760056", text="Hello", idempotency_key="msg-8")

    assert message_id == "BAE594"
    request = fake_gateway.last
    assert request.json == {"number": "971505760056", "text": "Hello"}
    assert request.headers["apikey"] == "evo-key"
    assert request.headers["Idempotency-Key"] == "msg-8"


def test_it_calls_a_send_reply_without_a_key_id_malformed_and_retryable(
    fake_gateway, config, send_text
):
    fake_gateway.reply("POST", SEND_PATH, status=201, json={"key": {"fromMe": True}})

    with pytest.raises(GatewayError) as caught:
        send_text(config)

    assert caught.value.retryable is True
    assert caught.value.detail == "malformed reply: no key.id in reply"


def test_it_does_not_retry_a_number_that_is_not_on_whatsapp(fake_gateway, config, send_text):
    fake_gateway.reply(
        "POST",
        SEND_PATH,
        status=400,
        json={
            "status": 400,
            "error": "Bad Request",
            "response": {"message": [{"exists": False, "number": "971505760056"}]},
        },
    )

    with pytest.raises(GatewayError) as caught:
        send_text(config)

    assert caught.value.retryable is False
    assert caught.value.http_status == 400
    assert caught.value.detail == "Evolution HTTP 400: exists=False, number=971505760056"


@pytest.mark.parametrize("status", [401, 404, 500])
def test_it_retries_auth_missing_instance_and_server_errors(
    fake_gateway, config, send_text, status
):
    fake_gateway.reply("POST", SEND_PATH, status=status, json={"status": status})

    with pytest.raises(GatewayError) as caught:
        send_text(config)

    assert caught.value.retryable is True
    assert caught.value.http_status == status


def test_it_retries_a_send_the_gateway_never_answers(fake_gateway, config, send_text):
    fake_gateway.hang("POST", SEND_PATH)

    with pytest.raises(GatewayError) as caught:
        send_text(config, timeout=0.3)

    assert caught.value.retryable is True
    assert caught.value.detail == "timed out after 0.3s"
