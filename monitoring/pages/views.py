"""Read-only pages for anyone who may view masters: a master's page and the health report."""

from __future__ import annotations

import csv
import functools
import json
from collections.abc import Callable
from datetime import datetime, timedelta

from django.core.exceptions import PermissionDenied
from django.core.serializers.json import DjangoJSONEncoder
from django.db.models import Q
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import get_object_or_404, render
from django.utils import timezone
from django.utils.safestring import mark_safe
from django.views.decorators.http import require_safe

from masters.choices import EventKind, FailoverStatus, HealthStatus
from masters.metrics import uptime
from masters.models import Event, FailoverEvent, HealthCheck, LoadMetric, Master
from monitoring import charts, reports
from monitoring.models import Alert, AlertState

VIEW_MASTERS = "masters.view_master"
UPTIME_WINDOWS = (
    ("24 h", timedelta(hours=24)),
    ("7 d", timedelta(days=7)),
    ("30 d", timedelta(days=30)),
)
HISTORY_ROWS = 50
CHART_BUCKETS = 96  # 15-minute buckets over 24 hours
TREND_DAYS = 30

View = Callable[..., HttpResponse]


def viewer_required(view: View) -> View:
    """Let in only users who may view masters (the viewer role and up); others get 403."""

    @functools.wraps(view)
    def wrapper(request: HttpRequest, *args, **kwargs) -> HttpResponse:
        if not request.user.has_perm(VIEW_MASTERS):
            raise PermissionDenied
        return view(request, *args, **kwargs)

    return wrapper


@require_safe
@viewer_required
def master(request: HttpRequest, external_id: str) -> HttpResponse:
    """Show one master: uptime, recovery, history, charts, failovers and events."""
    target = get_object_or_404(Master, external_id=external_id)
    now = timezone.now()
    recent = reports.incidents(now - timedelta(days=TREND_DAYS), now, [target.pk])
    mttr = reports.mean_time_to_recover(recent)
    context = {
        "master": target,
        "uptimes": [
            (label, _pct(uptime(target, now - span, now))) for label, span in UPTIME_WINDOWS
        ],
        "incidents": [
            (i, reports.human_duration(i.duration(now).total_seconds())) for i in reversed(recent)
        ],
        "mttr": reports.human_duration(mttr.total_seconds()) if mttr else None,
        "trend_days": TREND_DAYS,
        "checks": HealthCheck.objects.filter(master=target).order_by("-checked_at")[:HISTORY_ROWS],
        "events": Event.objects.filter(master=target).select_related("actor")[:HISTORY_ROWS],
        "failovers": failovers_of(target),
        "alerts": [
            (alert, alert.state == AlertState.FIRING)
            for alert in Alert.objects.open().filter(master=target)
        ],
        "charts": master_charts(target, now),
    }
    return render(request, "pages/master.html", context)


def failovers_of(target: Master) -> list[tuple[FailoverEvent, bool]]:
    """The master's latest failovers (from or to it), each with whether it can be rolled back."""
    events = FailoverEvent.objects.filter(Q(failed_master=target) | Q(backup_master=target))
    latest = events.select_related("failed_master", "backup_master", "initiated_by")[:20]
    return [(event, event.status == FailoverStatus.COMPLETED) for event in latest]


def master_charts(target: Master, now: datetime) -> dict[str, str]:
    """The master page's SVG charts (their text is escaped by monitoring.charts)."""
    day_ago = now - timedelta(hours=24)
    checks = HealthCheck.objects.filter(master=target, checked_at__gte=day_ago)
    timings = list(checks.values_list("checked_at", "response_time_ms"))
    loads = list(
        LoadMetric.objects.filter(master=target, recorded_at__gte=day_ago).values_list(
            "recorded_at", "share_pct", "throughput_per_s"
        )
    )
    fold = functools.partial(reports.buckets, start=day_ago, end=now, count=CHART_BUCKETS)
    local = [(timezone.localtime(at), value) for at, value in fold(timings)]
    peaks = [(timezone.localtime(at), value) for at, value in fold(timings, how="max")]
    today = timezone.localdate(now)
    days = [today - timedelta(days=n) for n in reversed(range(TREND_DAYS))]
    failures = Event.objects.filter(
        master=target,
        kind=EventKind.HEALTH_CHANGED,
        data__to=HealthStatus.FAILED,
        created_at__gte=now - timedelta(days=TREND_DAYS),
    ).values_list("created_at", flat=True)
    failovers = FailoverEvent.objects.filter(
        failed_master=target, started_at__gte=now - timedelta(days=TREND_DAYS)
    ).values_list("started_at", flat=True)
    svg = {
        "response": charts.line_chart(
            {"mean": local, "max": peaks},
            title="Response time, last 24 h (15-minute buckets)",
            y_label="ms",
        ),
        "share": charts.line_chart(
            [(timezone.localtime(at), v) for at, v in fold([(a, s) for a, s, _ in loads])],
            width=420,
            title="Share of load (%), last 24 h",
            y_label="%",
            y_max=100,
        ),
        "throughput": charts.line_chart(
            [(timezone.localtime(at), v) for at, v in fold([(a, t) for a, _, t in loads])],
            width=420,
            title="Throughput (messages/s), last 24 h",
            y_label="msg/s",
        ),
        "failures": charts.bar_chart(
            [day.strftime("%d %b") for day in days],
            {
                "failures": reports.daily_counts(failures, TREND_DAYS, today),
                "failovers": reports.daily_counts(failovers, TREND_DAYS, today),
            },
            title=f"Failures and failovers per day, last {TREND_DAYS} days",
            colours=(charts.PALETTE[1], charts.PALETTE[0]),  # failures red, failovers blue
            integer=True,
        ),
    }
    # Safe: monitoring.charts escapes every text it puts in the SVG.
    return {name: mark_safe(chart) for name, chart in svg.items()}


def _pct(ratio: float | None) -> float | None:
    return None if ratio is None else 100 * ratio


# --- the health report ------------------------------------------------------------------


def report_period(view: Callable[..., HttpResponse]) -> View:
    """Read the period from the query string; answer 400 naming the parameter if it is bad."""

    @functools.wraps(view)
    def wrapper(request: HttpRequest) -> HttpResponse:
        now = timezone.now()
        try:
            start, end = reports.parse_period(request.GET, now)
        except reports.PeriodError as error:
            return view(request, None, error)
        return view(request, reports.build_report(start, end, now), None)

    return wrapper


@require_safe
@viewer_required
@report_period
def report(request: HttpRequest, data: dict | None, error: reports.PeriodError | None):
    """The health report page for a chosen period, with CSV and JSON downloads."""
    context = {
        "report": data,
        "error": error,
        "since_choices": reports.SINCE_CHOICES,
        "query": request.GET.urlencode(),
        "params": request.GET,
    }
    if data and data["totals"]["sent"]:
        context["share_chart"] = mark_safe(  # escaped by monitoring.charts
            charts.bar_chart(
                [row["id"] for row in data["masters"]],
                {"share %": [row["share_pct"] for row in data["masters"]]},
                title="Share of messages sent, by master (%)",
            )
        )
    if data:
        human = reports.human_duration
        context["masters"] = [
            row | {"downtime": human(row["downtime_s"]), "mttr": human(row["mttr_s"])}
            for row in data["masters"]
        ]
        context["incidents"] = [
            row | {"took": human(row["duration_s"])} for row in data["incidents"]
        ]
    return render(request, "pages/report.html", context, status=400 if error else 200)


@require_safe
@viewer_required
@report_period
def report_json(request: HttpRequest, data: dict | None, error: reports.PeriodError | None):
    """The health report as JSON (datetimes in ISO 8601, durations in seconds)."""
    if error:
        return JsonResponse({"error": str(error), "parameter": error.parameter}, status=400)
    response = HttpResponse(
        json.dumps(data, cls=DjangoJSONEncoder, indent=2), content_type="application/json"
    )
    response["Content-Disposition"] = f'attachment; filename="{_filename(data, "json")}"'
    return response


# The CSV's sections and their columns (docs/OPERATIONS.md describes them).
CSV_SECTIONS = {
    "masters": [
        "id",
        "display_name",
        "role",
        "health_status",
        "uptime_pct",
        "incidents",
        "downtime_s",
        "mttr_s",
        "failovers",
        "sent",
        "share_pct",
    ],
    "incidents": ["master", "started_at", "ended_at", "duration_s", "ongoing"],
    "failovers": [
        "id",
        "failed",
        "backup",
        "status",
        "automatic",
        "initiated_by",
        "started_at",
        "finished_at",
        "duration_ms",
        "moved_messages",
        "moved_affinities",
        "reason",
    ],
}


@require_safe
@viewer_required
@report_period
def report_csv(request: HttpRequest, data: dict | None, error: reports.PeriodError | None):
    """The health report as CSV: a section per table, each a title row, a header and rows."""
    if error:
        return HttpResponse(str(error), status=400, content_type="text/plain")
    response = HttpResponse(content_type="text/csv; charset=utf-8")
    response["Content-Disposition"] = f'attachment; filename="{_filename(data, "csv")}"'
    write_report_csv(data, response)
    return response


def write_report_csv(data: dict, out) -> None:
    """Write the report's sections to ``out`` (a file-like object)."""
    writer = csv.writer(out)
    period = data["period"]
    writer.writerow(["period", _cell(period["start"]), _cell(period["end"])])
    for section, columns in CSV_SECTIONS.items():
        writer.writerow([])
        writer.writerow([section])
        writer.writerow(columns)
        for row in data[section]:
            writer.writerow([_cell(row[column]) for column in columns])


def _cell(value) -> str:
    """Format a CSV cell; text that a spreadsheet would run as a formula is quoted."""
    if value is None:
        return ""
    if isinstance(value, datetime):
        return value.isoformat()
    text = str(value).lower() if isinstance(value, bool) else str(value)
    if isinstance(value, str) and text[:1] in ("=", "+", "-", "@", "\t", "\r"):
        return "'" + text  # gateway errors end up in failover reasons: never a formula
    return text


def _filename(data: dict, extension: str) -> str:
    start, end = data["period"]["start"], data["period"]["end"]
    return f"ha-report-{start:%Y%m%d-%H%M}-{end:%Y%m%d-%H%M}.{extension}"
