"""The bot's API, mounted at /api/v1/ by masters.urls (names live in the "masters" namespace)."""

from __future__ import annotations

from django.urls import path, re_path

from masters.api import failovers, views

urlpatterns = [
    path("messages", views.create_message, name="api-messages"),
    path("messages/batch", views.create_batch, name="api-message-batch"),
    path("messages/<int:message_id>", views.message_detail, name="api-message"),
    path("route", views.route, name="api-route"),
    path("masters", views.master_list, name="api-masters"),
    path(
        "masters/<slug:external_id>/failover",
        failovers.master_failover,
        name="api-master-failover",
    ),
    path("failovers", failovers.failover_list, name="api-failovers"),
    path(
        "failovers/<int:failover_id>/rollback",
        failovers.failover_rollback,
        name="api-failover-rollback",
    ),
    path("openapi.json", views.openapi_document, name="api-openapi"),
    # Last: anything else under /api/v1/ gets a JSON 404, not the HTML page.
    # [\s\S], not ".": a path may hold a newline (%0A), which "." does not match.
    re_path(r"^(?P<rest>[\s\S]*)$", views.not_found),
]
