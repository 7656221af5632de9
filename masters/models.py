"""The domain's tables: masters and everything that happens to them.

State that changes over time is a row (HealthCheck, FailoverEvent, Event),
and every state change writes an ``Event`` in the same transaction.
"""

from __future__ import annotations

import re
from typing import Any

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models
from django.db.models import Q

from masters.choices import (
    ROLE_WEIGHTS,
    FailoverStatus,
    GatewayKind,
    HealthStatus,
    MessagePriority,
    MessageStatus,
    RecipientKind,
    Role,
    Severity,
    Strategy,
    WebhookFormat,
)
from masters.gateways.base import GatewayConfig
from masters.validators import validate_e164, validate_http_url

CLOUD_API_DEFAULT_URL = "https://graph.facebook.com"
API_VERSION_RE = re.compile(r"^v\d+\.\d+$")


class Master(models.Model):
    """A WhatsApp sender account reached through one gateway."""

    external_id = models.SlugField(
        "id", max_length=100, unique=True, help_text="The master's id in bots-config.json."
    )
    phone_number = models.CharField(
        max_length=16,
        unique=True,
        validators=[validate_e164],
        help_text="E.164, e.g. +971505760056",
    )
    display_name = models.CharField(max_length=100)
    role = models.CharField(max_length=16, choices=Role, default=Role.SECONDARY)
    priority = models.PositiveIntegerField(default=1, help_text="Lower goes first.")
    weight = models.FloatField(
        null=True,
        blank=True,
        validators=[MinValueValidator(0.0), MaxValueValidator(1000.0)],
        help_text="Share for the priority-weighted strategy; blank = by role (3 / 1 / 0.5).",
    )
    failover_priority = models.PositiveIntegerField(default=1, help_text="Lower is tried first.")
    region = models.CharField(max_length=50, blank=True)
    is_active = models.BooleanField(default=True)
    health_status = models.CharField(
        max_length=16, choices=HealthStatus, default=HealthStatus.UNKNOWN, editable=False
    )
    health_changed_at = models.DateTimeField(null=True, blank=True, editable=False)

    gateway_kind = models.CharField(max_length=16, choices=GatewayKind, default=GatewayKind.WAHA)
    # Blank when the config file names no gateway (the plan's v3/v4 shape):
    # such a master is never probed healthy, so it never gets traffic.
    gateway_url = models.CharField(max_length=300, blank=True, validators=[validate_http_url])
    gateway_session = models.CharField(
        max_length=200,
        blank=True,
        help_text="WAHA session, Evolution instance or Cloud API phone number id.",
    )
    gateway_api_version = models.CharField(
        max_length=10, blank=True, help_text="Cloud API only, e.g. v21.0."
    )
    # Write-only: never rendered back in the admin, exports omit it unless asked.
    gateway_secret = models.CharField(max_length=500, blank=True)

    max_messages_per_second = models.PositiveIntegerField(
        default=20, validators=[MinValueValidator(1)]
    )
    max_recipients_per_day = models.PositiveIntegerField(
        default=1000, validators=[MinValueValidator(1)]
    )

    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["priority", "external_id"]
        indexes = [
            # The balancer and prober load routable / probeable masters constantly.
            models.Index(fields=["is_active", "health_status"], name="master_routable_idx"),
            models.Index(fields=["failover_priority"], name="master_failover_prio_idx"),
        ]

    def __str__(self) -> str:
        return f"{self.display_name} ({self.phone_number})"

    def __repr__(self) -> str:
        # Spelled out so that no debug dump or log line ever carries gateway_secret.
        return f"<Master {self.external_id} {self.gateway_kind} {self.health_status}>"

    @property
    def effective_weight(self) -> float:
        return self.weight if self.weight is not None else ROLE_WEIGHTS[Role(self.role)]

    @property
    def health_colour(self) -> str:
        return HealthStatus.COLOURS[HealthStatus(self.health_status)]

    @property
    def is_routable(self) -> bool:
        return self.is_active and self.health_status in HealthStatus.ROUTABLE

    def clean(self) -> None:
        errors: dict[str, str] = {}
        if self.has_gateway and not self.gateway_session:
            errors["gateway_session"] = "required once a gateway is set"
        if self.gateway_kind == GatewayKind.CLOUD_API:
            version = self.gateway_api_version or "v21.0"
            if not API_VERSION_RE.match(version):
                errors["gateway_api_version"] = "must look like v21.0"
        if errors:
            raise ValidationError(errors)

    @property
    def has_gateway(self) -> bool:
        return bool(self.gateway_url or self.gateway_kind == GatewayKind.CLOUD_API)

    def gateway_config(self) -> GatewayConfig:
        url = self.gateway_url or (
            CLOUD_API_DEFAULT_URL if self.gateway_kind == GatewayKind.CLOUD_API else ""
        )
        return GatewayConfig(
            kind=self.gateway_kind,
            url=url.rstrip("/"),
            session=self.gateway_session,
            api_key=self.gateway_secret,
            api_version=self.gateway_api_version or "v21.0",
        )


class RuntimeSettings(models.Model):
    """The failover settings an admin can change while the portal runs.

    One row, seeded from the environment (settings.HA_DEFAULTS) and updated by
    the config import's ``failoverSettings``.
    """

    failover_enabled = models.BooleanField(default=True)
    health_check_interval_ms = models.PositiveIntegerField(
        default=5000, validators=[MinValueValidator(500)]
    )
    failover_timeout_ms = models.PositiveIntegerField(default=30000)
    max_recovery_attempts = models.PositiveIntegerField(default=5)
    load_balancing_strategy = models.CharField(
        max_length=16, choices=Strategy, default=Strategy.ROUND_ROBIN
    )
    alert_critical_enabled = models.BooleanField(default=True)
    alert_warning_enabled = models.BooleanField(default=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        verbose_name = "runtime settings"
        verbose_name_plural = "runtime settings"

    def __str__(self) -> str:
        return "Failover settings"

    @classmethod
    def current(cls) -> RuntimeSettings:
        settings_row, _ = cls.objects.get_or_create(pk=1, defaults=settings.HA_DEFAULTS)
        return settings_row


class HealthCheck(models.Model):
    """One probe of one master."""

    master = models.ForeignKey(Master, on_delete=models.CASCADE, related_name="health_checks")
    checked_at = models.DateTimeField()
    status = models.CharField(max_length=16, choices=HealthStatus)
    response_time_ms = models.FloatField(null=True, blank=True)
    error = models.TextField(blank=True)

    class Meta:
        indexes = [
            models.Index(fields=["master", "-checked_at"], name="healthcheck_master_time_idx"),
            models.Index(fields=["checked_at"], name="healthcheck_time_idx"),
        ]

    def __str__(self) -> str:
        return f"{self.master_id} {self.status} at {self.checked_at:%Y-%m-%d %H:%M:%S}"


class LoadMetric(models.Model):
    """A master's load over one roll-up interval."""

    master = models.ForeignKey(Master, on_delete=models.CASCADE, related_name="load_metrics")
    recorded_at = models.DateTimeField()
    in_flight = models.PositiveIntegerField(default=0)
    sent = models.PositiveIntegerField(default=0, help_text="Messages sent in the interval.")
    throughput_per_s = models.FloatField(default=0.0)
    latency_ms = models.FloatField(null=True, blank=True)
    queue_length = models.PositiveIntegerField(default=0)
    share_pct = models.FloatField(default=0.0)

    class Meta:
        indexes = [
            models.Index(fields=["master", "-recorded_at"], name="loadmetric_master_time_idx"),
            models.Index(fields=["recorded_at"], name="loadmetric_time_idx"),
        ]

    def __str__(self) -> str:
        return f"{self.master_id} load at {self.recorded_at:%Y-%m-%d %H:%M:%S}"


class Message(models.Model):
    """One outgoing message: the queue is this table (a transactional outbox)."""

    idempotency_key = models.CharField(max_length=200, null=True, blank=True, unique=True)
    body_hash = models.CharField(max_length=64, help_text="SHA-256 of the request body fields.")
    to = models.CharField(max_length=16, validators=[validate_e164])
    text = models.TextField()
    region = models.CharField(max_length=50, blank=True)
    priority = models.CharField(
        max_length=8, choices=MessagePriority, default=MessagePriority.NORMAL
    )
    status = models.CharField(max_length=16, choices=MessageStatus, default=MessageStatus.QUEUED)
    master = models.ForeignKey(
        Master, null=True, blank=True, on_delete=models.PROTECT, related_name="messages"
    )
    # Fencing number: bumped whenever the assignment moves, so a dispatcher
    # holding a stale claim cannot record a send after a failover.
    epoch = models.PositiveIntegerField(default=0)
    attempts = models.PositiveIntegerField(default=0)
    next_attempt_at = models.DateTimeField(null=True, blank=True)
    expires_at = models.DateTimeField(null=True, blank=True)
    lease_owner = models.CharField(max_length=100, blank=True)
    lease_expires_at = models.DateTimeField(null=True, blank=True)
    last_error = models.TextField(blank=True)
    gateway_message_id = models.CharField(max_length=200, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)
    sent_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        indexes = [
            # The dispatcher's claim: pending messages due now, oldest first.
            models.Index(
                fields=["next_attempt_at", "id"],
                name="message_due_idx",
                condition=Q(status__in=["queued", "retrying"]),
            ),
            # Failover: a master's pending and in-flight work; dashboard counts.
            models.Index(fields=["master", "status"], name="message_master_status_idx"),
            # Lease reclaim: claimed messages whose lease ran out.
            models.Index(
                fields=["lease_expires_at"],
                name="message_lease_idx",
                condition=Q(status="sending"),
            ),
            models.Index(fields=["status", "updated_at"], name="message_status_time_idx"),
        ]

    def __str__(self) -> str:
        return f"message {self.pk} to {self.to} ({self.status})"


class ConversationAffinity(models.Model):
    """A contact's current master: the same contact keeps the same sender."""

    contact = models.CharField(max_length=16, unique=True, validators=[validate_e164])
    master = models.ForeignKey(Master, on_delete=models.CASCADE, related_name="affinities")
    expires_at = models.DateTimeField()
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        verbose_name_plural = "conversation affinities"
        indexes = [models.Index(fields=["master", "expires_at"], name="affinity_master_idx")]

    def __str__(self) -> str:
        return f"{self.contact} -> {self.master_id}"


class FailoverEvent(models.Model):
    """One failover (or its rollback): what moved where, why, and how it ended."""

    failed_master = models.ForeignKey(
        Master, on_delete=models.PROTECT, related_name="failovers_from"
    )
    backup_master = models.ForeignKey(
        Master, null=True, blank=True, on_delete=models.PROTECT, related_name="failovers_to"
    )
    reason = models.TextField()
    status = models.CharField(
        max_length=16, choices=FailoverStatus, default=FailoverStatus.IN_PROGRESS
    )
    automatic = models.BooleanField(default=True)
    initiated_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL
    )
    started_at = models.DateTimeField()
    finished_at = models.DateTimeField(null=True, blank=True)
    duration_ms = models.FloatField(null=True, blank=True)
    moved_messages = models.PositiveIntegerField(default=0)
    moved_affinities = models.PositiveIntegerField(default=0)
    checksum = models.CharField(max_length=64, blank=True)
    detail = models.JSONField(default=dict, blank=True, help_text="Candidates and why skipped.")

    class Meta:
        ordering = ["-started_at"]
        indexes = [
            models.Index(fields=["-started_at"], name="failover_time_idx"),
            models.Index(fields=["failed_master", "-started_at"], name="failover_master_idx"),
        ]

    def __str__(self) -> str:
        return f"failover of {self.failed_master_id} -> {self.backup_master_id} ({self.status})"


class EventQuerySet(models.QuerySet):
    def after(self, event_id: int) -> EventQuerySet:
        """Events a reconnecting dashboard missed, oldest first."""
        return self.filter(pk__gt=event_id).order_by("pk")


class Event(models.Model):
    """The audit trail: one row per state change, written in the change's transaction.

    Monitoring turns these rows into live pushes, alerts and metrics.
    """

    created_at = models.DateTimeField(auto_now_add=True, db_index=True)
    kind = models.CharField(max_length=50)
    severity = models.CharField(max_length=10, choices=Severity, default=Severity.INFO)
    master = models.ForeignKey(
        Master, null=True, blank=True, on_delete=models.SET_NULL, related_name="events"
    )
    actor = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL
    )
    message = models.TextField(blank=True)
    data = models.JSONField(default=dict, blank=True)

    objects = EventQuerySet.as_manager()

    class Meta:
        ordering = ["-id"]
        indexes = [
            models.Index(fields=["master", "-id"], name="event_master_idx"),
            models.Index(fields=["kind", "-id"], name="event_kind_idx"),
        ]

    def __str__(self) -> str:
        return f"{self.kind}: {self.message}"

    @classmethod
    def record(
        cls,
        kind: str,
        message: str,
        *,
        master: Master | None = None,
        severity: str = Severity.INFO,
        actor: Any = None,
        **data: Any,
    ) -> Event:
        """Write one event row; call it inside the transaction of the change it records."""
        return cls.objects.create(
            kind=kind, message=message, master=master, severity=severity, actor=actor, data=data
        )


class AlertRecipient(models.Model):
    """Where alerts go: an email address or a webhook, with the severities it wants.

    Kept beside the masters because bots-config.json carries both; the
    monitoring app delivers to these.
    """

    kind = models.CharField(max_length=10, choices=RecipientKind)
    email = models.EmailField(blank=True)
    url = models.CharField(max_length=500, blank=True, validators=[validate_http_url])
    secret = models.CharField(max_length=500, blank=True, help_text="HMAC key or routing key.")
    format = models.CharField(max_length=12, choices=WebhookFormat, default=WebhookFormat.JSON)
    wants_critical = models.BooleanField(default=True)
    wants_warning = models.BooleanField(default=True)
    wants_info = models.BooleanField(default=False)
    is_active = models.BooleanField(default=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["email"], condition=Q(kind="email"), name="recipient_unique_email"
            ),
            models.UniqueConstraint(
                fields=["url"], condition=Q(kind="webhook"), name="recipient_unique_url"
            ),
        ]

    def __str__(self) -> str:
        return self.email if self.kind == RecipientKind.EMAIL else self.url

    def __repr__(self) -> str:
        return f"<AlertRecipient {self.kind} {self}>"

    def clean(self) -> None:
        if self.kind == RecipientKind.EMAIL and not self.email:
            raise ValidationError({"email": "required for an email recipient"})
        if self.kind == RecipientKind.WEBHOOK and not self.url:
            raise ValidationError({"url": "required for a webhook recipient"})

    def wants(self, severity: str) -> bool:
        return {
            Severity.CRITICAL: self.wants_critical,
            Severity.WARNING: self.wants_warning,
            Severity.INFO: self.wants_info,
        }[Severity(severity)]
