"""Pages for logged-in people: the masters overview (the live dashboard grows here)."""

from __future__ import annotations

from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, render

from ha_portal.lib.http import HttpClient, run
from masters.gateways import GatewayError, gateway_for
from masters.models import Master


def home(request: HttpRequest) -> HttpResponse:
    masters = Master.objects.order_by("priority", "external_id")
    return render(request, "monitoring/home.html", {"masters": masters})


def master_qr(request: HttpRequest, external_id: str) -> HttpResponse:
    """Show the QR code a logged-out master's gateway offers, to re-link its phone."""
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
