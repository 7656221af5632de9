"""Game day: fail and revive the demo masters' gateways from the dashboard.

``make run`` (HA_DEV) starts the built-in WAHA simulator on 127.0.0.1 and
points the demo masters at it (masters.demo). The dashboard's "Simulator"
panel lets an operator break a master's gateway session on purpose and bring
it back, then watch on the live dashboard how the portal detects it, fails
it over after the grace period and takes it back into rotation.

The panel exists only in the dev run, and only for masters whose gateway is
a simulator on this machine: the gateway itself is asked (``GET
/_sim/sessions``), so a real WAHA, even one on 127.0.0.1, never gets a panel
and never receives a control request. The simulator's controls are
unauthenticated; the portal is what checks the operator's permission here.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlsplit

from django.conf import settings
from django.contrib import messages
from django.core.exceptions import PermissionDenied
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseBadRequest
from django.shortcuts import get_object_or_404, redirect
from django.urls import reverse
from django.views.decorators.http import require_POST

from ha_portal.lib.http import HttpClient, HttpError, run
from masters.choices import GatewayKind
from masters.models import Master, RuntimeSettings
from monitoring.actions.views import next_url
from monitoring.roles import OPERATE

logger = logging.getLogger(__name__)

LOOPBACK = frozenset({"127.0.0.1", "localhost", "::1"})
# The simulator answers in milliseconds; a page must not wait on a dead one.
TIMEOUT_S = 1.0
WORKING = "working"

# What each button does to the session: simulator control verbs, in order.
ACTIONS: dict[str, tuple[str, ...]] = {
    # Down the way a phone without network is: the portal's restarts do not help,
    # so it fails the master over once the grace period has run out.
    "fail": ("unrestartable", "fail"),
    # Working again, and restartable like any healthy session.
    "revive": ("recover", "restartable"),
}


class SimulatorError(Exception):
    """The simulator refused a control request or did not answer."""


@dataclass(frozen=True)
class SimulatedMaster:
    """A master whose gateway session lives on the built-in simulator, as the simulator sees it."""

    master: Master
    base_url: str
    session: dict[str, Any]  # the simulator's description: name, mode, status, restartable

    @property
    def working(self) -> bool:
        return self.session.get("mode") == WORKING and self.session.get("restartable", True)


def may_be_simulated(master: Master) -> bool:
    """Say whether the master could be on the built-in simulator: dev run, WAHA, on loopback."""
    if not settings.HA_DEV or master.gateway_kind != GatewayKind.WAHA:
        return False
    return urlsplit(master.gateway_config().url).hostname in LOOPBACK


def simulated(masters: Iterable[Master]) -> list[SimulatedMaster]:
    """Return the masters (in the given order) whose gateway session is on the simulator."""
    candidates = [master for master in masters if may_be_simulated(master)]
    if not candidates:
        return []
    urls = list(dict.fromkeys(master.gateway_config().url for master in candidates))
    found = dict(zip(urls, run(_list_sessions(urls)), strict=True))
    rows = []
    for master in candidates:
        url = master.gateway_config().url
        session = (found[url] or {}).get(master.gateway_session)
        if session is not None:
            rows.append(SimulatedMaster(master, url, session))
    return rows


async def _list_sessions(urls: list[str]) -> list[dict[str, dict] | None]:
    async with HttpClient(limit=len(urls)) as http:
        return await asyncio.gather(*(_sessions(http, url) for url in urls))


async def _sessions(http: HttpClient, base_url: str) -> dict[str, dict] | None:
    """The simulator's sessions by name; None if the gateway is no simulator (or is down)."""
    try:
        response = await http.request("GET", f"{base_url}/_sim/sessions", timeout=TIMEOUT_S)
        body = response.json() if response.status == 200 else None
    except HttpError:
        return None
    if not isinstance(body, list):
        return None
    return {s["name"]: s for s in body if isinstance(s, dict) and isinstance(s.get("name"), str)}


async def _control(target: SimulatedMaster, verbs: tuple[str, ...]) -> dict[str, Any]:
    """Send the control verbs to the master's session; return its state after the last."""
    path = f"{target.base_url}/_sim/sessions/{quote(target.session['name'], safe='')}"
    async with HttpClient(limit=1) as http:
        for verb in verbs:
            try:
                response = await http.request("POST", f"{path}/{verb}", json={}, timeout=TIMEOUT_S)
                state = response.json()
            except HttpError as error:
                raise SimulatorError(f"{verb}: {error}") from error
            if not response.ok:
                raise SimulatorError(f"{verb}: HTTP {response.status} {response.text_preview()}")
    return state


@require_POST
def simulate(request: HttpRequest, external_id: str) -> HttpResponse:
    """Fail or revive a master's gateway session on the built-in simulator (operators only)."""
    if not request.user.has_perm(OPERATE):
        raise PermissionDenied
    master = get_object_or_404(Master, external_id=external_id)
    action = request.POST.get("action", "")
    if action not in ACTIONS:
        return HttpResponseBadRequest(f"action: use one of {', '.join(ACTIONS)}")
    targets = simulated([master])
    if not targets:
        raise Http404(f"{master.display_name}'s gateway is not on the built-in simulator")
    back = next_url(request, reverse("home") + "#simulator")
    try:
        state = run(_control(targets[0], ACTIONS[action]))
    except SimulatorError as error:
        messages.error(request, f"The simulator did not take it: {error}. Nothing changed.")
        return redirect(back)
    logger.info(
        "game day: %s of %s by %s (session now %s)",
        action,
        master.external_id,
        request.user,
        state.get("mode"),
    )
    messages.success(request, told(master, action, state))
    return redirect(back)


def told(master: Master, action: str, state: dict[str, Any]) -> str:
    """What to tell the operator, and what to watch for next."""
    name, session = master.display_name, state.get("name", master.gateway_session)
    if action == "fail":
        grace = RuntimeSettings.current().failover_timeout_ms / 1000
        return (
            f"{name}'s gateway session {session} is down and restarts will not help. Watch "
            f"it turn failed within a few health checks, then fail over after {grace:g} s."
        )
    return (
        f"{name}'s gateway session {session} works again. Watch it turn healthy and "
        "take a growing share of new messages (slow start)."
    )
