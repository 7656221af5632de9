"""One batch of probe results as the prober writes it: checks, master rows, events, the fence."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from masters.choices import EventKind, HealthStatus
from masters.health import Observation, Thresholds
from masters.models import Event, HealthCheck, Master, ProberLease
from masters.prober import write_results
from tests.conftest import make_master

H, D, F = HealthStatus.HEALTHY, HealthStatus.DEGRADED, HealthStatus.FAILED
RULES = Thresholds(fall=3, rise=2, flap_rise=6)

pytestmark = pytest.mark.django_db


@pytest.fixture
def leader():
    assert ProberLease.claim("p", timedelta(seconds=30))
    return "p"


def row(master: Master) -> Master:
    return Master.objects.get(pk=master.pk)


def test_every_result_becomes_a_health_check_row_with_its_error_only_when_not_healthy(leader):
    a = make_master("a", "+971505760056")
    b = make_master("b", "+971505760057")
    at = timezone.now()
    write_results(
        leader,
        [
            (a.pk, Observation(H, at, "WAHA status WORKING", 12.5)),
            (b.pk, Observation(F, at + timedelta(microseconds=7), "timed out after 2s")),
        ],
        RULES,
    )
    checks = HealthCheck.objects.order_by("master__external_id")
    assert [(c.master_id, c.checked_at, c.status, c.response_time_ms, c.error) for c in checks] == [
        (a.pk, at, H, 12.5, ""),
        (b.pk, at + timedelta(microseconds=7), F, None, "timed out after 2s"),
    ]


def test_a_steady_master_gets_its_own_check_time_and_latency_and_no_event(leader):
    master = make_master(health_status=H, consecutive_successes=6)
    first, second = timezone.now(), timezone.now() + timedelta(seconds=5)
    write_results(leader, [(master.pk, Observation(H, first, "up", 3.0))], RULES, False)
    write_results(leader, [(master.pk, Observation(H, second, "up", 4.25))], RULES, False)
    saved = row(master)
    assert (saved.health_status, saved.consecutive_successes) == (H, 6)
    assert (saved.last_check_at, saved.last_success_at, saved.last_response_ms) == (
        second,
        second,
        4.25,
    )
    assert not Event.objects.filter(kind=EventKind.HEALTH_CHANGED).exists()


def test_a_failure_writes_the_new_state_and_its_event_in_the_batch(leader):
    master = make_master(health_status=H, consecutive_successes=6)
    at = timezone.now()
    statuses, _ = write_results(
        leader, [(master.pk, Observation(F, at, "WAHA status FAILED"))], RULES, False
    )
    saved = row(master)
    assert statuses == {master.pk: D}
    assert (saved.health_status, saved.health_changed_at) == (D, at)
    assert (saved.consecutive_failures, saved.consecutive_successes) == (1, 0)
    assert (saved.last_failure_at, saved.last_error, saved.last_response_ms) == (
        at,
        "WAHA status FAILED",
        None,
    )
    event = Event.objects.get(kind=EventKind.HEALTH_CHANGED)
    assert (event.master_id, event.data["from"], event.data["to"]) == (master.pk, H, D)


def test_a_recovery_clears_the_recovery_bookkeeping_even_when_every_value_is_null(leader):
    later = timezone.now() + timedelta(minutes=5)
    master = make_master(
        health_status=F,
        consecutive_failures=4,
        consecutive_successes=1,
        recovery_attempts=2,
        next_recovery_at=later,
        relink_alerted_at=later,
    )
    at = timezone.now()
    write_results(leader, [(master.pk, Observation(H, at, "up", 2.0))], RULES, False)
    saved = row(master)
    assert (saved.health_status, saved.consecutive_failures, saved.consecutive_successes) == (
        H,
        0,
        2,
    )
    assert (saved.recovery_attempts, saved.next_recovery_at, saved.relink_alerted_at) == (
        0,
        None,
        None,
    )


def test_two_results_for_one_master_in_a_batch_apply_in_order(leader):
    master = make_master(health_status=H, consecutive_successes=6)
    at = timezone.now()
    write_results(
        leader,
        [
            (master.pk, Observation(F, at, "down")),
            (master.pk, Observation(F, at + timedelta(seconds=1), "still down")),
        ],
        RULES,
        False,
    )
    saved = row(master)
    assert (saved.health_status, saved.consecutive_failures, saved.last_error) == (
        D,
        2,
        "still down",
    )
    assert HealthCheck.objects.filter(master=master).count() == 2


def test_a_prober_that_lost_the_lease_writes_nothing(leader):
    master = make_master(health_status=H)
    assert write_results("q", [(master.pk, Observation(F, timezone.now(), "x"))], RULES) is None
    assert not HealthCheck.objects.exists()
    assert row(master).consecutive_failures == 0


def test_a_prober_whose_lease_expired_writes_nothing(leader):
    master = make_master(health_status=H)
    ProberLease.objects.update(expires_at=timezone.now() - timedelta(seconds=1))
    assert write_results(leader, [(master.pk, Observation(F, timezone.now(), "x"))], RULES) is None
    assert not HealthCheck.objects.exists()


def test_masters_that_change_different_fields_in_one_batch_keep_the_rest(leader):
    since = timezone.now() - timedelta(hours=1)
    steady = make_master("a", "+971505760056", consecutive_successes=6, health_changed_at=since)
    falling = make_master("b", "+971505760057", consecutive_successes=6, health_changed_at=since)
    at = timezone.now()
    write_results(
        leader,
        [
            (steady.pk, Observation(H, at, "up", 1.0)),
            (falling.pk, Observation(F, at, "down")),
        ],
        RULES,
        False,
    )
    a, b = row(steady), row(falling)
    assert (a.health_status, a.health_changed_at, a.last_failure_at, a.last_check_at) == (
        H,
        since,
        None,
        at,
    )
    assert (b.health_status, b.health_changed_at, b.last_success_at, b.last_check_at) == (
        D,
        at,
        None,
        at,
    )
