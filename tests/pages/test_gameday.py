"""Game day: operators fail and revive the demo masters' gateways from the dashboard.

Against the real simulator on 127.0.0.1 with the demo masters `make run` loads
(masters.demo), in the dev run (HA_DEV) as `make run` starts it.
"""

from __future__ import annotations

import re

import pytest
from django.test import Client

from masters.config import import_bots_config
from masters.demo import demo_bots_config
from masters.gateways.simulator import Mode
from masters.models import Master
from tests.conftest import make_master, sim_control
from tests.gateways.conftest import fake_gateway, refused_url  # noqa: F401

pytestmark = pytest.mark.django_db


@pytest.fixture
def demo(settings, simulator) -> dict[str, Master]:
    """The demo masters on the simulator, in the dev run; by session name."""
    settings.HA_DEV = True
    import_bots_config(demo_bots_config(simulator.url))
    return {master.gateway_session: master for master in Master.objects.all()}


def simulate(client: Client, master: Master, action: str, **extra):
    return client.post(f"/masters/{master.external_id}/simulator/", {"action": action}, **extra)


def mode(simulator, session: str) -> tuple[Mode, bool]:
    state = simulator.state.sessions[session]
    return state.mode, state.restartable


def panel(html: str) -> str | None:
    match = re.search(r'<section id="simulator">.*?</section>', html, re.S)
    return match and match.group(0)


def home(client: Client) -> str:
    response = client.get("/")
    assert response.status_code == 200
    return response.content.decode()


# --- the action -------------------------------------------------------------------------


def test_an_operator_fails_a_demo_masters_gateway_and_revives_it(operator_client, demo, simulator):
    linda = demo["a"]
    response = simulate(operator_client, linda, "fail")
    assert response.status_code == 302 and response["Location"] == "/#simulator"
    # Down, and the portal's restarts will not bring it back: failover is what follows.
    assert mode(simulator, "a") == (Mode.FAILED, False)
    assert mode(simulator, "b") == (Mode.WORKING, True), "the other masters untouched"
    page = home(operator_client)
    assert "Linda-Master&#x27;s gateway session a is down" in page
    row = re.search(rf'<tr id="simulator-{linda.pk}".*?</tr>', panel(page), re.S).group(0)
    assert 'data-mode="failed"' in row
    assert re.search(r'value="fail" disabled', row) and not re.search(r'value="revive" dis', row)

    response = simulate(operator_client, linda, "revive")
    assert response.status_code == 302
    assert mode(simulator, "a") == (Mode.WORKING, True)
    assert "Linda-Master&#x27;s gateway session a works again" in home(operator_client)


def test_a_viewer_is_refused_and_the_gateway_keeps_working(viewer_client, demo, simulator):
    assert simulate(viewer_client, demo["a"], "fail").status_code == 403
    assert mode(simulator, "a") == (Mode.WORKING, True)


def test_a_logged_out_visitor_is_sent_to_the_login_page(client, demo, simulator):
    response = simulate(client, demo["a"], "fail")
    assert response.status_code == 302 and response["Location"].startswith("/login/")
    assert mode(simulator, "a") == (Mode.WORKING, True)


def test_get_is_refused_even_to_an_operator(operator_client, demo, simulator):
    response = operator_client.get(f"/masters/{demo['a'].external_id}/simulator/?action=fail")
    assert response.status_code == 405
    assert mode(simulator, "a") == (Mode.WORKING, True)


def test_a_post_without_the_csrf_token_is_refused(operator, demo, simulator):
    client = Client(enforce_csrf_checks=True)
    client.force_login(operator)
    assert simulate(client, demo["a"], "fail").status_code == 403
    assert mode(simulator, "a") == (Mode.WORKING, True)


def test_only_fail_and_revive_are_offered(operator_client, demo, simulator):
    response = simulate(operator_client, demo["a"], "logout")
    assert response.status_code == 400
    assert mode(simulator, "a") == (Mode.WORKING, True)


def test_it_acts_on_no_gateway_outside_the_dev_run(operator_client, demo, simulator, settings):
    settings.HA_DEV = False
    assert simulate(operator_client, demo["a"], "fail").status_code == 404
    assert mode(simulator, "a") == (Mode.WORKING, True)


def test_a_real_gateway_on_this_machine_never_gets_a_control_request(
    operator_client,
    settings,
    fake_gateway,  # noqa: F811
):
    settings.HA_DEV = True
    fake_gateway.reply("GET", "/_sim/sessions", status=404, json={"message": "Not Found"})
    waha = make_master("local-waha", gateway_url=fake_gateway.url, gateway_session="default")
    assert simulate(operator_client, waha, "fail").status_code == 404
    assert [(r.method, r.path) for r in fake_gateway.requests] == [("GET", "/_sim/sessions")]


def test_a_session_the_simulator_does_not_have_is_not_offered(operator_client, demo, simulator):
    Master.objects.filter(pk=demo["a"].pk).update(gateway_session="gone")
    assert simulate(operator_client, demo["a"], "fail").status_code == 404
    assert "Linda-Master" not in panel(home(operator_client))


def test_the_operator_is_told_when_the_simulator_refuses(
    operator_client,
    settings,
    fake_gateway,  # noqa: F811
):
    settings.HA_DEV = True
    session = {"name": "default", "mode": "working", "status": "WORKING", "restartable": True}
    fake_gateway.reply("GET", "/_sim/sessions", json=[session])
    fake_gateway.reply(
        "POST", "/_sim/sessions/default/unrestartable", status=500, json={"error": "boom"}
    )
    master = make_master("sim", gateway_url=fake_gateway.url, gateway_session="default")
    assert simulate(operator_client, master, "fail").status_code == 302
    assert "The simulator did not take it: unrestartable: HTTP 500" in home(operator_client)
    posts = [r.path for r in fake_gateway.requests if r.method == "POST"]
    assert posts == ["/_sim/sessions/default/unrestartable"], "nothing after the refusal"


# --- the panel ----------------------------------------------------------------------------


def test_the_dashboard_shows_the_panel_with_buttons_for_each_demo_master(
    operator_client, demo, simulator
):
    sim_control(simulator, "c", "hang")
    section = panel(home(operator_client))
    assert section is not None
    for session, name in (("a", "Linda-Master"), ("b", "Omar-Master"), ("c", "Sara-Master")):
        master = demo[session]
        assert name in section and f"<code>{session}</code>" in section
        assert f'action="/masters/{master.external_id}/simulator/"' in section
    assert section.count('name="csrfmiddlewaretoken"') == 3
    assert section.count('value="fail"') == 3 and section.count('value="revive"') == 3
    assert "no answer (hangs)" in section, "a hung session says so"
    assert "WORKING" in section


def test_a_viewer_sees_the_simulator_but_no_buttons(viewer_client, demo, simulator):
    section = panel(home(viewer_client))
    assert section is not None and "Linda-Master" in section
    assert "<form" not in section and "Operators can fail and revive" in section


def test_no_panel_outside_the_dev_run(operator_client, demo, settings):
    settings.HA_DEV = False
    page = home(operator_client)
    assert "Linda-Master" in page and panel(page) is None


def test_no_panel_when_no_master_is_on_the_simulator(
    operator_client,
    settings,
    fake_gateway,  # noqa: F811
    refused_url,  # noqa: F811
):
    settings.HA_DEV = True
    fake_gateway.reply("GET", "/_sim/sessions", status=401, json={"message": "Unauthorized"})
    make_master("local-waha", gateway_url=fake_gateway.url, gateway_session="default")
    make_master("down", "+971505760057", gateway_url=refused_url, gateway_session="default")
    make_master("remote", "+971505760058", gateway_url="https://waha.example.com")
    page = home(operator_client)
    assert "Local-Waha" in page and panel(page) is None


def test_the_panel_lists_only_the_masters_on_the_simulator(
    operator_client, demo, simulator, settings
):
    Master.objects.filter(pk=demo["c"].pk).update(gateway_url="https://waha.example.com")
    section = panel(home(operator_client))
    assert "Linda-Master" in section and "Omar-Master" in section
    assert "Sara-Master" not in section
