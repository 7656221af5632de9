"""Pages for logged-in people: the live dashboard and a master's re-link QR code."""

from __future__ import annotations

from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, render
from django.views.decorators.http import require_safe

from ha_portal.lib.http import HttpClient, run
from masters.gateways import GatewayError, gateway_for
from masters.models import Master
from monitoring import gameday
from monitoring.live.dashboard import load_dashboard
from monitoring.pages.views import viewer_required
from monitoring.roles import OPERATE


@require_safe
@viewer_required
def home(request: HttpRequest) -> HttpResponse:
    """The dashboard, complete as rendered; its websocket keeps it live (monitoring.live)."""
    dashboard = load_dashboard()
    # The game-day panel: masters on the built-in simulator (none outside `make run`).
    simulator = gameday.simulated(row.master for row in dashboard.rows)
    return render(request, "monitoring/home.html", {"dashboard": dashboard, "simulator": simulator})


@require_safe
def master_qr(request: HttpRequest, external_id: str) -> HttpResponse:
    """Show the QR code a logged-out master's gateway offers, to re-link its phone.

    Operators only: a QR code is a short-lived credential for the account.
    """
    if not request.user.has_perm(OPERATE):
        raise PermissionDenied
    master = get_object_or_404(Master, external_id=external_id)
    try:
        qr = run(_fetch_qr(master))
    except GatewayError as error:
        return HttpResponse(f"No QR code: {error.detail}", status=502, content_type="text/plain")
    if qr is None:
        return HttpResponse(
            f"{master.get_gateway_kind_display()} offers no QR code: re-link in the gateway",
            status=404,
            content_type="text/plain",
        )
    response = HttpResponse(qr.data, content_type=qr.mimetype)
    response["Cache-Control"] = "no-store"  # a QR code is a short-lived credential
    return response


async def _fetch_qr(master: Master):
    async with HttpClient() as http:
        return await gateway_for(master.gateway_config(), http).qr_code()
