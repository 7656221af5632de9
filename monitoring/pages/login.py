"""The login page with a rate limit: failed attempts are counted per username and per address.

``settings.LOGIN_RATE_LIMIT`` gives the number of failed attempts allowed
within ``window_s`` seconds (counted from the first failure). Past it, an
attempt is refused before the password is even checked, so guessing gets
no answers and costs no password hashing. A successful login clears both
counters. Counters live in Django's cache: per process on the embedded
default (LocMemCache), shared by every web node when REDIS_URL is set.
"""

from __future__ import annotations

import hashlib
import logging

from django.conf import settings
from django.contrib.auth.views import LoginView
from django.core.cache import cache
from django.http import HttpRequest, HttpResponse

logger = logging.getLogger(__name__)


def client_address(request: HttpRequest) -> str:
    """Return the client's address; behind the TLS proxy, the one the proxy saw.

    Only the last X-Forwarded-For entry is trusted: it is the one our own
    proxy appended, while earlier entries are whatever the client sent.
    """
    forwarded = request.META.get("HTTP_X_FORWARDED_FOR", "")
    if getattr(settings, "SECURE_PROXY_SSL_HEADER", None) and forwarded:
        return forwarded.split(",")[-1].strip()
    return request.META.get("REMOTE_ADDR", "") or "unknown"


class LoginThrottle:
    """Failed-login counters for one username and one client address."""

    def __init__(self, username: str, address: str) -> None:
        # Hashed: cache keys must be short and safe, whatever people type.
        name = hashlib.sha256(username.strip().casefold().encode()).hexdigest()[:32]
        self.keys = [f"login-failures:address:{address}"]
        if username.strip():
            self.keys.append(f"login-failures:user:{name}")
        self.limit = settings.LOGIN_RATE_LIMIT["attempts"]
        self.window_s = settings.LOGIN_RATE_LIMIT["window_s"]

    @classmethod
    def for_request(cls, request: HttpRequest) -> LoginThrottle:
        return cls(request.POST.get("username", ""), client_address(request))

    def locked(self) -> bool:
        counts = cache.get_many(self.keys)
        return any(count >= self.limit for count in counts.values())

    def fail(self) -> None:
        for key in self.keys:
            cache.add(key, 0, timeout=self.window_s)  # the window starts at the first failure
            try:
                cache.incr(key)
            except ValueError:  # expired between add and incr
                cache.set(key, 1, timeout=self.window_s)

    def reset(self) -> None:
        cache.delete_many(self.keys)


class RateLimitedLoginView(LoginView):
    """Django's LoginView, refusing attempts past the rate limit (HTTP 429)."""

    def post(self, request: HttpRequest, *args, **kwargs) -> HttpResponse:
        self.throttle = LoginThrottle.for_request(request)
        if self.throttle.locked():
            logger.warning(
                "login refused: rate limit reached for %s", client_address(request)
            )  # the username is not logged: people type passwords into it
            form = self.get_form_class()(
                request, initial={"username": request.POST.get("username")}
            )
            minutes = max(1, round(self.throttle.window_s / 60))
            context = self.get_context_data(
                form=form,
                locked_out=f"Too many failed log-in attempts. Wait {minutes} minute"
                f"{'s' if minutes != 1 else ''} and try again.",
            )
            return self.render_to_response(context, status=429)
        return super().post(request, *args, **kwargs)

    def form_valid(self, form) -> HttpResponse:
        self.throttle.reset()
        return super().form_valid(form)

    def form_invalid(self, form) -> HttpResponse:
        self.throttle.fail()
        return super().form_invalid(form)
