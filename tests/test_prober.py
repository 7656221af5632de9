"""The prober against the gateway simulator over real HTTP."""

from __future__ import annotations

import pytest

from masters.choices import EventKind, HealthStatus
from masters.models import Event, HealthCheck, Master, ProberLease
from tests.conftest import make_master, sim_control, wait_until

H, D, F = HealthStatus.HEALTHY, HealthStatus.DEGRADED, HealthStatus.FAILED


def status_of(master: Master) -> str:
    return Master.objects.values_list("health_status", flat=True).get(pk=master.pk)


@pytest.fixture
def masters(simulator, fast_probes):
    """Three masters on the simulator's sessions a, b and c."""
    return [
        make_master(
            session,
            phone,
            gateway_url=simulator.url,
            gateway_session=session,
            health_status=HealthStatus.UNKNOWN,
        )
        for session, phone in (
            ("a", "+971505760056"),
            ("b", "+971505760057"),
            ("c", "+966501234567"),
        )
    ]


def test_every_master_is_probed_and_marked_healthy(masters, start_prober):
    start_prober()
    for master in masters:
        wait_until(lambda m=master: status_of(m) == H, what=f"{master} healthy")
    check = HealthCheck.objects.filter(master=masters[0]).first()
    assert check.status == H and check.response_time_ms is not None and check.error == ""


def test_a_failing_session_is_degraded_at_the_next_probe_and_failed_after_the_threshold(
    masters, simulator, start_prober
):
    start_prober()
    first = masters[0]
    wait_until(lambda: status_of(first) == H)
    sim_control(simulator, "a", "fail")

    wait_until(lambda: status_of(first) != H, what="leaves rotation")
    assert status_of(first) == D
    wait_until(lambda: status_of(first) == F, what="failed after the threshold")
    transitions = Event.objects.filter(master=first, kind=EventKind.HEALTH_CHANGED)
    assert [(e.data["from"], e.data["to"]) for e in transitions.order_by("pk")][-2:] == [
        (H, D),
        (D, F),
    ]
    failed = HealthCheck.objects.filter(master=first, status=F).order_by("checked_at")
    assert failed.count() >= 3 and "FAILED" in failed.first().error
    assert status_of(masters[1]) == H, "the other masters are untouched"


def test_a_hanging_gateway_is_caught_by_the_timeout(masters, simulator, start_prober):
    start_prober()
    first = masters[0]
    wait_until(lambda: status_of(first) == H)
    sim_control(simulator, "a", "hang")

    wait_until(lambda: status_of(first) == F, what="failed by timeouts")
    assert "timed out" in Master.objects.get(pk=first.pk).last_error
    sim_control(simulator, "a", "recover")


def test_recovery_needs_the_rise_threshold(masters, simulator, start_prober):
    start_prober()
    first = masters[0]
    sim_control(simulator, "a", "fail")
    wait_until(lambda: status_of(first) == F)
    sim_control(simulator, "a", "recover")

    healthy_again = wait_until(
        lambda: (
            Event.objects.filter(master=first, kind=EventKind.HEALTH_CHANGED, data__to=H)
            .order_by("-pk")
            .first()
        ),
        what="healthy again",
    )
    last_failure = HealthCheck.objects.filter(master=first, status=F).latest("checked_at")
    successes_before = HealthCheck.objects.filter(
        master=first,
        status=H,
        checked_at__gt=last_failure.checked_at,
        checked_at__lte=healthy_again.created_at,
    ).count()
    assert successes_before >= 2


def test_a_flapping_session_does_not_bounce_traffic_on_every_flap(
    masters, simulator, start_prober, settings
):
    settings.HEALTH = settings.HEALTH | {"flap_limit": 4, "flap_rise": 6, "flap_window_s": 300}
    start_prober()
    first = masters[0]
    wait_until(lambda: status_of(first) == H)
    sim_control(simulator, "a", "unrestartable")  # a restart would end the flapping
    sim_control(simulator, "a", "flap", period_ms=1200)

    def flaps_seen() -> int:
        return Event.objects.filter(master=first, kind=EventKind.HEALTH_CHANGED).count()

    # Let it flap for several periods: without damping every WORKING window
    # (two probes at 500 ms) would bring it back.
    wait_until(lambda: flaps_seen() >= 4, timeout=20, what="four transitions")
    returns_before = Event.objects.filter(master=first, data__to=H).count()
    checks_before = HealthCheck.objects.filter(master=first).count()
    wait_until(
        lambda: HealthCheck.objects.filter(master=first).count() >= checks_before + 14,
        timeout=20,
        what="seven more seconds of probes",
    )
    returns_after = Event.objects.filter(master=first, data__to=H).count()
    assert returns_after == returns_before, "a damped master stays out while it flaps"
    assert status_of(first) != H
    sim_control(simulator, "a", "recover")


def test_all_masters_failing_at_once_holds_failover_until_one_answers(
    masters, simulator, start_prober
):
    start_prober()
    for master in masters:
        wait_until(lambda m=master: status_of(m) == H)
    for session in "abc":
        sim_control(simulator, session, "fail")

    wait_until(ProberLease.failover_on_hold, what="the all-down hold")
    assert Event.objects.filter(kind=EventKind.ALL_DOWN, severity="critical").count() == 1

    sim_control(simulator, "b", "recover")
    wait_until(lambda: not ProberLease.failover_on_hold(), what="the hold to lift")
    assert Event.objects.filter(kind=EventKind.SOME_UP).count() == 1
    assert Event.objects.filter(kind=EventKind.ALL_DOWN).count() == 1


def test_a_master_added_while_running_is_picked_up_and_an_inactive_one_dropped(
    masters, simulator, start_prober
):
    start_prober()
    wait_until(lambda: status_of(masters[0]) == H)
    Master.objects.filter(pk=masters[0].pk).update(is_active=False)
    late = make_master(
        "late",
        "+971505760058",
        gateway_url=simulator.url,
        gateway_session="c",
        health_status=HealthStatus.UNKNOWN,
    )
    wait_until(lambda: status_of(late) == H, what="the new master probed")
    checks = HealthCheck.objects.filter(master=masters[0]).count()
    wait_until(lambda: HealthCheck.objects.filter(master=late).count() >= 6)
    assert HealthCheck.objects.filter(master=masters[0]).count() <= checks + 1


def test_only_the_lease_holder_probes(masters, start_prober):
    first, second = start_prober("first"), start_prober("second")
    wait_until(lambda: HealthCheck.objects.count() >= 9)
    lease = ProberLease.objects.get()
    assert lease.holder in {"first", "second"}
    leaders = [p for p in (first, second) if p.prober.leader]
    assert [p.prober.name for p in leaders] == [lease.holder]


def test_a_stopped_prober_hands_over_at_once_and_says_so(masters, start_prober):
    first = start_prober("first")
    wait_until(lambda: first.prober.leader)
    second = start_prober("second")
    first.stop()
    wait_until(lambda: second.prober.leader, what="the standby to take over")
    kinds = list(
        Event.objects.filter(kind__startswith="prober.")
        .order_by("pk")
        .values_list("kind", flat=True)
    )
    assert kinds == [EventKind.PROBER_ACQUIRED, EventKind.PROBER_STOPPED, EventKind.PROBER_ACQUIRED]


def test_the_elected_prober_raises_and_resolves_the_master_down_alert(
    masters, simulator, start_prober, settings
):
    from monitoring.alerts.choices import Rule
    from monitoring.models import Alert, AlertState

    settings.ALERTS = settings.ALERTS | {"evaluate_every_s": 1}
    start_prober()
    first = masters[0]
    wait_until(lambda: status_of(first) == H)
    sim_control(simulator, "a", "fail")
    wait_until(
        lambda: Alert.objects.filter(rule=Rule.MASTER_DOWN, master=first).exists(),
        what="the master-down alert",
    )
    alert = Alert.objects.get(rule=Rule.MASTER_DOWN, master=first)
    assert alert.state == AlertState.FIRING and alert.severity == "critical"
    sim_control(simulator, "a", "recover")
    wait_until(
        lambda: Alert.objects.get(pk=alert.pk).state == AlertState.RESOLVED,
        what="the alert resolved after recovery",
    )
