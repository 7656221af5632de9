"""What one scrape costs at 1,000 masters and 100,000 messages (opt-in: HA_METRICS_BENCH=1).

It fills the database with the worst hour for the health-check counters:
1,000 masters probed every 5 s for a whole hour (720,000 checks), then times
full scrapes through the view. Run it on its own; it takes a minute or two.
"""

from __future__ import annotations

import os
import random
import statistics
import time
from datetime import timedelta

import pytest
from django.db import connection
from django.utils import timezone

from masters.choices import FailoverStatus, GatewayKind, HealthStatus, MessageStatus, Role
from masters.models import FailoverEvent, HealthCheck, LoadMetric, Master, Message, ProberLease
from monitoring.metrics import snapshot
from tests.metrics.conftest import TOKEN, Scrape

pytestmark = [
    pytest.mark.skipif(
        os.environ.get("HA_METRICS_BENCH") != "1", reason="scrape benchmark: set HA_METRICS_BENCH=1"
    ),
    pytest.mark.django_db,
]

MASTERS = 1000
MESSAGES = 100_000
CHECKS_PER_MASTER = 720  # one hour at 5 s
STATUS_MIX = [
    (MessageStatus.SENT, 80),
    (MessageStatus.QUEUED, 10),
    (MessageStatus.RETRYING, 5),
    (MessageStatus.SENDING, 2),
    (MessageStatus.DEAD, 2),
    (MessageStatus.EXPIRED, 1),
]


def fill(now) -> list[int]:
    kinds, roles = list(GatewayKind), list(Role)
    Master.objects.bulk_create(
        Master(
            external_id=f"m{i:04d}",
            phone_number=f"+97150{i:07d}",
            display_name=f"M{i}",
            role=roles[i % len(roles)],
            gateway_kind=kinds[i % len(kinds)],
            health_status=HealthStatus.HEALTHY if i % 10 else HealthStatus.FAILED,
        )
        for i in range(MASTERS)
    )
    ids = list(Master.objects.values_list("pk", flat=True))
    rng = random.Random(6)
    statuses = rng.choices([s for s, _ in STATUS_MIX], [w for _, w in STATUS_MIX], k=MESSAGES)
    Message.objects.bulk_create(
        (
            Message(
                master_id=rng.choice(ids),
                status=status,
                to="+971500000001",
                text="hello",
                body_hash="x",
                sent_at=now if status == MessageStatus.SENT else None,
            )
            for status in statuses
        ),
        batch_size=5000,
    )
    adapt = connection.ops.adapt_datetimefield_value
    start = snapshot.epoch_start(now)
    stamps = [adapt(start + timedelta(seconds=5 * k)) for k in range(CHECKS_PER_MASTER)]
    table = HealthCheck._meta.db_table
    sql = (
        f"INSERT INTO {table} (master_id, checked_at, status, response_time_ms, error) "
        "VALUES (%s, %s, %s, %s, '')"
    )
    with connection.cursor() as cursor:
        for master_id in ids:
            cursor.executemany(
                sql, [(master_id, at, "healthy", rng.uniform(5, 400)) for at in stamps]
            )
    LoadMetric.objects.bulk_create(
        LoadMetric(master_id=pk, recorded_at=now, share_pct=100 / MASTERS) for pk in ids
    )
    FailoverEvent.objects.bulk_create(
        FailoverEvent(
            failed_master_id=ids[i],
            backup_master_id=ids[i + 1],
            reason="bench",
            status=FailoverStatus.COMPLETED,
            started_at=now,
        )
        for i in range(0, 200, 2)
    )
    ProberLease.objects.create(holder="bench", renewed_at=now, expires_at=now + timedelta(hours=2))
    return ids


def scrape_once(client) -> tuple[float, bytes]:
    began = time.perf_counter()
    response = client.get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"})
    assert response.status_code == 200
    return time.perf_counter() - began, response.content


def probe_round(ids: list[int], at) -> None:
    """What the prober writes between two scrapes 15 s apart: three checks per master."""
    HealthCheck.objects.bulk_create(
        HealthCheck(master_id=pk, checked_at=at, status="healthy", response_time_ms=50.0)
        for pk in ids
        for _ in range(3)
    )


def test_a_scrape_of_1000_masters_and_100k_messages_stays_fast(
    client, settings, capsys, monkeypatch
):
    settings.METRICS_TOKEN = TOKEN
    # Late in the hour: nearly a full hour of checks is in the current epoch.
    now = snapshot.epoch_start(timezone.now()) + timedelta(minutes=59, seconds=59)
    began = time.perf_counter()
    ids = fill(now)
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("ANALYZE")  # as autovacuum would have by then
    filled = time.perf_counter() - began
    monkeypatch.setattr(timezone, "now", lambda: now)
    # The first scrape of a process counts the hour so far; later ones only what is new.
    cold, _ = scrape_once(client)
    warm = []
    for _ in range(5):
        probe_round(ids, now)
        seconds, body = scrape_once(client)
        warm.append(seconds)
    got = Scrape(body.decode())
    m0001 = {"master": "m0001", "gateway": "evolution"}
    assert got.value("ha_health_checks_total", result="healthy", **m0001) == CHECKS_PER_MASTER + 15
    assert got.value("ha_queue_length", status="queued") > 0
    report = (
        f"\n{connection.vendor}: {MASTERS} masters, {MESSAGES} messages, "
        f"{MASTERS * CHECKS_PER_MASTER} checks this hour (filled in {filled:.0f} s)\n"
        f"  first scrape {cold * 1000:.0f} ms; later scrapes p50 "
        f"{statistics.median(warm) * 1000:.0f} ms (max {max(warm) * 1000:.0f} ms); "
        f"body {len(body) / 1e6:.1f} MB, {len(got.samples)} samples\n"
    )
    with capsys.disabled():
        print(report)
    assert statistics.median(warm) < 3.0
