"""The health report: per-master uptime, incidents, failovers and load share, as HTML, CSV, JSON."""

from __future__ import annotations

import csv
import io
import json
from datetime import timedelta

import pytest
from django.urls import reverse
from django.utils import timezone

from masters.choices import FailoverStatus, HealthStatus, MessageStatus
from masters.models import FailoverEvent
from monitoring.reports import PeriodError, build_report, outages, parse_period
from tests.conftest import make_master
from tests.pages.conftest import add_messages, checks, health_change

pytestmark = pytest.mark.django_db

H = timedelta(hours=1)
FAILED, HEALTHY, DEGRADED = HealthStatus.FAILED, HealthStatus.HEALTHY, HealthStatus.DEGRADED


@pytest.fixture
def history(operator):
    """A day with known numbers, three days ago.

    a: failed an hour before the day began, healthy 30 min in; failed again at 10:00,
    degraded, healthy at 10:30; 3 of 4 checks healthy; failed over to b at 10:05;
    sent 1 message. b: failed at 20:00 and still is; 2 healthy checks; sent 3
    messages in the day and 1 before it.
    """
    t0 = (timezone.now() - timedelta(days=3)).replace(minute=0, second=0, microsecond=0)
    a = make_master("a", "+971505760056")
    b = make_master("b", "+971505760057", health_status=FAILED)
    health_change(a, FAILED, t0 - H, HEALTHY)
    health_change(a, HEALTHY, t0 + H / 2, FAILED)
    health_change(a, FAILED, t0 + 10 * H, HEALTHY)
    health_change(a, DEGRADED, t0 + 10 * H + timedelta(minutes=10), FAILED)
    health_change(a, HEALTHY, t0 + 10 * H + timedelta(minutes=30), DEGRADED)
    health_change(b, FAILED, t0 + 20 * H, HEALTHY)
    checks(a, t0 + H, "hhhf")
    checks(b, t0 + H, "hh")
    FailoverEvent.objects.create(
        failed_master=a,
        backup_master=b,
        reason="=cmd|' /C calc'!A0",  # a gateway error in a reason must not become a formula
        status=FailoverStatus.COMPLETED,
        automatic=False,
        initiated_by=operator,
        started_at=t0 + 10 * H + timedelta(minutes=5),
        finished_at=t0 + 10 * H + timedelta(minutes=5, seconds=1),
        duration_ms=250.0,
        moved_messages=7,
        moved_affinities=3,
    )
    add_messages(a, 1, MessageStatus.SENT, sent_at=t0 + 2 * H)
    add_messages(b, 3, MessageStatus.SENT, sent_at=t0 + 3 * H)
    add_messages(b, 1, MessageStatus.SENT, sent_at=t0 - 2 * H)
    add_messages(a, 5, MessageStatus.QUEUED)  # queued: not load that was carried
    return t0, t0 + 24 * H


def test_the_report_holds_uptime_incidents_failovers_and_load_share(history):
    start, end = history
    report = build_report(start, end)
    a, b = report["masters"]
    assert (a["id"], a["uptime_pct"], b["uptime_pct"]) == ("a", 75.0, 100.0)
    assert (a["incidents"], a["downtime_s"], a["mttr_s"]) == (2, 3600.0, 3600.0)
    assert (b["incidents"], b["downtime_s"], b["mttr_s"]) == (1, 4 * 3600.0, None)
    assert (a["failovers"], b["failovers"]) == (1, 0)
    assert (a["sent"], a["share_pct"], b["sent"], b["share_pct"]) == (1, 25.0, 3, 75.0)
    assert report["totals"] == {"sent": 4, "incidents": 3, "failovers": 1}
    first, second, ongoing = report["incidents"]
    assert (first["master"], first["started_at"], first["duration_s"]) == ("a", start - H, 5400)
    assert second["duration_s"] == 1800 and not second["ongoing"]
    assert ongoing["master"] == "b" and ongoing["ongoing"] and ongoing["ended_at"] is None
    (failover,) = report["failovers"]
    assert failover["failed"] == "a" and failover["backup"] == "b"
    assert (failover["duration_ms"], failover["moved_messages"]) == (250.0, 7)
    assert failover["initiated_by"] == "operator" and failover["automatic"] is False


def test_the_json_download_carries_the_report(viewer_client, history):
    start, end = history
    response = viewer_client.get(
        reverse("monitoring:report-json"), {"start": start.isoformat(), "end": end.isoformat()}
    )
    assert response.status_code == 200
    assert response["Content-Type"] == "application/json"
    assert "attachment" in response["Content-Disposition"]
    data = json.loads(response.content)
    assert data["period"]["start"].startswith(start.strftime("%Y-%m-%dT%H:%M:%S"))
    assert data["period"]["seconds"] == 86400
    rows = {row["id"]: row for row in data["masters"]}
    assert rows["a"]["uptime_pct"] == 75.0 and rows["b"]["share_pct"] == 75.0
    assert [i["master"] for i in data["incidents"]] == ["a", "a", "b"]
    assert data["incidents"][0]["duration_s"] == 5400
    assert data["failovers"][0]["moved_affinities"] == 3


def test_the_csv_download_has_a_section_per_table(viewer_client, history):
    start, end = history
    response = viewer_client.get(
        reverse("monitoring:report-csv"), {"start": start.isoformat(), "end": end.isoformat()}
    )
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/csv")
    rows = list(csv.reader(io.StringIO(response.content.decode())))
    sections = {row[0]: index for index, row in enumerate(rows) if len(row) == 1}
    assert list(sections) == ["masters", "incidents", "failovers"]
    masters_at = sections["masters"]
    assert rows[masters_at + 1][:5] == ["id", "display_name", "role", "health_status", "uptime_pct"]
    a = dict(zip(rows[masters_at + 1], rows[masters_at + 2], strict=True))
    assert (a["id"], a["uptime_pct"], a["incidents"], a["mttr_s"], a["share_pct"]) == (
        "a",
        "75.0",
        "2",
        "3600.0",
        "25.0",
    )
    b = dict(zip(rows[masters_at + 1], rows[masters_at + 3], strict=True))
    assert b["mttr_s"] == "" and b["sent"] == "3"
    incidents = rows[sections["incidents"] + 2 : sections["failovers"] - 1]
    assert [row[0] for row in incidents] == ["a", "a", "b"]
    assert incidents[2][2] == "" and incidents[2][4] == "true"  # still ongoing
    header, failover = rows[sections["failovers"] + 1], rows[sections["failovers"] + 2]
    row = dict(zip(header, failover, strict=True))
    assert row["reason"].startswith("'=")  # quoted: a spreadsheet shows it, never runs it
    assert (row["failed"], row["backup"], row["moved_messages"]) == ("a", "b", "7")


def test_the_report_page_shows_the_tables_and_download_links(viewer_client, history):
    page = viewer_client.get(reverse("monitoring:report"), {"since": "7d"}).content.decode()
    assert "Health report" in page
    assert "75.00 %" in page  # a's uptime
    assert "1 h 00 min" in page  # a's mean time to recover
    assert f"{reverse('monitoring:report-csv')}?since=7d" in page
    assert "<svg" in page


@pytest.mark.parametrize(
    ("query", "parameter"),
    [
        ({"since": "5x"}, "since"),
        ({"since": "0h"}, "since"),
        ({"since": "1000d"}, "since"),
        ({"start": "yesterday"}, "start"),
        ({"end": "2025-01-02"}, "start"),
        ({"start": "2025-01-02", "end": "2025-01-01"}, "end"),
        ({"since": "24h", "start": "2025-01-01"}, "since"),
    ],
)
def test_a_bad_period_is_a_400_naming_the_parameter(viewer_client, query, parameter):
    response = viewer_client.get(reverse("monitoring:report-json"), query)
    assert response.status_code == 400
    assert response.json()["parameter"] == parameter
    assert viewer_client.get(reverse("monitoring:report-csv"), query).status_code == 400
    page = viewer_client.get(reverse("monitoring:report"), query)
    assert page.status_code == 400 and f"Bad period: {parameter}:" in page.content.decode()


def test_a_date_alone_covers_the_whole_day():
    now = timezone.now()
    start, end = parse_period({"start": "2025-01-01", "end": "2025-01-01"}, now)
    assert end - start == timedelta(days=1)
    start, end = parse_period({"since": "7d"}, now)
    assert (end, end - start) == (now, timedelta(days=7))
    with pytest.raises(PeriodError):
        parse_period({"start": (now + timedelta(days=1)).isoformat()}, now)


def test_an_outage_lasts_from_failed_to_healthy_whatever_happens_in_between():
    t = timezone.now()
    changes = [(t, FAILED), (t + H, DEGRADED), (t + 2 * H, FAILED), (t + 3 * H, HEALTHY)]
    assert outages(changes) == [(t, t + 3 * H)]
    assert outages([(t, HEALTHY), (t + H, FAILED)], failed_since=t - H) == [
        (t - H, t),
        (t + H, None),
    ]


def test_strangers_cannot_read_the_report(client, stranger, history):
    client.force_login(stranger)
    for name in ("monitoring:report", "monitoring:report-csv", "monitoring:report-json"):
        assert client.get(reverse(name)).status_code == 403
