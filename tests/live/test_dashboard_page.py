"""The dashboard page: every figure server-rendered, readable without JavaScript."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from masters.choices import FailoverStatus, HealthStatus, MessageStatus, Role, Severity
from masters.models import FailoverEvent, HealthCheck, LoadMetric, Message
from monitoring.models import Alert
from tests.conftest import make_master

pytestmark = pytest.mark.django_db


def page(client, user) -> str:
    client.force_login(user)
    response = client.get("/")
    assert response.status_code == 200
    return response.content.decode()


def row_of(html: str, master) -> str:
    start = html.index(f'<tr id="master-{master.pk}"')
    return html[start : html.index("</tr>", start)]


def queue(master, status: str, count: int) -> None:
    Message.objects.bulk_create(
        Message(to="+971501234567", text="hi", body_hash="x", master=master, status=status)
        for _ in range(count)
    )


def test_each_master_row_shows_health_in_words_checks_queue_and_load(client, viewer):
    now = timezone.now()
    linda = make_master(
        "linda",
        display_name="Linda-Master",
        health_status=HealthStatus.FAILED,
        consecutive_failures=4,
        last_check_at=now,
        last_response_ms=87.4,
        role=Role.SECONDARY,
    )
    queue(linda, MessageStatus.QUEUED, 3)
    queue(linda, MessageStatus.SENDING, 2)
    LoadMetric.objects.create(
        master=linda, recorded_at=now, sent=125, throughput_per_s=12.5, share_pct=62.4
    )
    row = row_of(page(client, viewer), linda)
    assert "Linda-Master" in row and 'href="/masters/linda/"' in row
    assert "status-red" in row and "Failed" in row
    assert "Secondary" in row
    assert "87 ms" in row and '<td class="num">4</td>' in row
    assert "3 <small" in row and "+2 sending" in row
    assert "12.5 msg/s" in row and "62 %" in row
    assert "in doubt" not in row


def test_a_master_row_counts_the_messages_held_on_it_in_doubt(client, viewer):
    master = make_master()
    now = timezone.now()
    queue(master, MessageStatus.RETRYING, 3)
    held = Message.objects.filter(master=master)
    held.filter(pk__in=list(held.values_list("pk", flat=True)[:2])).update(
        in_doubt_until=now + timedelta(minutes=5)
    )
    queue(master, MessageStatus.SENT, 1)
    Message.objects.filter(status=MessageStatus.SENT).update(
        in_doubt_until=now + timedelta(hours=1)
    )

    row = row_of(page(client, viewer), master)

    assert "2 in doubt" in row


def test_the_uptime_sparkline_draws_the_last_hour_of_probes(client, viewer):
    master = make_master()
    now = timezone.now()
    HealthCheck.objects.bulk_create(
        HealthCheck(master=master, checked_at=now - timedelta(minutes=m), status=status)
        for m, status in [(2, HealthStatus.HEALTHY), (3, HealthStatus.FAILED), (50, "healthy")]
    )
    row = row_of(page(client, viewer), master)
    assert "<svg" in row and "uptime of M1, last hour" in row
    assert "66.7 %" in row  # two healthy probes out of three


def test_totals_count_the_queue_the_last_hour_and_masters_by_health(client, viewer):
    a = make_master("a", "+971505760001")
    make_master("b", "+971505760002", health_status=HealthStatus.DEGRADED)
    make_master("c", "+971505760003", health_status=HealthStatus.FAILED)
    queue(a, MessageStatus.QUEUED, 5)
    queue(a, MessageStatus.DEAD, 2)
    LoadMetric.objects.create(master=a, recorded_at=timezone.now(), sent=40)
    LoadMetric.objects.create(master=a, recorded_at=timezone.now() - timedelta(hours=2), sent=99)
    html = page(client, viewer)
    totals = html[html.index('id="totals"') : html.index("</section>", html.index('id="totals"'))]
    assert "<b>5</b><span>queued now" in totals
    assert "<b>40</b><span>sent, last hour" in totals
    assert "<b>2</b><span>dead, last hour" in totals
    assert ">1</b><span>masters healthy" in totals
    assert ">1</b><span>degraded" in totals and ">1</b><span>failed" in totals


def test_a_viewer_sees_no_action_buttons_an_operator_does(client, viewer, operator):
    master = make_master()
    failover = FailoverEvent.objects.create(
        failed_master=master, status=FailoverStatus.COMPLETED, reason="r", started_at=timezone.now()
    )
    alert = Alert.objects.create(
        dedup_key="k",
        rule="r",
        severity=Severity.CRITICAL,
        title="Down",
        master=master,
        fired_at=timezone.now(),
        last_seen_at=timezone.now(),
    )
    as_viewer = page(client, viewer)
    for url in [
        "/failover/",
        "/maintenance/",
        f"/failovers/{failover.pk}/rollback/",
        f"/alerts/{alert.pk}/acknowledge/",
    ]:
        assert url not in as_viewer
    assert "Down" in as_viewer and "Acknowledge" not in as_viewer
    as_operator = page(client, operator)
    assert f'href="/masters/{master.external_id}/failover/?next=/"' in as_operator
    assert f"/failovers/{failover.pk}/rollback/?next=%2F" in as_operator
    # Acknowledging goes through its confirmation page (a CSRF-protected form).
    assert f'href="/alerts/{alert.pk}/acknowledge/?next=/"' in as_operator


def test_a_user_without_a_role_is_refused(client, roleless):
    client.force_login(roleless)
    assert client.get("/").status_code == 403


def test_the_failover_log_shows_status_duration_moves_and_who(client, viewer, operator):
    a, b = make_master("a", "+971505760001"), make_master("b", "+971505760002")
    FailoverEvent.objects.create(
        failed_master=a,
        backup_master=b,
        status=FailoverStatus.COMPLETED,
        reason="manual",
        started_at=timezone.now(),
        duration_ms=41.6,
        moved_messages=12,
        moved_affinities=3,
        automatic=False,
        initiated_by=operator,
    )
    html = page(client, viewer)
    log = html[html.index('id="failovers"') :]
    assert "A → B" in log and "Completed" in log and "42 ms" in log
    assert "12 messages, 3 conversations" in log and "operator" in log


def test_load_distribution_shows_each_masters_share_per_five_minutes(client, viewer):
    a, b = make_master("a", "+971505760001"), make_master("b", "+971505760002")
    now = timezone.now()
    LoadMetric.objects.create(master=a, recorded_at=now - timedelta(minutes=1), sent=30)
    LoadMetric.objects.create(master=b, recorded_at=now - timedelta(minutes=1), sent=10)
    html = page(client, viewer)
    load = html[html.index('id="load"') : html.index("</section>", html.index('id="load"'))]
    assert "A 75 % · B 25 %" in load
    assert '<td class="num">40</td>' in load
    assert load.count("nothing sent") == 11


def test_text_from_the_database_is_escaped(client, viewer):
    make_master(display_name="<script>alert(1)</script>")
    html = page(client, viewer)
    assert "<script>alert(1)" not in html and "&lt;script&gt;alert(1)" in html


def test_the_page_reads_the_same_number_of_queries_for_2_or_12_masters(client, operator):
    def queries(count: int) -> int:
        for i in range(count):
            master = make_master(f"m{count}-{i}", f"+97150{count:02d}{i:05d}")
            queue(master, MessageStatus.QUEUED, 1)
            LoadMetric.objects.create(master=master, recorded_at=timezone.now(), sent=1)
            FailoverEvent.objects.create(
                failed_master=master, backup_master=master, reason="r", started_at=timezone.now()
            )
        client.force_login(operator)
        with CaptureQueriesContext(connection) as captured:
            assert client.get("/").status_code == 200
        return len(captured)

    assert queries(2) == queries(10) <= 16


def test_each_alert_shows_who_was_told_and_how_the_attempts_went(client, viewer):
    from monitoring.models import AlertDelivery

    master = make_master(display_name="Linda-Master")
    alert = Alert.objects.create(
        dedup_key=f"master.down:{master.pk}",
        rule="master_down",
        severity=Severity.CRITICAL,
        title="Connection to Linda-Master lost",
        master=master,
        fired_at=timezone.now(),
        last_seen_at=timezone.now(),
    )
    AlertDelivery.objects.create(
        alert=alert,
        notice="trigger",
        target="email to ops@example.com",
        status="sent",
        attempts=1,
        last_result="250 OK",
    )
    AlertDelivery.objects.create(
        alert=alert,
        notice="trigger",
        target="webhook (slack) to https://hooks.example.com",
        status="retrying",
        attempts=2,
        last_result="HTTP 503",
    )
    html = page(client, viewer)
    assert "email to ops@example.com: <strong>sent</strong> after 1 attempt" in html
    assert "webhook (slack) to https://hooks.example.com: <strong>retrying</strong>" in html
    assert "after 2 attempts" in html and "HTTP 503" in html
