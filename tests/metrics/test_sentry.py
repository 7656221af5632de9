"""SENTRY_DSN turns Sentry on; without the sentry-sdk package that is a clear error."""

from __future__ import annotations

import sys
import types

import pytest
from django.core.exceptions import ImproperlyConfigured

from monitoring.metrics.sentry import init_sentry

DSN = "https://public@o0.ingest.sentry.io/1"


def test_without_the_package_a_dsn_is_a_configuration_error_naming_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "sentry_sdk", None)  # as if not installed
    with pytest.raises(ImproperlyConfigured, match=r"pip install sentry-sdk"):
        init_sentry(DSN)


def test_without_a_dsn_nothing_is_imported_or_started(monkeypatch):
    monkeypatch.setitem(sys.modules, "sentry_sdk", None)
    assert init_sentry("") is False
    assert init_sentry(None) is False


def test_with_the_package_it_starts_without_sending_personal_data(monkeypatch):
    # sentry-sdk is not installed here, and Sentry itself cannot run: a stand-in records the call.
    calls = []
    sdk = types.ModuleType("sentry_sdk")
    sdk.init = lambda **options: calls.append(options)
    django_integration = types.ModuleType("sentry_sdk.integrations.django")
    django_integration.DjangoIntegration = type("DjangoIntegration", (), {})
    monkeypatch.setitem(sys.modules, "sentry_sdk", sdk)
    monkeypatch.setitem(sys.modules, "sentry_sdk.integrations", types.ModuleType("integrations"))
    monkeypatch.setitem(sys.modules, "sentry_sdk.integrations.django", django_integration)
    assert init_sentry(DSN) is True
    (options,) = calls
    assert options["dsn"] == DSN
    assert options["send_default_pii"] is False
    assert [type(i).__name__ for i in options["integrations"]] == ["DjangoIntegration"]
