"""Websocket routes of the live dashboard (ha_portal.asgi serves them behind the auth stack)."""

from __future__ import annotations

from django.urls import path

from monitoring.live.consumers import DashboardConsumer

websocket_urlpatterns = [
    # templates/monitoring/home.html connects to it (ws-connect).
    path("ws/dashboard/", DashboardConsumer.as_asgi()),
]
