"""Every status and kind the domain uses, with named groups and UI colours.

Views, templates and JavaScript use these names, never bare strings.
"""

from __future__ import annotations

from django.db import models


class Role(models.TextChoices):
    PRIMARY = "primary", "Primary"
    SECONDARY = "secondary", "Secondary"
    TERTIARY = "tertiary", "Tertiary"
    BACKUP = "backup", "Backup"


# The plan's priority weights by role, used when a master has no weight of its own.
ROLE_WEIGHTS = {Role.PRIMARY: 3.0, Role.SECONDARY: 1.0, Role.TERTIARY: 0.5, Role.BACKUP: 0.5}


class HealthStatus(models.TextChoices):
    UNKNOWN = "unknown", "Unknown"
    HEALTHY = "healthy", "Healthy"
    DEGRADED = "degraded", "Degraded"
    FAILED = "failed", "Failed"
    MAINTENANCE = "maintenance", "Maintenance"


# Only a healthy master gets new messages; degraded ones finish what they hold.
HealthStatus.ROUTABLE = frozenset({HealthStatus.HEALTHY})
# What a probe can conclude (unknown and maintenance are never probe results).
HealthStatus.PROBE_RESULTS = frozenset(
    {HealthStatus.HEALTHY, HealthStatus.DEGRADED, HealthStatus.FAILED}
)
HealthStatus.COLOURS = {
    HealthStatus.UNKNOWN: "grey",
    HealthStatus.HEALTHY: "green",
    HealthStatus.DEGRADED: "amber",
    HealthStatus.FAILED: "red",
    HealthStatus.MAINTENANCE: "blue",
}


class GatewayKind(models.TextChoices):
    WAHA = "waha", "WAHA"
    EVOLUTION = "evolution", "Evolution API"
    CLOUD_API = "cloud_api", "WhatsApp Cloud API"


class Strategy(models.TextChoices):
    ROUND_ROBIN = "round-robin", "Round robin"
    PRIORITY = "priority", "Priority-weighted"
    LEAST_LOADED = "least-loaded", "Least loaded"
    GEO = "geo", "Geo (recipient's country)"


class MessageStatus(models.TextChoices):
    QUEUED = "queued", "Queued"
    SENDING = "sending", "Sending"
    SENT = "sent", "Sent"
    RETRYING = "retrying", "Retrying"
    EXPIRED = "expired", "Expired"
    DEAD = "dead", "Dead"


MessageStatus.PENDING = frozenset({MessageStatus.QUEUED, MessageStatus.RETRYING})
MessageStatus.TERMINAL = frozenset({MessageStatus.SENT, MessageStatus.EXPIRED, MessageStatus.DEAD})


class MessagePriority(models.TextChoices):
    NORMAL = "normal", "Normal"
    HIGH = "high", "High"


class FailoverStatus(models.TextChoices):
    IN_PROGRESS = "in-progress", "In progress"
    COMPLETED = "completed", "Completed"
    FAILED = "failed", "Failed"
    ROLLED_BACK = "rolled-back", "Rolled back"


class Severity(models.TextChoices):
    CRITICAL = "critical", "Critical"
    WARNING = "warning", "Warning"
    INFO = "info", "Info"


class RecipientKind(models.TextChoices):
    EMAIL = "email", "Email"
    WEBHOOK = "webhook", "Webhook"


class WebhookFormat(models.TextChoices):
    JSON = "json", "JSON (HMAC-SHA256 signed)"
    SLACK = "slack", "Slack incoming webhook"
    PAGERDUTY = "pagerduty", "PagerDuty Events API v2"


class EventKind(models.TextChoices):
    """What an Event row records; monitoring's alert rules key on these."""

    CONFIG_IMPORTED = "config.imported", "Configuration imported"
    HEALTH_CHANGED = "master.health_changed", "Master health changed"
    SEND_EJECTED = "master.send_ejected", "Master ejected for failing sends"
    GATEWAY_WEBHOOK = "master.gateway_webhook", "Gateway reported a status"
    MAINTENANCE_STARTED = "master.maintenance_started", "Maintenance started"
    MAINTENANCE_ENDED = "master.maintenance_ended", "Maintenance ended"
    REBALANCED = "load.rebalanced", "Load rebalanced"
    FAILOVER_STARTED = "failover.started", "Failover initiated"
    FAILOVER_COMPLETED = "failover.completed", "Failover complete"
    FAILOVER_FAILED = "failover.failed", "Failover failed"
    FAILOVER_ROLLED_BACK = "failover.rolled_back", "Failover rolled back"
    FAILOVER_SKIPPED = "failover.skipped", "Failover not needed"
    NO_BACKUP = "failover.no_backup", "No backup master left"
    RECOVERY_ATTEMPTED = "recovery.attempted", "Gateway restart attempted"
    RECOVERY_EXHAUSTED = "recovery.exhausted", "Gateway restarts exhausted"
    NEEDS_RELINK = "recovery.needs_relink", "Phone needs re-linking"
    BREAKER_TRIPPED = "failover.breaker_tripped", "Circuit breaker open"
    BREAKER_RESET = "failover.breaker_reset", "Circuit breaker reset"
    ALL_DOWN = "masters.all_down", "All masters down"
    SOME_UP = "masters.some_up", "A master answers again"
    PROBER_ACQUIRED = "prober.acquired", "Prober took the lease"
    PROBER_TAKEOVER = "prober.takeover", "Prober took over from a stalled one"
    PROBER_STOPPED = "prober.stopped", "Prober stopped"
    PROBER_STALLED = "prober.stalled", "Health monitoring stopped"
