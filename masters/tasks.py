"""django-q2 task functions: thin wrappers that log what they did.

Scheduled by ``manage.py setup_schedules``. django-q2 runs a task at least
once (a killed worker's task runs again), so every task here is idempotent.
"""

from __future__ import annotations

import logging
from datetime import timedelta

from masters import failover, retention
from masters.models import Event, ProberLease, RuntimeSettings

logger = logging.getLogger(__name__)


def roll_up_health_checks() -> retention.RollupResult:
    """Fold expired raw health checks into hourly roll-ups and drop expired roll-ups."""
    result = retention.roll_up_health_checks()
    logger.info(
        "health roll-up: %d checks into %d buckets, %d raw deleted, %d expired buckets deleted",
        result.rolled_checks,
        result.rollups_written,
        result.raw_deleted,
        result.rollups_deleted,
    )
    pruned = retention.prune_load_metrics()
    if pruned:
        logger.info("load metrics: %d samples past retention deleted", pruned)
    expired = retention.prune_affinities()
    if expired:
        logger.info("conversation affinities: %d expired deleted", expired)
    old_alerts = retention.prune_alerts()
    if old_alerts:
        logger.info("alerts: %d rows resolved before the retention window deleted", old_alerts)
    return result


def check_prober() -> Event | None:
    """Record "health monitoring stopped" once when no prober renewed its lease for 2 intervals.

    The standby probers report a stall too, but when every prober is down
    nobody else would: silence must never pass for health.
    """
    interval_ms = RuntimeSettings.current().health_check_interval_ms
    event = ProberLease.report_stall(grace=timedelta(milliseconds=2 * interval_ms))
    if event is not None:
        logger.warning("%s", event.message)
    return event


def consider_failover(master_id: int) -> None:
    """Fail a master over once its grace period ran out (enqueued by the prober)."""
    event = failover.consider_failover(master_id)
    if event is not None:
        logger.info("failover %s of master %s: %s", event.pk, master_id, event.status)
