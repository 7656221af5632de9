"""The portal's Prometheus metrics, read from the database at scrape time.

``PortalCollector`` is registered in a registry of its own (``REGISTRY``), not
prometheus_client's global one, so /metrics shows only the portal's series
(no process or Python metrics of whichever web process answered) and tests
can collect it directly. Every web process computes the same numbers from
the same database, so it does not matter which one Prometheus reaches.

Per-master series carry ``master`` (the external id) and ``gateway`` (the
gateway kind). The role is only on ``ha_master_info``: a failover swaps the
roles of the failed master and its backup, and a label that changes in the
same scrape as a counter increments would hide that increment from
``increase()``. Join it in where needed:
``... * on (master) group_left (role) ha_master_info``.

docs/METRICS.md describes each series; docs/grafana and docs/prometheus use them.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from prometheus_client.core import (
    CollectorRegistry,
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from masters.choices import FailoverStatus, HealthStatus, MessageStatus, Severity
from monitoring.metrics import snapshot
from monitoring.metrics.snapshot import LATENCY_BUCKETS_S, MasterRow, Snapshot
from monitoring.models import OPEN_STATES, DeliveryStatus

MASTER_LABELS = ["master", "gateway"]
QUEUE_STATUSES = (MessageStatus.QUEUED, MessageStatus.RETRYING, MessageStatus.SENDING)
ERROR_STATUSES = (MessageStatus.DEAD, MessageStatus.EXPIRED)
CHECK_RESULTS = sorted(HealthStatus.PROBE_RESULTS)


class PortalCollector(Collector):
    """Collect every ha_* series from one database snapshot per scrape."""

    def collect(self) -> Iterator[Metric]:
        yield from families(snapshot.take())


def families(snap: Snapshot) -> list[Metric]:
    """Turn a snapshot into metric families (no database access: plain data in, metrics out)."""
    return [
        *master_families(snap),
        *queue_families(snap),
        *failover_families(snap),
        *check_families(snap),
        *alert_families(snap),
        *prober_families(snap),
    ]


def _labels(master: MasterRow, *extra: str) -> list[str]:
    return [master.external_id, master.gateway, *extra]


def master_families(snap: Snapshot) -> Iterable[Metric]:
    info = GaugeMetricFamily(
        "ha_master_info",
        "Always 1: a master's role (it changes at failover) beside its id and gateway kind.",
        labels=[*MASTER_LABELS, "role"],
    )
    health = GaugeMetricFamily(
        "ha_master_health",
        "1 for the master's current health status, 0 for the others.",
        labels=[*MASTER_LABELS, "status"],
    )
    active = GaugeMetricFamily(
        "ha_master_active",
        "1 if the master is active (takes traffic when healthy).",
        labels=MASTER_LABELS,
    )
    failures = GaugeMetricFamily(
        "ha_master_consecutive_failures",
        "Failed or degraded probes in a row, as the health state machine counts them.",
        labels=MASTER_LABELS,
    )
    share = GaugeMetricFamily(
        "ha_master_load_share_percent",
        "Share of the messages sent in the latest load-metrics interval (%).",
        labels=MASTER_LABELS,
    )
    for master in snap.masters:
        info.add_metric(_labels(master, master.role), 1)
        for status in HealthStatus.values:
            health.add_metric(_labels(master, status), int(master.status == status))
        active.add_metric(_labels(master), int(master.active))
        failures.add_metric(_labels(master), master.consecutive_failures)
        if master.pk in snap.load_share:
            share.add_metric(_labels(master), snap.load_share[master.pk])
    return [info, health, active, failures, share]


def queue_families(snap: Snapshot) -> Iterable[Metric]:
    per_master = GaugeMetricFamily(
        "ha_master_queue_length",
        "Unsent messages assigned to the master, by status.",
        labels=[*MASTER_LABELS, "status"],
    )
    total = GaugeMetricFamily(
        "ha_queue_length",
        "Unsent messages in the whole queue by status, including those not yet assigned.",
        labels=["status"],
    )
    sent = CounterMetricFamily(
        "ha_messages_sent",
        "Messages sent through the master (rows in status sent; see docs/METRICS.md).",
        labels=MASTER_LABELS,
    )
    errors = CounterMetricFamily(
        "ha_message_errors",
        "Messages that ended unsent on the master: dead (gave up) or expired.",
        labels=[*MASTER_LABELS, "status"],
    )
    for master in snap.masters:
        for status in QUEUE_STATUSES:
            count = snap.messages.get((master.pk, status), 0)
            per_master.add_metric(_labels(master, status), count)
        sent.add_metric(_labels(master), snap.messages.get((master.pk, MessageStatus.SENT), 0))
        for status in ERROR_STATUSES:
            errors.add_metric(_labels(master, status), snap.messages.get((master.pk, status), 0))
    for status in QUEUE_STATUSES:
        count = sum(n for (_, s), n in snap.messages.items() if s == status)
        total.add_metric([status], count)
    return [per_master, total, sent, errors]


def failover_families(snap: Snapshot) -> Iterable[Metric]:
    started = CounterMetricFamily(
        "ha_failovers",
        "Failovers initiated from the master (every FailoverEvent, whatever became of it).",
        labels=MASTER_LABELS,
    )
    by_status = GaugeMetricFamily(
        "ha_failovers_by_status",
        "Failovers from the master by their current status (only statuses with any).",
        labels=[*MASTER_LABELS, "status"],
    )
    for master in snap.masters:
        counts = {s: snap.failovers.get((master.pk, s), 0) for s in FailoverStatus.values}
        started.add_metric(_labels(master), sum(counts.values()))
        for status, count in counts.items():
            if count:
                by_status.add_metric(_labels(master, status), count)
    return [started, by_status]


def check_families(snap: Snapshot) -> Iterable[Metric]:
    epoch = f"since {snap.checks_since:%H:%M} UTC, the start of the hour (resets hourly)"
    checks = CounterMetricFamily(
        "ha_health_checks",
        f"Health probes by result, {epoch}.",
        labels=[*MASTER_LABELS, "result"],
    )
    latency = HistogramMetricFamily(
        "ha_health_check_latency_seconds",
        f"Probe response time, computed from HealthCheck rows {epoch}.",
        labels=MASTER_LABELS,
    )
    bounds = [_bound(b) for b in LATENCY_BUCKETS_S]
    for master in snap.masters:
        stats = snap.checks.get(master.pk)
        for result in CHECK_RESULTS:
            checks.add_metric(_labels(master, result), stats.by_result[result] if stats else 0)
        counts = stats.le_counts if stats else (0,) * len(bounds)
        buckets = [*zip(bounds, counts, strict=True), ("+Inf", stats.timed if stats else 0)]
        latency.add_metric(_labels(master), buckets, stats.latency_sum_s if stats else 0.0)
    return [checks, latency]


def _bound(seconds: float) -> str:
    return f"{seconds:g}"


def alert_families(snap: Snapshot) -> Iterable[Metric]:
    alerts = GaugeMetricFamily(
        "ha_alerts_open",
        "Open alerts (firing or acknowledged) by severity and state.",
        labels=["severity", "state"],
    )
    for severity in Severity.values:
        for state in OPEN_STATES:
            alerts.add_metric([severity, state], snap.alerts.get((severity, state), 0))
    deliveries = GaugeMetricFamily(
        "ha_alert_deliveries",
        "Alert notices (one per recipient and notice) by their current delivery status.",
        labels=["status"],
    )
    for status in DeliveryStatus.values:
        deliveries.add_metric([status], snap.deliveries.get(status, 0))
    return [alerts, deliveries]


def prober_families(snap: Snapshot) -> Iterable[Metric]:
    lease = snap.lease
    held = GaugeMetricFamily(
        "ha_prober_lease_held",
        "1 while a prober holds an unexpired lease (holder: who holds or last held it).",
        labels=["holder"],
    )
    held.add_metric([lease.holder if lease else ""], int(bool(lease and lease.live)))
    down = GaugeMetricFamily(
        "ha_all_masters_down",
        "1 while every probed master fails at once (automatic failover holds).",
    )
    down.add_metric([], int(bool(lease and lease.all_down)))
    found = [held, down]
    if lease is not None and lease.heartbeat_age_s is not None:
        found.append(
            GaugeMetricFamily(
                "ha_prober_heartbeat_age_seconds",
                "Seconds since the prober last renewed its lease (by this web node's clock).",
                value=lease.heartbeat_age_s,
            )
        )
    return found


REGISTRY = CollectorRegistry()
REGISTRY.register(PortalCollector())
