"""Gateway recovery while a master is down, driven by the prober against the simulator."""

from __future__ import annotations

import pytest

from masters.choices import EventKind, HealthStatus
from masters.models import Event, Master
from masters.recovery import backoff
from tests.conftest import make_master, sim_control, wait_until


@pytest.fixture
def master(simulator, fast_probes, settings):
    runtime = fast_probes
    runtime.max_recovery_attempts = 3
    runtime.failover_enabled = False  # recovery alone, no failover in these tests
    runtime.save()
    return make_master(
        "a", gateway_url=simulator.url, gateway_session="a", health_status=HealthStatus.UNKNOWN
    )


def status_of(master) -> str:
    return Master.objects.values_list("health_status", flat=True).get(pk=master.pk)


def test_restarts_back_off_from_ten_seconds_to_ten_minutes():
    assert [backoff(n).total_seconds() for n in (1, 2, 3, 7, 20)] == [10, 20, 40, 600, 600]


def test_a_crashed_session_is_restarted_and_comes_back(master, simulator, start_prober):
    sim_control(simulator, "a", "crash", restart_ms=0)
    start_prober()
    wait_until(
        lambda: Event.objects.filter(kind=EventKind.RECOVERY_ATTEMPTED).exists(),
        what="a restart attempt",
    )
    wait_until(lambda: status_of(master) == HealthStatus.HEALTHY, what="recovery")
    attempt = Event.objects.filter(kind=EventKind.RECOVERY_ATTEMPTED).first()
    assert attempt.data["ok"] is True and attempt.data["attempt"] == 1
    assert "restarted session 'a'" in attempt.data["detail"]
    assert simulator.state.sessions["a"].restarts >= 1
    assert Master.objects.get(pk=master.pk).recovery_attempts == 0, "reset once healthy"


def test_a_logged_out_session_is_not_restarted_but_raises_one_relink_alert(
    master, simulator, start_prober
):
    sim_control(simulator, "a", "logout")
    start_prober()
    wait_until(
        lambda: Event.objects.filter(kind=EventKind.NEEDS_RELINK).exists(), what="the re-link alert"
    )
    alert = Event.objects.get(kind=EventKind.NEEDS_RELINK)
    assert alert.severity == "critical" and alert.data["qr"] is True
    assert "scan the QR code" in alert.message
    checks = master.health_checks.count()
    wait_until(lambda: master.health_checks.count() >= checks + 4, what="more probes")
    assert simulator.state.sessions["a"].restarts == 0, "never restarted in a loop"
    assert Event.objects.filter(kind=EventKind.NEEDS_RELINK).count() == 1


def test_the_master_page_shows_the_qr_code_of_a_logged_out_session(
    master, simulator, client, admin_user
):
    sim_control(simulator, "a", "logout")
    Master.objects.filter(pk=master.pk).update(relink_alerted_at="2026-11-28T12:00:00Z")
    client.force_login(admin_user)
    assert "needs re-link: QR code" in client.get("/").content.decode()
    response = client.get("/masters/a/qr.png")
    assert response.status_code == 200 and response["Content-Type"] == "image/png"
    assert response.content.startswith(b"\x89PNG")
    sim_control(simulator, "a", "link")
    assert client.get("/masters/a/qr.png").status_code == 502, "no QR once linked"
    client.logout()
    assert client.get("/masters/a/qr.png").status_code == 302, "login required"


def test_a_viewer_cannot_see_a_qr_code(master, simulator, client, viewer):
    sim_control(simulator, "a", "logout")
    client.force_login(viewer)
    assert client.get("/masters/a/qr.png").status_code == 403
