"""Webhooks in their three formats, to a real HTTP receiver: signed JSON, Slack, PagerDuty."""

from __future__ import annotations

import hashlib
import hmac
import time

import pytest
from django.utils import timezone

from masters.choices import EventKind, HealthStatus, WebhookFormat
from masters.models import Event, Master
from monitoring.alerts.engine import acknowledge, evaluate
from monitoring.models import AlertDelivery
from tests.alerts.conftest import webhook
from tests.conftest import make_master

pytestmark = pytest.mark.usefixtures("alerting")

SECRET = "s3cret-hmac-key"
ROUTING_KEY = "R0UTINGKEY0000000000000000000000"


@pytest.fixture
def outage():
    """Fail master A (with B healthy), recover it: trigger, then resolve."""
    a = make_master("linda", "+971505760056", display_name="Linda-Master")
    make_master("b", "+971505760057")
    evaluate()

    class Outage:
        master = a

        def fail(self) -> None:
            Master.objects.filter(pk=a.pk).update(
                health_status=HealthStatus.FAILED, health_changed_at=timezone.now()
            )
            evaluate()

        def recover(self) -> None:
            Master.objects.filter(pk=a.pk).update(health_status=HealthStatus.HEALTHY)
            evaluate()

    return Outage()


def test_json_webhooks_are_signed_over_timestamp_and_raw_body(receiver, outage):
    webhook(f"{receiver.url}/signed?token=abc", secret=SECRET)
    outage.fail()
    [request] = receiver.to("/signed?token=abc")
    timestamp = request.headers["X-HA-Portal-Timestamp"]
    assert abs(int(timestamp) - time.time()) < 60
    expected = hmac.new(
        SECRET.encode(), f"{timestamp}.".encode() + request.body, hashlib.sha256
    ).hexdigest()
    assert request.headers["X-HA-Portal-Signature"] == f"sha256={expected}"
    assert request.headers["Content-Type"] == "application/json"
    assert request.headers["X-HA-Portal-Notice"] == "trigger"
    body = request.json()
    delivery = AlertDelivery.objects.get()
    assert request.headers["X-HA-Portal-Delivery"] == str(delivery.pk)
    assert body["version"] == 1 and body["notice"] == "trigger"
    assert body["delivery"] == {"id": delivery.pk, "attempt": 1}
    alert = body["alert"]
    assert (alert["dedup_key"], alert["rule"], alert["severity"], alert["state"]) == (
        f"master.down:{outage.master.pk}",
        "master_down",
        "critical",
        "firing",
    )
    assert alert["master"] == {
        "id": outage.master.pk,
        "external_id": "linda",
        "display_name": "Linda-Master",
        "phone_number": "+971505760056",
    }
    assert body["links"]["dashboard"] == "http://portal.test/"
    # Neither the secret nor the URL's query string shows in what is stored.
    assert delivery.target == f"webhook (json) to {receiver.url}"
    assert SECRET not in delivery.last_result and "token" not in delivery.target


def test_a_tampered_body_does_not_match_the_signature(receiver, outage):
    webhook(f"{receiver.url}/signed", secret=SECRET)
    outage.fail()
    [request] = receiver.to("/signed")
    timestamp = request.headers["X-HA-Portal-Timestamp"]
    tampered = request.body.replace(b'"critical"', b'"info"')
    forged = hmac.new(SECRET.encode(), f"{timestamp}.".encode() + tampered, hashlib.sha256)
    assert request.headers["X-HA-Portal-Signature"] != f"sha256={forged.hexdigest()}"


def test_slack_gets_an_incoming_webhook_message(receiver, outage):
    webhook(f"{receiver.url}/services/T0/B0/XXXX", format=WebhookFormat.SLACK)
    outage.fail()
    outage.recover()
    trigger, resolve = (r.json() for r in receiver.to("/services/T0/B0/XXXX"))
    assert trigger["text"] == "Critical: Master connection lost: Linda-Master"
    assert trigger["blocks"][0] == {
        "type": "section",
        "text": {
            "type": "mrkdwn",
            "text": ":red_circle: *Critical*: Master connection lost: Linda-Master",
        },
    }
    assert trigger["blocks"][-1]["type"] == "context"
    assert "<http://portal.test/|HA Portal>" in trigger["blocks"][-1]["elements"][0]["text"]
    assert resolve["text"] == "Resolved: Master connection lost: Linda-Master"
    # The Slack URL's path is its secret: only the origin is kept.
    assert set(AlertDelivery.objects.values_list("target", flat=True)) == {
        f"webhook (slack) to {receiver.url}"
    }


def test_pagerduty_gets_trigger_acknowledge_resolve_with_the_same_dedup_key(
    receiver, outage, admin_user
):
    webhook(f"{receiver.url}/v2/enqueue", format=WebhookFormat.PAGERDUTY, secret=ROUTING_KEY)
    receiver.always["/v2/enqueue"] = 202
    outage.fail()
    acknowledge(outage.master.alerts.get(), admin_user)
    outage.recover()
    trigger, ack, resolve = (r.json() for r in receiver.to("/v2/enqueue"))
    key = f"master.down:{outage.master.pk}"
    assert [
        (e["event_action"], e["dedup_key"], e["routing_key"]) for e in (trigger, ack, resolve)
    ] == [
        ("trigger", key, ROUTING_KEY),
        ("acknowledge", key, ROUTING_KEY),
        ("resolve", key, ROUTING_KEY),
    ]
    payload = trigger["payload"]
    assert payload["summary"] == "Master connection lost: Linda-Master"
    assert (payload["severity"], payload["source"], payload["component"]) == (
        "critical",
        "Linda-Master",
        "linda",
    )
    assert payload["class"] == "master_down" and payload["group"] == "ha-portal"
    assert "payload" not in ack and "payload" not in resolve
    assert set(AlertDelivery.objects.values_list("status", flat=True)) == {"sent"}
    assert all(ROUTING_KEY not in d.last_result for d in AlertDelivery.objects.all())


def test_https_webhooks_check_the_certificate_of_the_host_named(tls_receiver, outage, monkeypatch):
    webhook(f"{tls_receiver.url}/hook", secret=SECRET)
    outage.fail()
    delivery = AlertDelivery.objects.get()
    assert delivery.status == "retrying" and tls_receiver.requests == []
    assert "CERTIFICATE_VERIFY_FAILED" in delivery.last_result

    # Trusting the certificate, the same delivery goes through on its retry.
    monkeypatch.setenv("SSL_CERT_FILE", tls_receiver.cert_file)
    evaluate(timezone.now() + timezone.timedelta(seconds=10))
    delivery.refresh_from_db()
    assert (delivery.status, delivery.attempts) == ("sent", 2)
    [request] = tls_receiver.to("/hook")
    assert request.headers["Host"] == tls_receiver.url.removeprefix("https://")


def test_info_alerts_reach_who_wants_them_but_never_pagerduty(receiver, outage):
    info_only = {"wants_info": True, "wants_critical": False, "wants_warning": False}
    webhook(f"{receiver.url}/pd", format=WebhookFormat.PAGERDUTY, secret=ROUTING_KEY, **info_only)
    webhook(f"{receiver.url}/log", **info_only)
    receiver.always["/pd"] = 202
    Event.record(
        EventKind.HEALTH_CHANGED,
        "Linda-Master recovered",
        master=outage.master,
        **{"from": HealthStatus.FAILED, "to": HealthStatus.HEALTHY},
    )
    evaluate()
    [notice] = receiver.to("/log")
    assert notice.json()["alert"]["severity"] == "info"
    # Born resolved, an info alert would open a PagerDuty incident nothing closes.
    assert receiver.to("/pd") == []
