"""Alert email goes over SMTP to a real server, with a subject, a text and an HTML part."""

from __future__ import annotations

import pytest
from django.utils import timezone

from masters.choices import HealthStatus
from masters.models import Master
from monitoring.alerts.engine import acknowledge, evaluate
from monitoring.models import AlertDelivery, DeliveryStatus
from tests.alerts.conftest import email_recipient
from tests.conftest import make_master

pytestmark = pytest.mark.usefixtures("alerting")


def test_a_critical_alert_and_its_resolution_arrive_by_email(smtp_server, admin_user):
    a = make_master("linda", "+971505760056", display_name="Linda-Master")
    make_master("b", "+971505760057")
    email_recipient("ops@example.com")
    email_recipient("quiet@example.com", wants_critical=False)
    evaluate()
    Master.objects.filter(pk=a.pk).update(
        health_status=HealthStatus.FAILED,
        health_changed_at=timezone.now(),
        last_error="session <STOPPED>",
    )
    evaluate()

    [message] = smtp_server.messages
    assert smtp_server.envelopes == [("alerts@portal.test", ["ops@example.com"])]
    assert message["Subject"] == "[HA Portal] CRITICAL: Master connection lost: Linda-Master"
    assert message["To"] == "ops@example.com"
    text = message.get_body(("plain",)).get_content()
    html = message.get_body(("html",)).get_content()
    assert "FIRING: Master connection lost: Linda-Master" in text
    assert "session <STOPPED>" in text, "plain text is not HTML-escaped"
    assert "Linda-Master (+971505760056)" in text
    assert "http://portal.test/" in text
    assert "session &lt;STOPPED&gt;" in html, "HTML is escaped"
    assert "<h1" in html and "Master connection lost: Linda-Master" in html

    acknowledge(a.alerts.get(), admin_user)
    Master.objects.filter(pk=a.pk).update(health_status=HealthStatus.HEALTHY)
    evaluate()
    subjects = [m["Subject"] for m in smtp_server.messages]
    assert subjects[1:] == [
        "[HA Portal] Acknowledged: Master connection lost: Linda-Master",
        "[HA Portal] Resolved: Master connection lost: Linda-Master",
    ]
    assert "by root" in smtp_server.messages[1].get_body(("plain",)).get_content()
    delivery = AlertDelivery.objects.filter(notice="resolve").get()
    assert (delivery.status, delivery.target) == (DeliveryStatus.SENT, "email to ops@example.com")
    assert delivery.last_result.startswith("accepted by the SMTP server 127.0.0.1")


def test_an_unreachable_smtp_server_is_retried_then_failed(settings):
    settings.EMAIL_BACKEND = "django.core.mail.backends.smtp.EmailBackend"
    settings.EMAIL_HOST, settings.EMAIL_PORT = "127.0.0.1", 9  # nothing listens on discard
    a = make_master("a", "+971505760056")
    make_master("b", "+971505760057")
    email_recipient("ops@example.com")
    evaluate()
    Master.objects.filter(pk=a.pk).update(health_status=HealthStatus.FAILED)
    start = timezone.now()
    evaluate(start)
    delivery = AlertDelivery.objects.get()
    assert (delivery.status, delivery.attempts) == (DeliveryStatus.RETRYING, 1)
    assert "SMTP error" in delivery.last_result
    evaluate(start + timezone.timedelta(seconds=8))
    evaluate(start + timezone.timedelta(seconds=30))
    delivery.refresh_from_db()
    assert (delivery.status, delivery.attempts) == (DeliveryStatus.FAILED, 3)
