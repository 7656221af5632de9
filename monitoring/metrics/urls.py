"""URLs of this part of the monitoring app (included by monitoring.urls)."""

from django.urls import path

from monitoring.metrics import views

urlpatterns = [
    path("metrics", views.metrics, name="metrics"),
]
