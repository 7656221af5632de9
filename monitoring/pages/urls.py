"""URLs of this part of the monitoring app (included by monitoring.urls).

The names are contracts: templates and other parts reverse ``monitoring:master``,
``monitoring:report``, ``monitoring:report-csv`` and ``monitoring:report-json``.
"""

from django.urls import path

from monitoring.pages import views

urlpatterns = [
    path("masters/<slug:external_id>/", views.master, name="master"),
    path("report/", views.report, name="report"),
    path("report.csv", views.report_csv, name="report-csv"),
    path("report.json", views.report_json, name="report-json"),
]
