"""The monitoring app's pages: each part keeps its own URL list.

Names (reverse with ``monitoring:<name>``) are contracts the templates and
tests use:
- pages: ``master`` (a master's page), ``report``, ``report-csv``, ``report-json``;
- actions: ``failover``, ``maintenance``, ``reset-breaker`` (by master
  external_id), ``rollback`` (by failover id), ``acknowledge`` (by alert id);
- live: the dashboard's fragments (the websocket route is in ha_portal.asgi);
- metrics: ``metrics`` (``GET /metrics``);
- game day: ``simulate`` (POST, by master external_id: fail or revive its
  gateway on the built-in simulator, see monitoring.gameday).
"""

from django.urls import include, path

from monitoring import gameday

app_name = "monitoring"

urlpatterns = [
    path("masters/<slug:external_id>/simulator/", gameday.simulate, name="simulate"),
    path("", include("monitoring.pages.urls")),
    path("", include("monitoring.actions.urls")),
    path("", include("monitoring.live.urls")),
    path("", include("monitoring.metrics.urls")),
]
