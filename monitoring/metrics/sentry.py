"""Optional error reporting to Sentry, switched on by SENTRY_DSN.

sentry-sdk is not a dependency of the portal: a deployment that wants Sentry
installs it (``pip install sentry-sdk``). Setting SENTRY_DSN without it is a
configuration error, reported at start-up rather than silently ignored.
"""

from __future__ import annotations

from django.core.exceptions import ImproperlyConfigured

MISSING = (
    "SENTRY_DSN is set but the sentry-sdk package is not installed: "
    "pip install sentry-sdk (or unset SENTRY_DSN)"
)


def init_sentry(dsn: str | None) -> bool:
    """Start reporting errors to Sentry at ``dsn``; do nothing without one.

    Returns whether Sentry was started. Called from settings, so it imports
    nothing of Django's app registry.
    """
    if not dsn:
        return False
    try:
        import sentry_sdk
        from sentry_sdk.integrations.django import DjangoIntegration
    except ImportError as error:
        raise ImproperlyConfigured(MISSING) from error
    sentry_sdk.init(
        dsn=dsn,
        integrations=[DjangoIntegration()],
        # Requests carry API tokens and gateway secrets: never send headers,
        # cookies or user details along with an error.
        send_default_pii=False,
        traces_sample_rate=0.0,
    )
    return True
