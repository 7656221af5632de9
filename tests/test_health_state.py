"""The health state machine: fall and rise thresholds, flap damping, passive signals."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from masters.choices import EventKind, HealthStatus, Severity
from masters.health import HealthState, Observation, Thresholds, next_health
from masters.models import Event
from tests.conftest import make_master

H, D, F = HealthStatus.HEALTHY, HealthStatus.DEGRADED, HealthStatus.FAILED
RULES = Thresholds(fall=3, rise=2, flap_rise=6)


def run(results: list[str], start: str = HealthStatus.HEALTHY, flapping: bool = False) -> list:
    state = HealthState(start)
    statuses = []
    for result in results:
        state = next_health(state, result, RULES, lambda: flapping)
        statuses.append(state.status)
    return statuses


def test_the_first_failed_probe_degrades_and_the_third_fails():
    assert run([F, F, F, F]) == [D, D, F, F]


def test_a_degraded_gateway_state_counts_toward_the_fall_threshold():
    assert run([D, D, D]) == [D, D, F]


def test_recovery_needs_two_successes_in_a_row():
    assert run([H, F, H, H], start=F) == [F, F, F, H]


def test_a_single_success_does_not_reset_a_failed_master():
    assert run([F, F, F, H, F, F]) == [D, D, F, F, F, F]


def test_an_unknown_master_is_healthy_on_its_first_success_and_degraded_on_its_first_failure():
    assert run([H], start=HealthStatus.UNKNOWN) == [H]
    assert run([F], start=HealthStatus.UNKNOWN) == [D]


def test_a_flapping_master_needs_the_longer_rise():
    assert run([H] * 6, start=D, flapping=True) == [D, D, D, D, D, H]


def test_probes_never_move_a_master_out_of_maintenance():
    assert run([F, F, F, H, H], start=HealthStatus.MAINTENANCE) == [HealthStatus.MAINTENANCE] * 5


@pytest.mark.django_db
def test_observe_writes_one_event_per_transition_with_its_severity():
    master = make_master(health_status=H)
    now = timezone.now()
    for _ in range(3):
        master.record_observation(Observation(F, now, "WAHA status FAILED"))
    events = list(Event.objects.filter(kind=EventKind.HEALTH_CHANGED).order_by("pk"))
    assert [(e.data["from"], e.data["to"], e.severity) for e in events] == [
        (H, D, Severity.WARNING),
        (D, F, Severity.CRITICAL),
    ]
    master.refresh_from_db()
    assert (master.health_status, master.consecutive_failures) == (F, 3)
    assert master.last_error == "WAHA status FAILED"


@pytest.mark.django_db
def test_flapping_is_judged_from_recent_transitions(settings):
    settings.HEALTH = settings.HEALTH | {"flap_limit": 4, "flap_rise": 6, "rise": 2}
    master = make_master(health_status=H)
    now = timezone.now()
    for _ in range(2):  # four transitions: H->D->H->D->H
        master.record_observation(Observation(F, now))
        master.record_observation(Observation(H, now))
        master.record_observation(Observation(H, now))
    master.record_observation(Observation(F, now))
    for _ in range(5):
        master.record_observation(Observation(H, now))
    master.refresh_from_db()
    assert master.health_status == D, "a flapping master must not come back after 5 successes"
    master.record_observation(Observation(H, now))
    master.refresh_from_db()
    assert master.health_status == H


@pytest.mark.django_db
def test_sends_failing_in_a_row_eject_a_master_that_probes_call_healthy(settings):
    settings.HEALTH = settings.HEALTH | {"send_error_limit": 3, "send_ejection_s": 30}
    master = make_master(health_status=H)
    for _ in range(2):
        assert master.record_send_result(False, "HTTP 500") is None
    event = master.record_send_result(False, "HTTP 500")
    assert event is not None and event.data["to"] == D
    assert Event.objects.filter(kind=EventKind.SEND_EJECTED).count() == 1

    # The gateway keeps saying WORKING: during the ejection that is not health.
    for _ in range(3):
        master.record_observation(Observation(H, timezone.now(), "WAHA status WORKING"))
    master.refresh_from_db()
    assert master.health_status == D
    assert "sends keep failing" in master.last_error

    # After the ejection the probes decide again.
    later = timezone.now() + timedelta(seconds=31)
    for _ in range(2):
        master.record_observation(Observation(H, later, "WAHA status WORKING"))
    master.refresh_from_db()
    assert master.health_status == H


@pytest.mark.django_db
def test_a_successful_send_resets_the_error_streak(settings):
    settings.HEALTH = settings.HEALTH | {"send_error_limit": 3}
    master = make_master(health_status=H)
    master.record_send_result(False, "x")
    master.record_send_result(False, "x")
    master.record_send_result(True)
    master.record_send_result(False, "x")
    master.refresh_from_db()
    assert (master.health_status, master.send_error_streak) == (H, 1)


@pytest.mark.django_db
def test_maintenance_drains_and_ending_it_hands_the_master_back_to_the_probes(admin_user):
    master = make_master(health_status=H)
    master.start_maintenance(actor=admin_user, reason="gateway upgrade")
    assert master.health_status == HealthStatus.MAINTENANCE and not master.is_routable
    master.start_maintenance(actor=admin_user)  # a no-op writes nothing
    master.end_maintenance(actor=admin_user)
    assert master.health_status == HealthStatus.UNKNOWN
    kinds = list(Event.objects.order_by("pk").values_list("kind", "actor__username"))
    assert kinds == [
        (EventKind.MAINTENANCE_STARTED, "root"),
        (EventKind.MAINTENANCE_ENDED, "root"),
    ]
