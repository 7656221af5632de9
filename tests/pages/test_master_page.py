"""A master's page: uptime, recovery time, history, charts and events, for anyone who may view."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from datetime import timedelta

import pytest
from django.urls import reverse
from django.utils import timezone

from masters.choices import FailoverStatus, HealthStatus
from masters.models import Event, FailoverEvent, LoadMetric
from tests.conftest import make_master
from tests.pages.conftest import checks, health_change

pytestmark = pytest.mark.django_db

FAILED, HEALTHY = HealthStatus.FAILED, HealthStatus.HEALTHY


@pytest.fixture
def linda():
    """Failed for 10 minutes two days ago, 20 minutes yesterday; 9 of 10 checks healthy today."""
    now = timezone.now()
    master = make_master("linda", display_name="Linda <Master>")
    for days, minutes in ((2, 10), (1, 20)):
        health_change(master, FAILED, now - timedelta(days=days), HEALTHY)
        health_change(master, HEALTHY, now - timedelta(days=days, minutes=-minutes), FAILED)
    checks(master, now - timedelta(hours=1), "hhhhfhhhhh", ms=120.0)
    LoadMetric.objects.create(
        master=master, recorded_at=now - timedelta(minutes=5), share_pct=40, throughput_per_s=2
    )
    Event.objects.create(kind="master.maintenance_started", master=master, message="Drained <b>")
    return master


def page(client, master) -> str:
    response = client.get(reverse("monitoring:master", args=[master.external_id]))
    assert response.status_code == 200
    return response.content.decode()


def test_a_viewer_sees_uptime_recovery_time_and_history(viewer_client, linda):
    html = page(viewer_client, linda)
    assert "Linda &lt;Master&gt;" in html  # escaped
    assert "90.00 %" in html  # uptime over 24 h: 9 of 10 checks
    assert "15 min 00 s" in html  # mean time to recover: (10 + 20) / 2 minutes
    assert html.count("timeout") >= 1  # the failed check's error in the history table
    assert "120 ms" in html
    assert "Drained &lt;b&gt;" in html  # its events, escaped


def test_the_charts_are_inline_svg_that_parses(viewer_client, linda):
    html = page(viewer_client, linda)
    svgs = [
        html[i : html.index("</svg>", i) + 6]
        for i in range(len(html))
        if html.startswith("<svg", i)
    ]
    assert len(svgs) == 4
    titles = [ET.fromstring(svg).find("{http://www.w3.org/2000/svg}title").text for svg in svgs]
    assert any(t.startswith("Failures and failovers per day") for t in titles)
    assert any(t.startswith("Response time") for t in titles)
    assert any(t.startswith("Share of load") for t in titles)


def test_only_operators_see_the_action_buttons(viewer_client, operator_client, linda):
    failover_url = reverse("monitoring:failover", args=["linda"])
    assert failover_url not in page(viewer_client, linda)
    assert failover_url in page(operator_client, linda)


def test_a_completed_failover_offers_a_rollback_to_operators(operator_client, linda):
    backup = make_master("sara", "+966501234567")
    event = FailoverEvent.objects.create(
        failed_master=linda,
        backup_master=backup,
        reason="failed for over 30s",
        status=FailoverStatus.COMPLETED,
        started_at=timezone.now(),
        moved_messages=12,
    )
    html = page(operator_client, linda)
    assert reverse("monitoring:rollback", args=[event.pk]) in html
    assert "12 msgs" in html


def test_an_unknown_master_is_404_and_strangers_get_403(client, viewer_client, stranger, linda):
    assert viewer_client.get(reverse("monitoring:master", args=["nobody"])).status_code == 404
    client.force_login(stranger)
    assert client.get(reverse("monitoring:master", args=["linda"])).status_code == 403


def test_logged_out_people_are_sent_to_the_login(client, linda):
    response = client.get(reverse("monitoring:master", args=["linda"]))
    assert response.status_code == 302 and "/login/" in response["Location"]
