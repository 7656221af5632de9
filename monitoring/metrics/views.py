"""GET /metrics: the portal's Prometheus metrics, for a scraper holding METRICS_TOKEN.

Prometheus has no session, so the view is exempt from the login every other
page needs (``login_not_required``) and checks ``Authorization: Bearer
<METRICS_TOKEN>`` itself. With no token configured the endpoint does not
exist (404): metrics are never open to anyone by default.
"""

from __future__ import annotations

import hashlib
import hmac
import logging

from django.conf import settings
from django.contrib.auth.decorators import login_not_required
from django.http import HttpRequest, HttpResponse
from django.views.decorators.http import require_GET
from prometheus_client.exposition import choose_encoder

from monitoring.metrics.collector import REGISTRY

logger = logging.getLogger(__name__)

CHALLENGE = 'Bearer realm="metrics"'


@login_not_required  # Prometheus authenticates with the bearer token, not a session
@require_GET
def metrics(request: HttpRequest) -> HttpResponse:
    """Answer a scrape with every ha_* series, read from the database now."""
    token = settings.METRICS_TOKEN
    if not token:
        return HttpResponse("Not found\n", status=404, content_type="text/plain")
    presented = presented_token(request)
    if presented is None:
        return unauthorized("send Authorization: Bearer <METRICS_TOKEN>", CHALLENGE)
    if not same_secret(presented, token):
        logger.warning("GET /metrics refused: wrong token from %s", request.META.get("REMOTE_ADDR"))
        return unauthorized("wrong metrics token", f'{CHALLENGE}, error="invalid_token"')
    encode, content_type = choose_encoder(request.headers.get("Accept", ""))
    response = HttpResponse(encode(REGISTRY), content_type=content_type)
    response["Cache-Control"] = "no-store"
    return response


def presented_token(request: HttpRequest) -> str | None:
    """Return the token of an ``Authorization: Bearer <token>`` header, else None."""
    scheme, _, token = request.headers.get("Authorization", "").strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        return None
    return token


def same_secret(presented: str, expected: str) -> bool:
    """Compare in constant time; hashing first keeps the expected length secret too."""
    return hmac.compare_digest(
        hashlib.sha256(presented.encode()).digest(), hashlib.sha256(expected.encode()).digest()
    )


def unauthorized(message: str, challenge: str) -> HttpResponse:
    response = HttpResponse(f"{message}\n", status=401, content_type="text/plain")
    response["WWW-Authenticate"] = challenge
    return response
