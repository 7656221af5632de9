"""The scrape reports what the database holds, in a fixed number of queries."""

from __future__ import annotations

from datetime import timedelta

import pytest

from masters.choices import HealthStatus
from masters.models import HealthCheck, Master, ProberLease
from monitoring.metrics import snapshot
from monitoring.metrics.collector import REGISTRY
from tests.conftest import make_master
from tests.metrics.conftest import NOW, checks

pytestmark = pytest.mark.django_db


def test_each_master_has_exactly_one_health_status_set(known_state, scrape):
    got = scrape()
    for master, current in (("alpha", "healthy"), ("beta", "failed"), ("gamma", "maintenance")):
        gateway = "evolution" if master == "beta" else "waha"
        values = {
            status: got.value("ha_master_health", master=master, gateway=gateway, status=status)
            for status in HealthStatus.values
        }
        assert values == {s: (1.0 if s == current else 0.0) for s in HealthStatus.values}


def test_roles_and_activity_are_reported_beside_the_master(known_state, scrape):
    got = scrape()
    assert got.value("ha_master_info", master="alpha", gateway="waha", role="primary") == 1
    assert got.value("ha_master_info", master="beta", gateway="evolution", role="secondary") == 1
    assert got.value("ha_master_active", master="gamma", gateway="waha") == 0
    assert got.value("ha_master_consecutive_failures", master="beta", gateway="evolution") == 4


def test_queue_lengths_count_unsent_messages_by_status(known_state, scrape):
    got = scrape()
    alpha = {"master": "alpha", "gateway": "waha"}
    beta = {"master": "beta", "gateway": "evolution"}
    assert got.value("ha_master_queue_length", status="queued", **alpha) == 2
    assert got.value("ha_master_queue_length", status="sending", **alpha) == 1
    assert got.value("ha_master_queue_length", status="retrying", **beta) == 3
    assert got.value("ha_master_queue_length", status="queued", **beta) == 0
    # The whole queue includes the four messages no master has claimed yet.
    assert got.value("ha_queue_length", status="queued") == 6
    assert got.value("ha_queue_length", status="retrying") == 3
    assert got.value("ha_queue_length", status="sending") == 1


def test_sends_and_errors_are_counters_per_master(known_state, scrape):
    got = scrape()
    assert got.families["ha_messages_sent"].type == "counter"
    assert got.value("ha_messages_sent_total", master="alpha", gateway="waha") == 5
    assert got.value("ha_messages_sent_total", master="beta", gateway="evolution") == 0
    assert got.value("ha_message_errors_total", master="alpha", gateway="waha", status="dead") == 1
    beta = {"master": "beta", "gateway": "evolution"}
    assert got.value("ha_message_errors_total", status="expired", **beta) == 2
    assert got.value("ha_message_errors_total", status="dead", **beta) == 0


def test_failovers_count_every_one_initiated_and_show_their_status(known_state, scrape):
    got = scrape()
    beta = {"master": "beta", "gateway": "evolution"}
    assert got.value("ha_failovers_total", **beta) == 2
    assert got.value("ha_failovers_total", master="alpha", gateway="waha") == 0
    assert got.value("ha_failovers_by_status", status="completed", **beta) == 1
    assert got.value("ha_failovers_by_status", status="rolled-back", **beta) == 1
    assert got.value("ha_failovers_by_status", status="in-progress", **beta) is None


def test_health_checks_this_hour_are_counted_by_result(known_state, scrape):
    got = scrape()
    alpha = {"master": "alpha", "gateway": "waha"}
    beta = {"master": "beta", "gateway": "evolution"}
    # alpha's failed check 45 minutes ago belongs to the previous hour's epoch.
    assert got.value("ha_health_checks_total", result="healthy", **alpha) == 3
    assert got.value("ha_health_checks_total", result="failed", **alpha) == 0
    assert got.value("ha_health_checks_total", result="failed", **beta) == 2
    assert got.value("ha_health_checks_total", result="degraded", **beta) == 1
    gamma = {"master": "gamma", "gateway": "waha"}
    assert got.value("ha_health_checks_total", result="healthy", **gamma) == 0


def test_check_latency_is_a_histogram_of_timed_checks(known_state, scrape):
    got = scrape()
    family = got.families["ha_health_check_latency_seconds"]
    assert family.type == "histogram"
    alpha = {"master": "alpha", "gateway": "waha"}
    buckets = {
        s.labels["le"]: s.value
        for s in family.samples
        if s.name.endswith("_bucket") and s.labels["master"] == "alpha"
    }
    # 8 ms, 40 ms and 300 ms.
    assert buckets["0.01"] == 1
    assert buckets["0.025"] == 1
    assert buckets["0.05"] == 2
    assert buckets["0.25"] == 2
    assert buckets["0.5"] == 3
    assert buckets["+Inf"] == 3
    assert got.value("ha_health_check_latency_seconds_count", **alpha) == 3
    assert got.value("ha_health_check_latency_seconds_sum", **alpha) == pytest.approx(0.348)
    # beta's check without a response time (no answer at all) is not in its histogram.
    beta = {"master": "beta", "gateway": "evolution"}
    assert got.value("ha_health_check_latency_seconds_count", **beta) == 2
    assert got.value("ha_health_check_latency_seconds_bucket", le="1", **beta) == 1


def test_load_share_comes_from_the_latest_round(known_state, scrape):
    got = scrape()
    assert got.value("ha_master_load_share_percent", master="alpha", gateway="waha") == 75
    assert got.value("ha_master_load_share_percent", master="beta", gateway="evolution") == 25
    # gamma was in no round: no share rather than a made-up zero.
    assert got.value("ha_master_load_share_percent", master="gamma", gateway="waha") is None


def test_open_alerts_and_deliveries_are_counted(known_state, scrape):
    got = scrape()
    assert got.value("ha_alerts_open", severity="critical", state="firing") == 1
    assert got.value("ha_alerts_open", severity="warning", state="acknowledged") == 1
    # The resolved one is not open.
    assert got.value("ha_alerts_open", severity="warning", state="firing") == 0
    assert got.value("ha_alert_deliveries", status="sent") == 2
    assert got.value("ha_alert_deliveries", status="failed") == 1
    assert got.value("ha_alert_deliveries", status="pending") == 0


def test_the_prober_lease_and_its_heartbeat_are_reported(known_state, scrape):
    got = scrape()
    assert got.value("ha_prober_lease_held", holder="node-1:4242") == 1
    assert got.value("ha_prober_heartbeat_age_seconds") == 2
    assert got.value("ha_all_masters_down") == 0


def test_an_expired_lease_and_all_masters_down_are_reported(known_state, scrape):
    ProberLease.objects.update(
        expires_at=NOW - timedelta(seconds=30),
        renewed_at=NOW - timedelta(seconds=40),
        all_down_since=NOW - timedelta(minutes=1),
    )
    got = scrape()
    assert got.value("ha_prober_lease_held", holder="node-1:4242") == 0
    assert got.value("ha_prober_heartbeat_age_seconds") == 40
    assert got.value("ha_all_masters_down") == 1


def test_an_empty_portal_still_answers(scrape):
    got = scrape()
    assert got.value("ha_all_masters_down") == 0
    assert got.value("ha_prober_lease_held", holder="") == 0
    assert got.value("ha_queue_length", status="queued") == 0
    assert "ha_prober_heartbeat_age_seconds" not in got.names()


def test_the_hour_boundary_restarts_the_check_counters(db, monkeypatch):
    master = make_master()
    checks(master, ("healthy", 10.0), ("healthy", 10.0))
    late = NOW + timedelta(minutes=30, seconds=10)  # 11:00:10, a new epoch
    HealthCheck.objects.create(
        master=master, checked_at=late - timedelta(seconds=5), status="healthy", response_time_ms=5
    )
    assert snapshot.take(NOW).checks[master.pk].by_result["healthy"] == 2
    assert snapshot.take(late).checks[master.pk].by_result["healthy"] == 1
    assert snapshot.epoch_start(late) == NOW + timedelta(minutes=30)


def test_later_scrapes_add_new_checks_to_the_running_totals(known_state, scrape):
    alpha = {"master": "alpha", "gateway": "waha"}
    assert scrape().value("ha_health_checks_total", result="healthy", **alpha) == 3
    checks(known_state[0], ("healthy", 20.0), ("failed", None), at=NOW - timedelta(minutes=1))
    # Written now but probed in the previous hour: not this epoch's.
    checks(known_state[0], ("failed", 5.0), at=NOW - timedelta(minutes=31))
    got = scrape()
    assert got.value("ha_health_checks_total", result="healthy", **alpha) == 4
    assert got.value("ha_health_checks_total", result="failed", **alpha) == 1
    assert got.value("ha_health_check_latency_seconds_bucket", le="0.025", **alpha) == 2
    assert got.value("ha_health_check_latency_seconds_count", **alpha) == 4
    # A process that starts now recounts the epoch and reports the same numbers.
    running = snapshot.CHECK_TOTALS.read(snapshot.epoch_start(NOW))
    snapshot.CHECK_TOTALS.reset()
    assert snapshot.CHECK_TOTALS.read(snapshot.epoch_start(NOW)) == running


def test_the_scrape_costs_the_same_queries_for_three_masters_or_thirty(
    known_state, django_assert_num_queries
):
    alpha = {"master": "alpha", "gateway": "waha"}
    with django_assert_num_queries(8):
        first = REGISTRY.get_sample_value("ha_master_active", alpha)
    for i in range(27):
        master = make_master(f"extra-{i}", f"+97150577{i:04d}", health_status="degraded")
        checks(master, ("degraded", 30.0))
    with django_assert_num_queries(8):
        REGISTRY.get_sample_value("ha_master_active", alpha)
    assert first == 1
    assert Master.objects.count() == 30


def test_later_reads_find_new_checks_by_primary_key_on_sqlite(db):
    """Steady-state scrapes read only the new rows, not the hour so far (SQLite has no statistics).

    PostgreSQL's planner picks the primary key from its statistics; SQLite's
    needs the bounded id range (see snapshot.read_checks).
    """
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    if connection.vendor != "sqlite":
        pytest.skip("the query plan checked here is SQLite's")
    with CaptureQueriesContext(connection) as captured:
        snapshot.read_checks(snapshot.epoch_start(NOW), after_id=1000)
    (sql,) = [q["sql"] for q in captured.captured_queries]
    with connection.cursor() as cursor:
        cursor.execute(f"EXPLAIN QUERY PLAN {sql}")
        plan = " ".join(str(row) for row in cursor.fetchall())
    assert "USING INTEGER PRIMARY KEY" in plan, plan
