"""Alerts: what is wrong now, who was told, and the thresholds an admin sets.

An alert is one condition (its ``dedup_key``, e.g. ``master.down:3``) from
the moment a rule sees it until the rule stops seeing it: firing, perhaps
acknowledged by an operator, then resolved. At most one open (not resolved)
alert per key, enforced by the database, so two evaluators can never raise
the same alert twice. Every notice sent about it (trigger, repeat,
acknowledge, resolve) is an ``AlertDelivery`` row per recipient and attempt.
"""

from __future__ import annotations

from django.conf import settings
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models
from django.db.models import Q

from masters.choices import Severity


class AlertState(models.TextChoices):
    FIRING = "firing", "Firing"
    ACKNOWLEDGED = "acknowledged", "Acknowledged"
    RESOLVED = "resolved", "Resolved"


OPEN_STATES = (AlertState.FIRING, AlertState.ACKNOWLEDGED)


class AlertQuerySet(models.QuerySet):
    def open(self) -> AlertQuerySet:
        return self.filter(state__in=OPEN_STATES)


class Alert(models.Model):
    """One alerting condition, from first seen to resolved."""

    dedup_key = models.CharField(max_length=200)
    rule = models.CharField(max_length=50)
    severity = models.CharField(max_length=10, choices=Severity)
    state = models.CharField(max_length=12, choices=AlertState, default=AlertState.FIRING)
    master = models.ForeignKey(
        "masters.Master", null=True, blank=True, on_delete=models.SET_NULL, related_name="alerts"
    )
    title = models.CharField(max_length=200)
    detail = models.TextField(blank=True)
    data = models.JSONField(default=dict, blank=True)
    fired_at = models.DateTimeField()
    # The last evaluation that still saw the condition.
    last_seen_at = models.DateTimeField()
    # When recipients were last told it is firing (trigger or repeat).
    last_notified_at = models.DateTimeField(null=True, blank=True)
    notify_count = models.PositiveIntegerField(default=0)
    acknowledged_at = models.DateTimeField(null=True, blank=True)
    acknowledged_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    resolved_at = models.DateTimeField(null=True, blank=True)

    objects = AlertQuerySet.as_manager()

    class Meta:
        ordering = ["-id"]
        constraints = [
            models.UniqueConstraint(
                fields=["dedup_key"],
                condition=Q(state__in=["firing", "acknowledged"]),
                name="alert_one_open_per_key",
            )
        ]
        indexes = [models.Index(fields=["state", "-id"], name="alert_state_idx")]
        # The operator role: acting on masters and alerts from the dashboard
        # (manual failover, rollback, maintenance, breaker reset, acknowledge).
        permissions = [
            (
                "operate",
                "Can act on masters and alerts: failover, rollback, maintenance, "
                "circuit breaker reset, acknowledge",
            ),
        ]

    def __str__(self) -> str:
        return f"[{self.severity}] {self.title} ({self.state})"

    @property
    def is_open(self) -> bool:
        return self.state in OPEN_STATES


class Notice(models.TextChoices):
    """Why a recipient is told about an alert."""

    TRIGGER = "trigger", "Firing"
    REPEAT = "repeat", "Still firing"
    ACKNOWLEDGE = "acknowledge", "Acknowledged"
    RESOLVE = "resolve", "Resolved"


class DeliveryStatus(models.TextChoices):
    PENDING = "pending", "Pending"
    SENT = "sent", "Sent"
    RETRYING = "retrying", "Retrying"
    FAILED = "failed", "Failed"


class AlertDelivery(models.Model):
    """One notice to one recipient, with every attempt's result."""

    alert = models.ForeignKey(Alert, on_delete=models.CASCADE, related_name="deliveries")
    recipient = models.ForeignKey(
        "masters.AlertRecipient", null=True, on_delete=models.SET_NULL, related_name="deliveries"
    )
    notice = models.CharField(max_length=12, choices=Notice)
    # What the recipient was when it was sent (it may be edited or deleted
    # later): "email to a@b.c", "webhook (slack) to hooks.slack.com". Never a secret.
    target = models.CharField(max_length=300)
    status = models.CharField(max_length=10, choices=DeliveryStatus, default=DeliveryStatus.PENDING)
    attempts = models.PositiveIntegerField(default=0)
    # The last attempt's outcome: an HTTP status, "250 OK", or the error.
    last_result = models.TextField(blank=True)
    # One entry per attempt: {"at": ISO time, "sent": bool, "result": text}.
    history = models.JSONField(default=list, blank=True)
    next_attempt_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-id"]
        verbose_name_plural = "alert deliveries"
        # The evaluator's look for retries due, every few seconds: open ones only.
        indexes = [
            models.Index(
                fields=["next_attempt_at"],
                name="delivery_due_idx",
                condition=Q(status__in=["pending", "retrying"]),
            )
        ]

    def __str__(self) -> str:
        return f"{self.notice} of alert {self.alert_id} to {self.target}: {self.status}"


class AlertSettings(models.Model):
    """The plan's alert thresholds, one row an admin edits."""

    queue_warning = models.PositiveIntegerField(
        default=1000, help_text="Warn when more messages than this wait in the queue."
    )
    load_share_warning_pct = models.PositiveIntegerField(
        default=80,
        validators=[MinValueValidator(1), MaxValueValidator(100)],
        help_text="Warn when one master carries more than this share of the load (%).",
    )
    failures_warning_count = models.PositiveIntegerField(
        default=3,
        validators=[MinValueValidator(1)],
        help_text="Warn when one master fails this many times ...",
    )
    failures_window_min = models.PositiveIntegerField(
        default=30, validators=[MinValueValidator(1)], help_text="... within this many minutes."
    )
    recovery_warning_min = models.PositiveIntegerField(
        default=5,
        validators=[MinValueValidator(1)],
        help_text="Warn when a master has been failed for longer than this (minutes).",
    )
    repeat_interval_min = models.PositiveIntegerField(
        default=30,
        validators=[MinValueValidator(1)],
        help_text="Tell recipients again this often while an alert fires unacknowledged.",
    )
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        verbose_name = "alert settings"
        verbose_name_plural = "alert settings"

    def __str__(self) -> str:
        return "Alert thresholds"

    @classmethod
    def current(cls) -> AlertSettings:
        row, _ = cls.objects.get_or_create(pk=1)
        return row


class AlertCursor(models.Model):
    """How far the alert evaluator has read the event log (one row, written only by it).

    ``position``: every event up to this id has been read. ``seen_ids``: events
    above it already read. On PostgreSQL ids are taken at insert but become
    visible at commit, so a later id can show up before an earlier one; the
    position only moves past ids old enough that no transaction still holds
    them, and ``seen_ids`` keeps the newer ones from being read twice.
    """

    name = models.CharField(max_length=50, unique=True, default="events")
    position = models.BigIntegerField(default=0)
    seen_ids = models.JSONField(default=list, blank=True)
    updated_at = models.DateTimeField(auto_now=True)

    def __str__(self) -> str:
        return f"alert cursor {self.name} at event {self.position}"
