"""URLs of this part of the monitoring app (included by monitoring.urls)."""

urlpatterns: list = []
