"""Fixtures for /metrics: the token, a scrape, and a database in a known state."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from django.utils import timezone
from prometheus_client.parser import text_string_to_metric_families

from masters.choices import FailoverStatus, GatewayKind, HealthStatus, MessageStatus, Role, Severity
from masters.models import FailoverEvent, HealthCheck, LoadMetric, Message, ProberLease
from monitoring.metrics import snapshot
from monitoring.models import Alert, AlertDelivery, AlertState, DeliveryStatus, Notice
from tests.conftest import make_master

TOKEN = "metrics-token-for-tests"
# Half past an hour: the health-check epoch began 30 minutes before.
NOW = datetime(2025, 3, 14, 10, 30, tzinfo=UTC)


@pytest.fixture(autouse=True)
def fresh_check_totals():
    """Each test's database starts afresh (ids are reused), so must the running totals."""
    snapshot.CHECK_TOTALS.reset()
    yield
    snapshot.CHECK_TOTALS.reset()


@pytest.fixture
def metrics_on(settings):
    settings.METRICS_TOKEN = TOKEN
    return TOKEN


class Scrape:
    """A parsed /metrics body: look samples up by name and labels."""

    def __init__(self, body: str) -> None:
        self.body = body
        self.families = {f.name: f for f in text_string_to_metric_families(body)}
        self.samples = {
            (s.name, frozenset(s.labels.items())): s.value
            for family in self.families.values()
            for s in family.samples
        }

    def value(self, name: str, **labels: str) -> float | None:
        return self.samples.get((name, frozenset(labels.items())))

    def names(self) -> set[str]:
        """Sample names: what Prometheus stores and queries can use (ha_x_total, ha_x_bucket)."""
        return {name for name, _ in self.samples}

    def label_names(self) -> set[str]:
        return {key for _, labels in self.samples for key, _ in labels}


@pytest.fixture
def scrape(client, metrics_on):
    def get() -> Scrape:
        response = client.get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"})
        assert response.status_code == 200, response.content[:500]
        return Scrape(response.content.decode())

    return get


@pytest.fixture
def frozen_now(monkeypatch):
    """Make timezone.now() return NOW, so the hourly epoch and ages are fixed."""
    monkeypatch.setattr(timezone, "now", lambda: NOW)
    return NOW


def messages(master, status: str, count: int) -> None:
    Message.objects.bulk_create(
        Message(
            master=master,
            status=status,
            to="+971500000001",
            text="hi",
            body_hash="x",
            sent_at=NOW if status == MessageStatus.SENT else None,
        )
        for _ in range(count)
    )


def checks(master, *results: tuple[str, float | None], at: datetime = NOW) -> None:
    HealthCheck.objects.bulk_create(
        HealthCheck(
            master=master, checked_at=at - timedelta(seconds=i + 1), status=s, response_time_ms=ms
        )
        for i, (s, ms) in enumerate(results)
    )


@pytest.fixture
def known_state(db, frozen_now):
    """Three masters in different states, with messages, checks, a failover and alerts."""
    alpha = make_master("alpha", "+971505760001", role=Role.PRIMARY)
    beta = make_master(
        "beta",
        "+971505760002",
        role=Role.SECONDARY,
        gateway_kind=GatewayKind.EVOLUTION,
        health_status=HealthStatus.FAILED,
        consecutive_failures=4,
    )
    gamma = make_master(
        "gamma",
        "+971505760003",
        role=Role.BACKUP,
        health_status=HealthStatus.MAINTENANCE,
        is_active=False,
    )
    messages(alpha, MessageStatus.SENT, 5)
    messages(alpha, MessageStatus.QUEUED, 2)
    messages(alpha, MessageStatus.SENDING, 1)
    messages(alpha, MessageStatus.DEAD, 1)
    messages(beta, MessageStatus.RETRYING, 3)
    messages(beta, MessageStatus.EXPIRED, 2)
    messages(None, MessageStatus.QUEUED, 4)  # not yet assigned to a master

    checks(alpha, ("healthy", 8.0), ("healthy", 40.0), ("healthy", 300.0))
    checks(beta, ("failed", None), ("failed", 2500.0), ("degraded", 900.0))
    # Before this hour's epoch: not counted.
    checks(alpha, ("failed", 1.0), at=NOW - timedelta(minutes=45))

    FailoverEvent.objects.create(
        failed_master=beta,
        backup_master=alpha,
        reason="connection lost",
        status=FailoverStatus.COMPLETED,
        started_at=NOW - timedelta(minutes=5),
    )
    FailoverEvent.objects.create(
        failed_master=beta,
        backup_master=alpha,
        reason="connection lost",
        status=FailoverStatus.ROLLED_BACK,
        started_at=NOW - timedelta(minutes=50),
    )

    LoadMetric.objects.create(master=alpha, recorded_at=NOW - timedelta(seconds=20), share_pct=100)
    LoadMetric.objects.create(master=alpha, recorded_at=NOW - timedelta(seconds=10), share_pct=75)
    LoadMetric.objects.create(master=beta, recorded_at=NOW - timedelta(seconds=10), share_pct=25)

    firing = Alert.objects.create(
        dedup_key=f"master.down:{beta.pk}",
        rule="master_down",
        severity=Severity.CRITICAL,
        master=beta,
        title="Beta lost its connection",
        fired_at=NOW,
        last_seen_at=NOW,
    )
    Alert.objects.create(
        dedup_key="queue.backlog",
        rule="queue_backlog",
        severity=Severity.WARNING,
        state=AlertState.ACKNOWLEDGED,
        title="Queue over 1,000",
        fired_at=NOW,
        last_seen_at=NOW,
    )
    Alert.objects.create(
        dedup_key="queue.backlog",
        rule="queue_backlog",
        severity=Severity.WARNING,
        state=AlertState.RESOLVED,
        title="Queue over 1,000",
        fired_at=NOW - timedelta(hours=2),
        last_seen_at=NOW - timedelta(hours=2),
        resolved_at=NOW - timedelta(hours=1),
    )
    for status in (DeliveryStatus.SENT, DeliveryStatus.SENT, DeliveryStatus.FAILED):
        AlertDelivery.objects.create(
            alert=firing, notice=Notice.TRIGGER, target="email to ops@example.com", status=status
        )
    ProberLease.objects.create(
        holder="node-1:4242",
        acquired_at=NOW - timedelta(hours=1),
        renewed_at=NOW - timedelta(seconds=2),
        expires_at=NOW + timedelta(seconds=5),
    )
    return alpha, beta, gamma
