"""The alert rules' names and the event kinds alerts write, with named groups.

``Alert.rule`` holds a ``Rule`` value; the dashboard, admin filters and
webhook payloads show these names, so they are a contract: never rename one.
"""

from __future__ import annotations

from django.db import models


class Rule(models.TextChoices):
    # Critical (delivered at once)
    MASTER_DOWN = "master_down", "Master connection lost"
    FAILOVER_INITIATED = "failover_initiated", "Failover initiated"
    ALL_DOWN = "all_down", "All masters down"
    # Warning (log + dashboard, delivered to recipients who want warnings)
    QUEUE_HIGH = "queue_high", "Message queue over threshold"
    LOAD_SHARE = "load_share", "Load imbalance"
    REPEATED_FAILURES = "repeated_failures", "Multiple failures of one master"
    SLOW_RECOVERY = "slow_recovery", "Recovery taking too long"
    # Info (log only, delivered only to recipients who want info)
    FAILOVER_COMPLETE = "failover_complete", "Failover complete"
    REBALANCED = "rebalanced", "Load rebalancing triggered"
    MASTER_RECOVERED = "master_recovered", "Master recovered"


# Rules over the current state: firing while the condition holds, resolved when it goes.
Rule.CONDITIONS = frozenset(
    {
        Rule.MASTER_DOWN,
        Rule.ALL_DOWN,
        Rule.QUEUE_HIGH,
        Rule.LOAD_SHARE,
        Rule.REPEATED_FAILURES,
        Rule.SLOW_RECOVERY,
    }
)
# Rules over new Event rows: each fires once per event.
Rule.EVENTS = frozenset(
    {Rule.FAILOVER_INITIATED, Rule.FAILOVER_COMPLETE, Rule.REBALANCED, Rule.MASTER_RECOVERED}
)


class AlertEventKind(models.TextChoices):
    """What the Event rows written by alert transitions record (``Event.kind``)."""

    FIRED = "alert.fired", "Alert fired"
    ACKNOWLEDGED = "alert.acknowledged", "Alert acknowledged"
    RESOLVED = "alert.resolved", "Alert resolved"
