"""Bearer-token authentication for the API: ``Authorization: Bearer <token>``.

Tokens come from ``manage.py create_api_token``; only their hashes are stored
(masters.models.ApiToken). Any valid token may use every endpoint of the bot's
API; ``can_operate`` guards the operator endpoints to come.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable

from django.http import HttpRequest, HttpResponse, JsonResponse

from masters.models import ApiToken

logger = logging.getLogger(__name__)

View = Callable[..., HttpResponse]

# A real token is "hap_" and 43 characters; anything far longer is not one.
MAX_TOKEN_CHARS = 200


def unauthorized(error: str, challenge: str = "Bearer") -> JsonResponse:
    response = JsonResponse({"error": error}, status=401)
    response["WWW-Authenticate"] = challenge
    return response


def bearer_token(request: HttpRequest) -> str | None:
    """Return the token of a well-formed ``Authorization: Bearer`` header, else None."""
    scheme, _, token = request.headers.get("Authorization", "").strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token or " " in token or len(token) > MAX_TOKEN_CHARS:
        return None
    return token


def token_required(view: View) -> View:
    """Refuse the request with 401 unless it carries an active token; set ``request.api_token``."""

    @functools.wraps(view)
    def wrapper(request: HttpRequest, *args, **kwargs) -> HttpResponse:
        if "Authorization" not in request.headers:
            return unauthorized("authentication required: send Authorization: Bearer <token>")
        token = bearer_token(request)
        if token is None:
            return unauthorized(
                "malformed Authorization header: expected Bearer <token>",
                'Bearer error="invalid_request"',
            )
        row = ApiToken.authenticate(token)
        if row is None:
            logger.warning("API request to %s refused: unknown or revoked token", request.path)
            return unauthorized("invalid or revoked token", 'Bearer error="invalid_token"')
        request.api_token = row
        return view(request, *args, **kwargs)

    return wrapper


def can_operate(request: HttpRequest) -> bool:
    """Say whether the request's token carries operator rights (failover, rollback)."""
    token = getattr(request, "api_token", None)
    return token is not None and token.can_operate


def operator_required(view: View) -> View:
    """Refuse with 403 unless the token may operate; goes inside ``token_required``."""

    @functools.wraps(view)
    def wrapper(request: HttpRequest, *args, **kwargs) -> HttpResponse:
        if not can_operate(request):
            return JsonResponse({"error": "this token may not operate masters"}, status=403)
        return view(request, *args, **kwargs)

    return wrapper
