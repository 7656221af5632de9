"""The admin shows alerts and deliveries read-only, never a recipient's secret."""

from __future__ import annotations

import pytest
from django.urls import reverse
from django.utils import timezone

from masters.choices import HealthStatus, WebhookFormat
from masters.models import Master
from monitoring.alerts.engine import evaluate
from monitoring.models import Alert, AlertDelivery, AlertSettings
from tests.alerts.conftest import webhook
from tests.conftest import make_master

SLACK_PATH = "/services/T0/B0/SLACKSECRET"


@pytest.fixture
def delivered(alerting, receiver):
    a = make_master("a", "+971505760056")
    make_master("b", "+971505760057")
    webhook(f"{receiver.url}{SLACK_PATH}", format=WebhookFormat.SLACK)
    webhook(f"{receiver.url}/pd", format=WebhookFormat.PAGERDUTY, secret="ROUTINGSECRET")
    evaluate()
    Master.objects.filter(pk=a.pk).update(
        health_status=HealthStatus.FAILED, health_changed_at=timezone.now()
    )
    evaluate()
    assert AlertDelivery.objects.count() == 2
    return Alert.objects.get()


def test_alert_pages_list_deliveries_without_secrets(client, admin_user, delivered):
    client.force_login(admin_user)
    pages = [
        reverse("admin:monitoring_alert_changelist"),
        reverse("admin:monitoring_alert_change", args=[delivered.pk]),
        reverse("admin:monitoring_alertdelivery_changelist"),
        *(
            reverse("admin:monitoring_alertdelivery_change", args=[pk])
            for pk in AlertDelivery.objects.values_list("pk", flat=True)
        ),
    ]
    for page in pages:
        response = client.get(page)
        assert response.status_code == 200, page
        html = response.content.decode()
        assert "Master connection lost: A" in html
        assert "SLACKSECRET" not in html and "ROUTINGSECRET" not in html, page
    response = client.get(reverse("admin:monitoring_alert_change", args=[delivered.pk]))
    assert "webhook (slack) to http://127.0.0.1" in response.content.decode()
    assert 'name="_save"' not in response.content.decode(), "read-only"


def test_an_admin_edits_the_alert_thresholds(client, admin_user):
    row = AlertSettings.current()
    client.force_login(admin_user)
    url = reverse("admin:monitoring_alertsettings_change", args=[row.pk])
    form = {
        "queue_warning": 500,
        "load_share_warning_pct": 90,
        "failures_warning_count": 3,
        "failures_window_min": 30,
        "recovery_warning_min": 5,
        "repeat_interval_min": 15,
    }
    assert client.post(url, form).status_code == 302
    row.refresh_from_db()
    assert (row.queue_warning, row.load_share_warning_pct, row.repeat_interval_min) == (500, 90, 15)
    form["load_share_warning_pct"] = 101
    assert client.post(url, form).status_code == 200, "over 100 % is refused"
    assert client.get(reverse("admin:monitoring_alertsettings_add")).status_code == 403
