"""Gateway status webhooks: authenticated by the master's secret, down counts, up does not."""

from __future__ import annotations

import hashlib
import hmac
import json
from typing import Any

import pytest
from django.test import Client

from masters.choices import EventKind, GatewayKind, HealthStatus, Severity
from masters.models import Event, Master
from masters.webhooks import PayloadError, event_name, parse_evolution, parse_waha, verify_signature
from tests.conftest import make_master

pytestmark = pytest.mark.django_db

SECRET = "hook-secret-7f3a9c"


def waha_body(status: str = "FAILED", session: str = "m1", event: str = "session.status") -> bytes:
    return json.dumps(
        {
            "event": event,
            "session": session,
            "payload": {"status": status},
            "me": {"id": "971505760056@c.us"},
            "engine": "WEBJS",
            "environment": {"version": "2025.1.1"},
        }
    ).encode()


def evolution_body(
    state: str = "close",
    instance: str = "evo",
    event: str = "connection.update",
    apikey: str = "the-gateway-api-key",
) -> bytes:
    return json.dumps(
        {
            "event": event,
            "instance": instance,
            "data": {"instance": instance, "state": state, "statusReason": 401},
            "apikey": apikey,
            "date_time": "2025-01-01T10:00:00.000Z",
            "sender": "971505760057@s.whatsapp.net",
        }
    ).encode()


def signed(body: bytes, algorithm: str = "sha512", secret: str = SECRET) -> dict[str, str]:
    digest = hmac.new(secret.encode(), body, getattr(hashlib, algorithm)).hexdigest()
    return {"X-Webhook-Hmac": digest, "X-Webhook-Hmac-Algorithm": algorithm}


def token(value: str = SECRET) -> dict[str, str]:
    return {"X-HA-Token": value}


@pytest.fixture
def hook_client() -> Client:
    # CSRF enforced as in production, so csrf_exempt is really exercised.
    return Client(enforce_csrf_checks=True)


@pytest.fixture
def masters(db, settings) -> dict[str, Master]:
    settings.HEALTH = {**settings.HEALTH, "fall": 3, "rise": 2}
    return {
        "m1": make_master("m1", "+971505760056", webhook_secret=SECRET),
        "evo": make_master(
            "evo", "+971505760057", gateway_kind=GatewayKind.EVOLUTION, webhook_secret=SECRET
        ),
        "nosecret": make_master("nosecret", "+971505760058"),
    }


def post(client: Client, path: str, body: bytes, headers: dict[str, str] | None = None):
    return client.post(path, body, content_type="application/json", headers=headers or {})


def snapshot() -> tuple[list[dict[str, Any]], int]:
    return list(Master.objects.order_by("pk").values()), Event.objects.count()


def webhook_events(master: Master) -> list[Event]:
    return list(Event.objects.filter(master=master, kind=EventKind.GATEWAY_WEBHOOK))


# --- accepted ---------------------------------------------------------------------


@pytest.mark.parametrize("algorithm", ["sha512", "sha256"])
def test_a_waha_webhook_signed_with_hmac_is_accepted(hook_client, masters, algorithm):
    body = waha_body("FAILED")
    response = post(hook_client, "/hooks/waha/m1", body, signed(body, algorithm))
    assert response.status_code == 200, response.content
    assert response.json() == {"accepted": True, "status": "degraded"}


def test_a_signature_without_an_algorithm_header_is_taken_as_sha512(hook_client, masters):
    body = waha_body("FAILED")
    headers = {"X-Webhook-Hmac": signed(body)["X-Webhook-Hmac"]}
    assert post(hook_client, "/hooks/waha/m1", body, headers).status_code == 200


def test_an_evolution_webhook_with_the_token_header_is_accepted(hook_client, masters):
    response = post(hook_client, "/hooks/evolution/evo", evolution_body("close"), token())
    assert response.status_code == 200, response.content
    assert response.json() == {"accepted": True, "status": "degraded"}


def test_a_down_webhook_degrades_a_healthy_master_at_once(hook_client, masters):
    body = waha_body("FAILED")
    post(hook_client, "/hooks/waha/m1", body, signed(body))
    master = Master.objects.get(external_id="m1")
    assert master.health_status == HealthStatus.DEGRADED
    assert master.consecutive_failures == 1
    assert master.last_error == "WAHA webhook: session status FAILED"
    change = Event.objects.get(master=master, kind=EventKind.HEALTH_CHANGED)
    assert (change.data["from"], change.data["to"], change.data["source"]) == (
        "healthy",
        "degraded",
        "webhook",
    )
    [hook_event] = webhook_events(master)
    assert hook_event.data["state"] == "FAILED"
    assert hook_event.data["counted"] is True


def test_down_webhooks_fail_the_master_at_the_fall_threshold(hook_client, masters):
    body = waha_body("SCAN_QR_CODE")
    statuses = [
        post(hook_client, "/hooks/waha/m1", body, signed(body)).json()["status"] for _ in range(3)
    ]
    assert statuses == ["degraded", "degraded", "failed"]
    master = Master.objects.get(external_id="m1")
    assert (master.health_status, master.consecutive_failures) == (HealthStatus.FAILED, 3)
    changes = Event.objects.filter(master=master, kind=EventKind.HEALTH_CHANGED).order_by("pk")
    assert [event.data["to"] for event in changes] == ["degraded", "failed"]
    assert changes.last().severity == Severity.CRITICAL
    assert len(webhook_events(master)) == 3


def test_an_up_webhook_does_not_make_a_degraded_master_healthy(hook_client, masters):
    Master.objects.filter(external_id="m1").update(
        health_status=HealthStatus.DEGRADED, consecutive_failures=1
    )
    health_before = Master.objects.filter(external_id="m1").values(*Master.HEALTH_FIELDS).get()
    body = waha_body("WORKING")
    # Twice: the rise threshold (2) would heal the master if this counted as a success.
    responses = [post(hook_client, "/hooks/waha/m1", body, signed(body)) for _ in range(2)]
    assert [r.json() for r in responses] == [{"accepted": True, "status": "degraded"}] * 2
    master = Master.objects.get(external_id="m1")
    assert Master.objects.filter(pk=master.pk).values(*Master.HEALTH_FIELDS).get() == health_before
    assert [event.kind for event in Event.objects.filter(master=master)] == [
        EventKind.GATEWAY_WEBHOOK
    ] * 2
    hook_event = webhook_events(master)[0]
    assert hook_event.severity == Severity.INFO
    assert hook_event.data["state"] == "WORKING"
    assert "WORKING" in hook_event.message


def test_an_up_webhook_does_not_bring_an_unknown_master_into_service(hook_client, masters):
    # A first successful probe would make an unknown master healthy; a webhook must not.
    Master.objects.filter(external_id="evo").update(health_status=HealthStatus.UNKNOWN)
    response = post(hook_client, "/hooks/evolution/evo", evolution_body("open"), token())
    assert response.json() == {"accepted": True, "status": "unknown"}
    assert Master.objects.get(external_id="evo").health_status == HealthStatus.UNKNOWN


def test_evolution_event_names_in_upper_snake_case_are_understood(hook_client, masters):
    body = evolution_body("refused", event="CONNECTION_UPDATE")
    response = post(hook_client, "/hooks/evolution/evo", body, token())
    assert response.json() == {"accepted": True, "status": "degraded"}
    assert webhook_events(masters["evo"])[0].data["state"] == "refused"


def test_a_state_the_gateway_table_does_not_know_counts_as_down(hook_client, masters):
    response = post(hook_client, "/hooks/evolution/evo", evolution_body("exploded"), token())
    assert response.json()["status"] == "degraded"
    master = Master.objects.get(external_id="evo")
    assert master.last_error == "Evolution webhook: instance state exploded (unknown state)"


def test_waha_starting_is_a_degraded_signal_that_still_counts(hook_client, masters):
    body = waha_body("STARTING")
    post(hook_client, "/hooks/waha/m1", body, signed(body))
    master = Master.objects.get(external_id="m1")
    assert (master.health_status, master.consecutive_failures) == (HealthStatus.DEGRADED, 1)
    assert webhook_events(master)[0].data["signal"] == "degraded"


# --- ignored ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "body", "event"),
    [
        ("/hooks/waha/m1", waha_body(event="message"), "message"),
        ("/hooks/evolution/evo", evolution_body(event="messages.upsert"), "messages.upsert"),
        ("/hooks/evolution/evo", evolution_body(event="MESSAGES_UPSERT"), "messages.upsert"),
    ],
)
def test_events_we_do_not_act_on_are_acknowledged_and_change_nothing(
    hook_client, masters, path, body, event
):
    before = snapshot()
    response = post(hook_client, path, body, signed(body))
    assert response.status_code == 202
    assert response.json() == {"ignored": event}
    assert snapshot() == before


# --- refused ----------------------------------------------------------------------

WAHA_DOWN = waha_body("FAILED")
EVOLUTION_DOWN = evolution_body("close")
OVERSIZED = json.dumps(
    {
        "event": "session.status",
        "session": "m1",
        "payload": {"status": "FAILED"},
        "pad": "x" * 65536,
    }
).encode()
NOT_JSON = b"{not json"
JSON_ARRAY = b'[{"event": "session.status"}]'
NO_EVENT = json.dumps({"session": "m1", "payload": {"status": "FAILED"}}).encode()
NO_STATUS = json.dumps({"event": "session.status", "session": "m1", "payload": {}}).encode()
STATUS_NOT_TEXT = json.dumps(
    {"event": "session.status", "session": "m1", "payload": {"status": 3}}
).encode()
PAYLOAD_NOT_OBJECT = json.dumps(
    {"event": "session.status", "session": "m1", "payload": "FAILED"}
).encode()
NO_INSTANCE = json.dumps({"event": "connection.update", "data": {"state": "close"}}).encode()
NO_STATE = json.dumps({"event": "connection.update", "instance": "evo", "data": {}}).encode()
DEEP = b"[" * 30_000 + b"]" * 30_000  # under the size cap, past the parser's recursion limit


@pytest.mark.parametrize(
    ("path", "body", "headers", "status", "error"),
    [
        pytest.param(
            "/hooks/waha/m1", WAHA_DOWN, {"X-Webhook-Hmac": "0" * 128}, 401, "X-Webhook-Hmac",
            id="a wrong hmac",
        ),
        pytest.param(
            "/hooks/waha/m1", WAHA_DOWN, signed(WAHA_DOWN, secret="other-key"), 401, "",
            id="an hmac made with another key",
        ),
        pytest.param(
            "/hooks/waha/m1", WAHA_DOWN, signed(WAHA_DOWN, "md5"), 401, "",
            id="an algorithm we do not accept",
        ),
        pytest.param(
            "/hooks/waha/m1", WAHA_DOWN, signed(waha_body("STOPPED")), 401, "",
            id="an hmac of another body",
        ),
        pytest.param(
            "/hooks/evolution/evo", EVOLUTION_DOWN, token("wrong"), 401, "",
            id="a wrong token",
        ),
        pytest.param(
            "/hooks/evolution/evo", EVOLUTION_DOWN, {}, 401, "", id="no auth at all",
        ),
        pytest.param(
            "/hooks/evolution/evo", evolution_body(apikey=SECRET), {}, 401, "",
            id="the gateway's apikey field in the body is not auth",
        ),
        pytest.param(
            "/hooks/waha/nosecret", waha_body(session="nosecret"),
            signed(waha_body(session="nosecret"), secret=""), 403, "webhooks disabled",
            id="a master without a webhook secret, hmac keyed with empty",
        ),
        pytest.param(
            "/hooks/waha/nosecret", waha_body(session="nosecret"), token(""), 403,
            "webhooks disabled", id="a master without a webhook secret, empty token",
        ),
        pytest.param(
            "/hooks/waha/ghost", WAHA_DOWN, signed(WAHA_DOWN), 404, "unknown master",
            id="an unknown master",
        ),
        pytest.param(
            "/hooks/waha/m1", waha_body(session="other"), signed(waha_body(session="other")),
            400, "session: 'other'", id="another session",
        ),
        pytest.param(
            "/hooks/evolution/evo", evolution_body(instance="other"), token(), 400,
            "instance: 'other'", id="another instance",
        ),
        pytest.param(
            "/hooks/evolution/m1", evolution_body(instance="m1"), token(), 400,
            "gateway is waha, not evolution", id="the wrong gateway kind",
        ),
        pytest.param(
            "/hooks/waha/m1", NOT_JSON, signed(NOT_JSON), 400, "body: not JSON", id="bad json",
        ),
        pytest.param(
            "/hooks/waha/m1", DEEP, signed(DEEP), 400, "body: not JSON", id="absurdly nested json",
        ),
        pytest.param(
            "/hooks/waha/m1", JSON_ARRAY, signed(JSON_ARRAY), 400, "body: expected a JSON object",
            id="a json array",
        ),
        pytest.param(
            "/hooks/waha/m1", NO_EVENT, signed(NO_EVENT), 400, "event: missing", id="no event",
        ),
        pytest.param(
            "/hooks/waha/m1", NO_STATUS, signed(NO_STATUS), 400, "payload.status: missing",
            id="no payload.status",
        ),
        pytest.param(
            "/hooks/waha/m1", STATUS_NOT_TEXT, signed(STATUS_NOT_TEXT), 400,
            "payload.status: expected a non-empty string", id="a status that is not text",
        ),
        pytest.param(
            "/hooks/waha/m1", PAYLOAD_NOT_OBJECT, signed(PAYLOAD_NOT_OBJECT), 400,
            "payload: expected an object", id="a payload that is not an object",
        ),
        pytest.param(
            "/hooks/evolution/evo", NO_INSTANCE, token(), 400, "instance: missing",
            id="no instance",
        ),
        pytest.param(
            "/hooks/evolution/evo", NO_STATE, token(), 400, "data.state: missing",
            id="no data.state",
        ),
        pytest.param(
            "/hooks/waha/m1", OVERSIZED, signed(OVERSIZED), 413, "over 65536 bytes",
            id="a body over 64 KiB, even signed",
        ),
    ],
)  # fmt: skip
def test_a_refused_webhook_gets_a_4xx_and_changes_nothing(
    hook_client, masters, path, body, headers, status, error
):
    before = snapshot()
    response = post(hook_client, path, body, headers)
    assert response.status_code == status, response.content
    assert error in response.json()["error"]
    assert SECRET not in response.content.decode()
    assert snapshot() == before


def test_a_get_is_refused_and_changes_nothing(hook_client, masters):
    before = snapshot()
    assert hook_client.get("/hooks/waha/m1", headers=token()).status_code == 405
    assert snapshot() == before


def test_a_webhook_needs_no_login_and_no_csrf_token(hook_client, masters):
    body = waha_body("FAILED")
    response = post(hook_client, "/hooks/waha/m1", body, signed(body))
    # Not a redirect to the login page, not a CSRF 403.
    assert response.status_code == 200


def test_no_response_ever_contains_the_secret(hook_client, masters):
    body = waha_body("FAILED")
    responses = [
        post(hook_client, "/hooks/waha/m1", body, signed(body)),
        post(hook_client, "/hooks/waha/m1", body, token()),
        post(hook_client, "/hooks/waha/m1", body, token("nope")),
        post(hook_client, "/hooks/waha/m1", waha_body(event="message"), token()),
        post(hook_client, "/hooks/evolution/evo", evolution_body("open"), token()),
    ]
    assert [r.status_code for r in responses] == [200, 200, 401, 202, 200]
    for response in responses:
        assert SECRET not in response.content.decode()
    for event in Event.objects.all():
        assert SECRET not in event.message + json.dumps(event.data)


# --- pure pieces ------------------------------------------------------------------


def test_verify_signature_reads_headers_in_any_case():
    body = b'{"event": "session.status"}'
    digest = signed(body)["X-Webhook-Hmac"]
    assert verify_signature(SECRET, body, {"x-webhook-hmac": digest.upper()})
    assert verify_signature(SECRET, body, {"X-HA-TOKEN": SECRET})


def test_verify_signature_refuses_everything_for_an_empty_secret():
    body = b"{}"
    assert not verify_signature("", body, signed(body, secret=""))
    assert not verify_signature("", body, token(""))


def test_verify_signature_survives_non_ascii_headers():
    assert not verify_signature(SECRET, b"{}", {"X-HA-Token": "sécret", "X-Webhook-Hmac": "ü"})


def test_parse_errors_name_the_field_path():
    with pytest.raises(PayloadError, match=r"^payload\.status: missing$"):
        parse_waha({"event": "session.status", "session": "default", "payload": {}})
    with pytest.raises(PayloadError, match=r"^data: expected an object$"):
        parse_evolution({"instance": "evo", "data": ["close"]})


def test_parsers_return_session_and_state():
    assert parse_waha(json.loads(waha_body("STOPPED", session="default"))) == (
        "default",
        "STOPPED",
    )
    assert parse_evolution(json.loads(evolution_body("open", instance="x"))) == ("x", "open")


@pytest.mark.parametrize(
    ("raw", "normalised"),
    [
        ("CONNECTION_UPDATE", "connection.update"),
        ("connection.update", "connection.update"),
        ("session.status", "session.status"),
    ],
)
def test_event_names_are_normalised(raw, normalised):
    assert event_name({"event": raw}) == normalised
