"""`manage.py ha status|load|report`: aligned tables for people, --json for scripts."""

from __future__ import annotations

import json
from datetime import timedelta
from io import StringIO

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.utils import timezone

from masters.choices import FailoverStatus, HealthStatus, MessageStatus, Role
from masters.models import FailoverEvent, LoadMetric
from tests.conftest import make_master
from tests.pages.conftest import add_messages, checks, health_change

pytestmark = pytest.mark.django_db


def ha(*args: str) -> str:
    out = StringIO()
    call_command("ha", *args, stdout=out)
    return out.getvalue()


@pytest.fixture
def pair(operator):
    """a failed and failed over to b 10 minutes ago; both have load samples and checks."""
    now = timezone.now()
    a = make_master("a", role=Role.SECONDARY, health_status=HealthStatus.FAILED)
    b = make_master("b", "+971505760057", role=Role.PRIMARY, priority=2)
    health_change(a, HealthStatus.FAILED, now - timedelta(minutes=12), HealthStatus.HEALTHY)
    checks(a, now - timedelta(hours=2), "hhhf")
    checks(b, now - timedelta(hours=2), "hhhh")
    FailoverEvent.objects.create(
        failed_master=a,
        backup_master=b,
        reason="failed for over 30s",
        status=FailoverStatus.COMPLETED,
        initiated_by=operator,
        automatic=False,
        started_at=now - timedelta(minutes=10),
        duration_ms=180.4,
        moved_messages=42,
        moved_affinities=5,
    )
    for master, share, queue in ((a, 10.0, 0), (b, 90.0, 17)):
        LoadMetric.objects.create(
            master=master, recorded_at=now - timedelta(minutes=1), share_pct=share - 5
        )
        LoadMetric.objects.create(
            master=master,
            recorded_at=now - timedelta(seconds=10),
            share_pct=share,
            queue_length=queue,
            throughput_per_s=share / 10,
        )
    add_messages(a, 1, MessageStatus.SENT, sent_at=now - timedelta(minutes=30))
    add_messages(b, 3, MessageStatus.SENT, sent_at=now - timedelta(minutes=20))
    return a, b


def test_status_lists_masters_with_health_and_role_and_the_active_failover(pair):
    out = ha("status")
    lines = out.splitlines()
    assert lines[0].split() == [
        "master", "role", "health", "since", "failures", "resp", "ms", "breaker", "active",
    ]  # fmt: skip
    a_line = next(line for line in lines if line.startswith("a "))
    assert "secondary" in a_line and "failed" in a_line and "closed" in a_line
    assert "Active failovers:" in out
    failover_line = lines[lines.index("Active failovers:") + 3]
    assert failover_line.split()[:4] == [str(FailoverEvent.objects.get().pk), "a", "b", "completed"]
    assert "operator" in failover_line and "42" in failover_line


def test_status_columns_line_up(pair):
    header, _, a_line, b_line = ha("status").splitlines()[:4]
    column = header.index("health")
    assert a_line[column:].startswith("failed ") and b_line[column:].startswith("healthy ")
    right = header.index("failures") + len("failures")  # numbers are right-aligned
    assert a_line[right - 1] == "0" and a_line[right] == " "


def test_status_json_is_for_scripts(pair):
    data = json.loads(ha("status", "--json"))
    assert [m["id"] for m in data["masters"]] == ["a", "b"]
    assert data["masters"][0]["health_status"] == "failed"
    assert data["masters"][1]["role"] == "primary"
    (failover,) = data["active_failovers"]
    assert (failover["failed"], failover["backup"], failover["moved_messages"]) == ("a", "b", 42)


def test_a_rolled_back_failover_is_no_longer_active(pair):
    FailoverEvent.objects.update(status=FailoverStatus.ROLLED_BACK)
    assert "Active failovers: none" in ha("status")
    assert json.loads(ha("status", "--json"))["active_failovers"] == []


def test_load_shows_the_latest_sample_per_master(pair):
    data = json.loads(ha("load", "--json"))
    rows = {m["id"]: m for m in data["masters"]}
    assert (rows["b"]["share_pct"], rows["b"]["queue_length"]) == (90.0, 17)
    assert rows["b"]["throughput_per_s"] == 9.0
    assert (rows["a"]["sent"], rows["b"]["sent"], rows["b"]["sent_share_pct"]) == (1, 3, 75.0)
    table = ha("load")
    b_line = next(line for line in table.splitlines() if line.startswith("b "))
    assert b_line.split()[1:5] == ["healthy", "90.0", "17", "0"]


def test_load_without_samples_shows_dashes(db):
    make_master("lonely")
    line = next(line for line in ha("load").splitlines() if line.startswith("lonely"))
    assert line.split()[2:4] == ["-", "-"]


def test_report_prints_uptime_incidents_and_failovers(pair):
    out = ha("report", "--since", "24h")
    a_line = next(line for line in out.splitlines() if line.startswith("a "))
    assert a_line.split()[:4] == ["a", "failed", "75.0", "1"]
    assert "Incidents:" in out and "ongoing" in out
    assert "Failovers:" in out and "completed" in out


def test_report_json_matches_the_web_report(pair):
    data = json.loads(ha("report", "--since", "7d", "--json"))
    assert data["period"]["seconds"] == 7 * 86400
    rows = {m["id"]: m for m in data["masters"]}
    assert rows["a"]["uptime_pct"] == 75.0 and rows["b"]["uptime_pct"] == 100.0
    assert rows["b"]["share_pct"] == 75.0
    assert data["failovers"][0]["duration_ms"] == 180.4


def test_a_bad_since_is_refused_naming_the_option(db):
    with pytest.raises(CommandError, match="--since: expected hours or days"):
        ha("report", "--since", "soon")
