"""Load metrics per master, rolled up at a fixed interval, and rebalancing.

The prober (the one elected process) calls ``record_load_metrics`` every
``LOAD_METRICS_INTERVAL`` seconds: a LoadMetric row per active master with
its in-flight and queued messages, what it sent in the interval, its send
latency and its share of the load. When a master carries far more than the
strategy means it to, the conversation affinities pinning contacts to it are
released so new messages spread again (the plan's "rebalancing").
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from django.conf import settings
from django.db import transaction
from django.db.models import Avg, Count, F, Q
from django.utils import timezone

from masters.choices import EventKind, MessageStatus, Strategy
from masters.models import (
    ConversationAffinity,
    Event,
    LoadMetric,
    Master,
    Message,
    RuntimeSettings,
)

IN_QUEUE = (MessageStatus.QUEUED, MessageStatus.RETRYING, MessageStatus.SENDING)
# Shares are only judged over enough messages to mean something.
REBALANCE_MIN_MESSAGES = 50


@dataclass(frozen=True)
class Load:
    master_id: int
    in_flight: int
    queued: int
    sent: int
    latency_ms: float | None


def measure(since: datetime, now: datetime) -> dict[int, Load]:
    """Measure every active master's load in two aggregate queries."""
    masters = list(Master.objects.filter(is_active=True).values_list("pk", flat=True))
    pending = dict.fromkeys(masters, (0, 0))
    rows = (
        Message.objects.filter(master__in=masters, status__in=IN_QUEUE)
        .values("master")
        .annotate(
            sending=Count("pk", filter=Q(status=MessageStatus.SENDING)),
            waiting=Count("pk", filter=~Q(status=MessageStatus.SENDING)),
        )
    )
    for row in rows:
        pending[row["master"]] = (row["sending"], row["waiting"])
    sent_rows = (
        Message.objects.filter(master__in=masters, sent_at__gt=since, sent_at__lte=now)
        .values("master")
        .annotate(sent=Count("pk"), latency=Avg(F("sent_at") - F("created_at")))
    )
    sent = {row["master"]: row for row in sent_rows}
    return {
        pk: Load(
            pk,
            in_flight=pending[pk][0],
            queued=pending[pk][1],
            sent=sent.get(pk, {}).get("sent", 0),
            latency_ms=_millis(sent.get(pk, {}).get("latency")),
        )
        for pk in masters
    }


def _millis(value) -> float | None:
    if value is None:
        return None
    if isinstance(value, timedelta):
        return value.total_seconds() * 1000
    return float(value) / 1000  # SQLite averages the difference in microseconds


def record_load_metrics(interval_s: float | None = None) -> list[LoadMetric]:
    """Write one LoadMetric row per active master for the interval that just ended."""
    interval_s = interval_s or settings.LOAD_METRICS_INTERVAL_S
    now = timezone.now()
    loads = measure(now - timedelta(seconds=interval_s), now)
    total = sum(load.sent for load in loads.values())
    metrics = [
        LoadMetric(
            master_id=load.master_id,
            recorded_at=now,
            in_flight=load.in_flight,
            queue_length=load.queued,
            sent=load.sent,
            throughput_per_s=load.sent / interval_s,
            latency_ms=load.latency_ms,
            share_pct=100 * load.sent / total if total else 0.0,
        )
        for load in loads.values()
    ]
    LoadMetric.objects.bulk_create(metrics)
    rebalance(metrics)
    return metrics


def target_shares(masters: list[Master], strategy: str) -> dict[int, float] | None:
    """Each master's intended share in %, or None where the strategy has no fixed target."""
    if not masters or strategy not in (Strategy.ROUND_ROBIN, Strategy.PRIORITY):
        return None  # least-loaded and geo follow the traffic, not a share
    if strategy == Strategy.ROUND_ROBIN:
        return {m.pk: 100 / len(masters) for m in masters}
    total = sum(m.effective_weight for m in masters) or 1
    return {m.pk: 100 * m.effective_weight / total for m in masters}


def drifted(metrics: list[LoadMetric], targets: dict[int, float]) -> list[int]:
    """Masters whose share is more than REBALANCE_DRIFT_PCT points above their target."""
    if sum(metric.sent for metric in metrics) < REBALANCE_MIN_MESSAGES:
        return []
    limit = settings.BALANCING["rebalance_drift_pct"]
    return [
        metric.master_id
        for metric in metrics
        if metric.master_id in targets and metric.share_pct - targets[metric.master_id] > limit
    ]


def rebalance(metrics: list[LoadMetric]) -> None:
    """Release the affinities of masters carrying far more than their share."""
    routable = [m for m in Master.objects.filter(is_active=True) if m.is_routable]
    targets = target_shares(routable, RuntimeSettings.current().load_balancing_strategy)
    if targets is None:
        return
    for master_id in drifted(metrics, targets):
        with transaction.atomic():
            released, _ = ConversationAffinity.objects.filter(master_id=master_id).delete()
            share = next(m.share_pct for m in metrics if m.master_id == master_id)
            Event.objects.create(
                kind=EventKind.REBALANCED,
                master_id=master_id,
                message=f"Rebalancing: master carried {share:.0f}% of the load against a "
                f"target of {targets[master_id]:.0f}%; {released} affinities released",
                data={"share_pct": share, "target_pct": targets[master_id], "released": released},
            )
