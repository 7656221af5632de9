"""The dashboard's websocket, through the real ASGI stack (auth, origin check, routing)."""

from __future__ import annotations

import asyncio
import time

import pytest
from asgiref.sync import async_to_sync, sync_to_async
from channels.testing import WebsocketCommunicator
from django.db import transaction
from django.test import Client
from django.utils import timezone

from ha_portal.asgi import application
from masters.choices import HealthStatus, Severity
from masters.health import Observation
from masters.models import Event, Master
from monitoring.live.feed import REFRESH_S
from monitoring.models import Alert, AlertState
from tests.conftest import make_master

pytestmark = pytest.mark.django_db(transaction=True)


def browser_of(user=None, origin: str = "http://127.0.0.1") -> list[tuple[bytes, bytes]]:
    """The headers ``user``'s browser sends with the socket: origin, session and CSRF cookies."""
    headers = [(b"origin", origin.encode())]
    if user is not None:
        client = Client()
        client.force_login(user)
        client.get("/")  # sets the CSRF cookie, as the page does
        cookies = "; ".join(f"{name}={morsel.value}" for name, morsel in client.cookies.items())
        headers.append((b"cookie", cookies.encode()))
    return headers


def socket(browser: list, path: str = "/ws/dashboard/") -> WebsocketCommunicator:
    return WebsocketCommunicator(application, path, headers=browser)


async def frames_until(communicator: WebsocketCommunicator, text: str, timeout: float = 3.0) -> str:
    """Receive frames until one contains ``text``; return them all, joined.

    Fails after ``timeout`` seconds. Every frame must parse on its own in the
    browser: table rows never share a frame with other parts.
    """
    deadline, frames = time.monotonic() + timeout, []
    while (left := deadline - time.monotonic()) > 0:
        try:
            frames.append(await communicator.receive_from(timeout=left))
        except TimeoutError:
            break
        frame = frames[-1]
        if "<tr" in frame and "<table" not in frame:
            assert frame.lstrip().startswith(("<tr", "<tbody")), frame[:200]
        if text in frame:
            return "\n".join(frames)
    pytest.fail(f"no frame with {text!r} within {timeout}s")


def run(scenario) -> None:
    async_to_sync(scenario)()


def test_a_stranger_is_refused():
    browser = browser_of(None)

    async def scenario():
        connected, _ = await socket(browser).connect()
        assert not connected  # daphne answers the handshake with HTTP 403

    run(scenario)


def test_a_user_without_a_role_is_refused(roleless):
    browser = browser_of(roleless)

    async def scenario():
        connected, _ = await socket(browser).connect()
        assert not connected  # daphne answers the handshake with HTTP 403

    run(scenario)


def test_a_socket_from_another_site_is_refused(viewer):
    communicator = socket(browser_of(viewer, origin="http://evil.example"))

    async def scenario():
        connected, _ = await communicator.connect()
        assert not connected

    run(scenario)


def test_a_viewer_gets_the_whole_dashboard_on_connect(viewer):
    master = make_master(display_name="Linda-Master", health_status=HealthStatus.DEGRADED)
    event = Event.record("config.imported", "Imported 1 master")

    browser = browser_of(viewer)

    async def scenario():
        communicator = socket(browser)
        connected, _ = await communicator.connect()
        assert connected
        frame = await frames_until(communicator, 'id="master-rows"', timeout=5)
        for part in [
            "live-status",
            "totals",
            "master-rows",
            "alerts",
            "failovers",
            "load",
            "events",
        ]:
            assert f'id="{part}"' in frame
        assert frame.count('hx-swap-oob="true"') == 7  # the rows are inside master-rows
        assert f'id="master-{master.pk}"' in frame and "Degraded" in frame
        assert f'data-last-event-id="{event.pk}"' in frame
        assert "Fail over" not in frame
        await communicator.disconnect()

    run(scenario)


def test_a_committed_health_change_is_pushed_within_the_second(viewer):
    master = make_master(display_name="Linda-Master")

    browser = browser_of(viewer)

    async def scenario():
        communicator = socket(browser)
        await communicator.connect()
        await frames_until(communicator, 'id="master-rows"', timeout=5)
        started = time.monotonic()
        for _ in range(3):  # the fall threshold: degraded at once, failed on the third
            await sync_to_async(master.record_observation)(
                Observation(HealthStatus.FAILED, timezone.now(), "session FAILED")
            )
        frame = await frames_until(communicator, 'data-health="failed"')
        assert time.monotonic() - started < 1.0
        row = frame[frame.rindex(f'<tr id="master-{master.pk}"') :]
        assert row.startswith(f'<tr id="master-{master.pk}"')
        assert 'hx-swap-oob="true"' in row[: row.index(">")]
        assert "Failed" in row[: row.index("</tr>")]
        assert "Linda-Master: degraded → failed" in frame  # the activity log
        await communicator.disconnect()

    run(scenario)


def test_only_what_changed_is_pushed(viewer):
    a = make_master("a", "+971505760001")
    b = make_master("b", "+971505760002", display_name="Bravo")

    browser = browser_of(viewer)

    async def scenario():
        communicator = socket(browser)
        await communicator.connect()
        await frames_until(communicator, 'id="master-rows"', timeout=5)
        await sync_to_async(a.start_maintenance)(reason="planned")
        frame = await frames_until(communicator, "Maintenance")
        assert f'id="master-{a.pk}"' in frame and f'id="master-{b.pk}"' not in frame
        assert 'id="events"' in frame and 'id="load"' not in frame and 'id="alerts"' not in frame
        await communicator.disconnect()

    run(scenario)


def test_a_change_that_rolled_back_is_never_pushed(viewer):
    master = make_master()

    browser = browser_of(viewer)

    async def scenario():
        communicator = socket(browser)
        await communicator.connect()
        await frames_until(communicator, 'id="master-rows"', timeout=5)

        def change_then_fail() -> None:
            with pytest.raises(RuntimeError), transaction.atomic():
                master.start_maintenance()
                raise RuntimeError("rolled back")

        await sync_to_async(change_then_fail)()
        assert await communicator.receive_nothing(timeout=1.0)
        await communicator.disconnect()

    run(scenario)


def test_alerts_changing_without_an_event_are_pushed(operator):
    master = make_master()

    browser = browser_of(operator)

    async def scenario():
        communicator = socket(browser)
        await communicator.connect()
        await frames_until(communicator, 'id="master-rows"', timeout=5)
        alert = await sync_to_async(Alert.objects.create)(
            dedup_key=f"master.down:{master.pk}",
            rule="master_down",
            severity=Severity.CRITICAL,
            title="Connection to M1 lost",
            master=master,
            fired_at=timezone.now(),
            last_seen_at=timezone.now(),
        )
        frame = await frames_until(communicator, "Connection to M1 lost")
        assert f'href="/alerts/{alert.pk}/acknowledge/?next=/"' in frame
        await sync_to_async(Alert.objects.filter(pk=alert.pk).update)(
            state=AlertState.ACKNOWLEDGED, acknowledged_at=timezone.now(), acknowledged_by=operator
        )
        frame = await frames_until(communicator, "Acknowledged")
        assert f'href="/alerts/{alert.pk}/acknowledge/' not in frame
        await communicator.disconnect()

    run(scenario)


def test_a_reconnecting_browser_gets_the_current_state_and_the_events_it_missed(viewer):
    master = make_master(display_name="Linda-Master")
    first = Event.record("config.imported", "before the page")

    browser = browser_of(viewer)

    async def scenario():
        communicator = socket(browser, f"/ws/dashboard/?after={first.pk}")
        await communicator.connect()
        await frames_until(communicator, 'id="master-rows"', timeout=5)
        await communicator.disconnect()
        await sync_to_async(master.start_maintenance)(reason="while away")
        communicator = socket(browser, f"/ws/dashboard/?after={first.pk}")
        await communicator.connect()
        frame = await frames_until(communicator, 'id="master-rows"', timeout=5)
        row = frame[frame.index(f'<tr id="master-{master.pk}"') :]
        assert "Maintenance" in row[: row.index("</tr>")]
        missed = await sync_to_async(Event.objects.latest)("pk")
        assert missed.message == "Linda-Master: healthy → maintenance (while away)"
        assert f'<li id="event-{missed.pk}" class="new">' in frame
        assert f'<li id="event-{first.pk}">' in frame  # on the page already: not new
        await communicator.disconnect()

    run(scenario)


def test_the_figures_refresh_every_few_seconds_and_the_socket_stays_open(viewer):
    # With Redis configured, a socket that also listened on the channel layer
    # was dropped after 5 s (redis-py 8's read timeout): this one stays.
    master = make_master(last_response_ms=10)

    browser = browser_of(viewer)

    async def scenario():
        communicator = socket(browser)
        await communicator.connect()
        await frames_until(communicator, 'id="master-rows"', timeout=5)
        started = time.monotonic()
        await sync_to_async(Master.objects.filter(pk=master.pk).update)(last_response_ms=987)
        frame = await frames_until(communicator, "987 ms", timeout=REFRESH_S + 2)
        assert time.monotonic() - started > 1  # no event: it came with the periodic refresh
        assert f'id="master-{master.pk}"' in frame
        await asyncio.sleep(max(0.0, 6.5 - (time.monotonic() - started)))
        await sync_to_async(master.start_maintenance)()
        await frames_until(communicator, 'data-health="maintenance"')
        await communicator.disconnect()

    run(scenario)
