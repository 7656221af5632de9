"""Every attempt recorded, retries with backoff, one recipient's failure never blocks another."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from masters.choices import HealthStatus, WebhookFormat
from masters.models import Master
from monitoring.alerts.delivery import deliver
from monitoring.alerts.engine import evaluate
from monitoring.models import AlertDelivery, DeliveryStatus
from tests.alerts.conftest import webhook
from tests.conftest import make_master

pytestmark = pytest.mark.usefixtures("alerting")


@pytest.fixture
def master_a():
    a = make_master("a", "+971505760056")
    make_master("b", "+971505760057")
    evaluate()
    return a


def fail(master: Master, now=None) -> None:
    Master.objects.filter(pk=master.pk).update(health_status=HealthStatus.FAILED)
    evaluate(now)


def test_a_receiver_error_is_retried_after_the_backoff(master_a, receiver):
    webhook(f"{receiver.url}/flaky")
    receiver.script["/flaky"] = [500]
    start = timezone.now()
    fail(master_a, start)
    delivery = AlertDelivery.objects.get()
    assert (delivery.status, delivery.attempts) == (DeliveryStatus.RETRYING, 1)
    assert delivery.last_result.startswith("HTTP 500")
    # Five seconds (retry_base_s) after the attempt ended.
    backoff = (delivery.next_attempt_at - start).total_seconds()
    assert 5 <= backoff < 8

    evaluate(start + timedelta(seconds=4))
    assert len(receiver.to("/flaky")) == 1, "not before the backoff"
    evaluate(start + timedelta(seconds=9))
    delivery.refresh_from_db()
    assert (delivery.status, delivery.attempts) == (DeliveryStatus.SENT, 2)
    assert delivery.last_result.startswith("HTTP 200") and delivery.finished_at is not None
    assert [(a["sent"], a["result"][:8]) for a in delivery.history] == [
        (False, "HTTP 500"),
        (True, "HTTP 200"),
    ], "every attempt is kept, not just the last"
    first, second = receiver.to("/flaky")
    assert first.headers["X-HA-Portal-Delivery"] == second.headers["X-HA-Portal-Delivery"]
    assert (first.json()["delivery"]["attempt"], second.json()["delivery"]["attempt"]) == (1, 2)


def test_a_failing_recipient_does_not_block_the_others(master_a, receiver):
    webhook(f"{receiver.url}/broken")
    webhook("http://127.0.0.1:9/closed")  # nothing listens: connection refused
    webhook(f"{receiver.url}/fine")
    receiver.always["/broken"] = 503
    start = timezone.now()
    fail(master_a, start)
    for seconds in (8, 30):  # backoff 5 s, then 10 s: three attempts in all
        evaluate(start + timedelta(seconds=seconds))
    by_target = {d.recipient.url: d for d in AlertDelivery.objects.select_related("recipient")}
    fine = by_target[f"{receiver.url}/fine"]
    assert (fine.status, fine.attempts) == (DeliveryStatus.SENT, 1)
    broken = by_target[f"{receiver.url}/broken"]
    assert (broken.status, broken.attempts) == (DeliveryStatus.FAILED, 3)
    assert broken.last_result.startswith("HTTP 503")
    closed = by_target["http://127.0.0.1:9/closed"]
    assert (closed.status, closed.attempts) == (DeliveryStatus.FAILED, 3)
    assert "refused" in closed.last_result.lower()
    assert len(receiver.to("/broken")) == 3


def test_a_client_error_is_not_retried(master_a, receiver):
    webhook(f"{receiver.url}/v2/enqueue", format=WebhookFormat.PAGERDUTY, secret="bad-key")
    receiver.always["/v2/enqueue"] = 400
    fail(master_a)
    delivery = AlertDelivery.objects.get()
    assert (delivery.status, delivery.attempts) == (DeliveryStatus.FAILED, 1)
    assert delivery.last_result.startswith("HTTP 400")


def test_notices_reach_a_recipient_in_order(master_a, receiver):
    """A resolve waits while the trigger to the same recipient is being retried."""
    webhook(f"{receiver.url}/ordered")
    receiver.script["/ordered"] = [500]
    start = timezone.now()
    fail(master_a, start)
    Master.objects.filter(pk=master_a.pk).update(health_status=HealthStatus.HEALTHY)
    evaluate(start + timedelta(seconds=1))
    assert [r.json()["notice"] for r in receiver.to("/ordered")] == ["trigger"]
    evaluate(start + timedelta(seconds=9))
    assert [r.json()["notice"] for r in receiver.to("/ordered")] == [
        "trigger",
        "trigger",
        "resolve",
    ]
    assert set(AlertDelivery.objects.values_list("status", flat=True)) == {DeliveryStatus.SENT}


def test_a_delivery_runs_once_however_often_its_task_runs(master_a, receiver):
    webhook(f"{receiver.url}/once")
    fail(master_a)
    delivery = AlertDelivery.objects.get()
    assert deliver(delivery.pk) == "not claimed"
    assert deliver(delivery.pk, timezone.now() + timedelta(hours=1)) == "not claimed"
    assert len(receiver.to("/once")) == 1
