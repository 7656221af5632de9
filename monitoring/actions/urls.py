"""URLs of this part of the monitoring app (included by monitoring.urls).

Each action answers GET with a confirmation page (the dry-run preview) and
acts on POST. The names are contracts the dashboard's templates reverse.
"""

from django.urls import path

from monitoring.actions import views

urlpatterns = [
    path("masters/<slug:external_id>/failover/", views.failover, name="failover"),
    path("masters/<slug:external_id>/maintenance/", views.maintenance, name="maintenance"),
    path("masters/<slug:external_id>/breaker/reset/", views.reset_breaker, name="reset-breaker"),
    path("failovers/<int:failover_id>/rollback/", views.rollback, name="rollback"),
    path("alerts/<int:alert_id>/acknowledge/", views.acknowledge, name="acknowledge"),
]
