"""Security headers Django 5.2 does not send by itself: the Content-Security-Policy.

Registered in ``settings.MIDDLEWARE``; the policy is
``settings.CONTENT_SECURITY_POLICY`` (empty: no header). The portal serves
htmx and its extensions from its own static files and has no inline
scripts, so ``script-src 'self'`` holds; inline styles stay allowed because
htmx adds its indicator styles at run time.
"""

from __future__ import annotations

from collections.abc import Callable

from django.conf import settings
from django.http import HttpRequest, HttpResponse


class ContentSecurityPolicyMiddleware:
    """Add the Content-Security-Policy header to every response that has none."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        response = self.get_response(request)
        policy = getattr(settings, "CONTENT_SECURITY_POLICY", "")
        if policy and "Content-Security-Policy" not in response:
            response["Content-Security-Policy"] = policy
        return response
