"""The domain's own endpoints: gateway status webhooks (the bot's API joins them here)."""

from __future__ import annotations

from django.urls import include, path

from masters import webhooks

app_name = "masters"

urlpatterns = [
    path("hooks/waha/<slug:external_id>", webhooks.waha_hook, name="waha-hook"),
    path("hooks/evolution/<slug:external_id>", webhooks.evolution_hook, name="evolution-hook"),
    path("api/v1/", include("masters.api.urls")),
]
