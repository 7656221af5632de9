"""The domain's tables: masters and everything that happens to them.

State that changes over time is a row (HealthCheck, FailoverEvent, Event),
and every state change writes an ``Event`` in the same transaction.
"""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models, transaction
from django.db.models import Q
from django.utils import timezone

from masters.choices import (
    ROLE_WEIGHTS,
    EventKind,
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
from masters.health import HealthState, Observation, Thresholds, next_health, transition_severity
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

    # Inbound gateway webhooks (/hooks/<kind>/<master>) must carry this, as a
    # token or an HMAC key. Write-only like gateway_secret.
    webhook_secret = models.CharField(max_length=200, blank=True)

    # Failure metrics, kept by the health state machine (masters.health).
    consecutive_failures = models.PositiveIntegerField(default=0, editable=False)
    consecutive_successes = models.PositiveIntegerField(default=0, editable=False)
    last_check_at = models.DateTimeField(null=True, blank=True, editable=False)
    last_success_at = models.DateTimeField(null=True, blank=True, editable=False)
    last_failure_at = models.DateTimeField(null=True, blank=True, editable=False)
    last_response_ms = models.FloatField(null=True, blank=True, editable=False)
    last_error = models.TextField(blank=True, editable=False)
    recovery_attempts = models.PositiveIntegerField(default=0, editable=False)
    # Passive signal: sends failing in a row; at the limit the master is
    # ejected (degraded) until send_ejected_until, whatever its probes say.
    send_error_streak = models.PositiveIntegerField(default=0, editable=False)
    send_ejected_until = models.DateTimeField(null=True, blank=True, editable=False)

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

    # --- health state machine (rules in masters.health) -------------------------

    # What observe() changes: the prober saves these with one bulk_update.
    HEALTH_FIELDS = (
        "health_status",
        "health_changed_at",
        "consecutive_failures",
        "consecutive_successes",
        "last_check_at",
        "last_success_at",
        "last_failure_at",
        "last_response_ms",
        "last_error",
    )

    def observe(self, observation: Observation, thresholds: Thresholds) -> Event | None:
        """Apply one health signal in memory; return the unsaved Event if the status moved.

        The caller saves HEALTH_FIELDS and the event in one transaction, with
        this row locked (the prober does it in bulk, ``record_observation`` one by one).
        """
        self.last_check_at = observation.at
        self.last_response_ms = observation.latency_ms
        if observation.status == HealthStatus.HEALTHY and self.is_send_ejected(observation.at):
            # The gateway says up but its sends failed: hold the master where it
            # is (out of rotation) until the ejection ends, neither rising nor falling.
            self.last_error = f"gateway says up but sends keep failing ({observation.detail})"
            return None
        old = HealthState(self.health_status, self.consecutive_failures, self.consecutive_successes)
        new = next_health(old, observation.status, thresholds, lambda: self.is_flapping(thresholds))
        self.consecutive_failures, self.consecutive_successes = new.failures, new.successes
        if observation.status == HealthStatus.HEALTHY:
            self.last_success_at = observation.at
        else:
            self.last_failure_at = observation.at
            self.last_error = observation.detail
        if new.status == old.status:
            return None
        self.health_status, self.health_changed_at = new.status, observation.at
        return Event(
            kind=EventKind.HEALTH_CHANGED,
            severity=transition_severity(new.status),
            master=self,
            message=f"{self.display_name}: {old.status} → {new.status} ({observation.detail})",
            data={
                "from": old.status,
                "to": new.status,
                "source": observation.source,
                "detail": observation.detail,
                "failures": new.failures,
            },
        )

    def record_observation(self, observation: Observation) -> Event | None:
        """Apply one signal to this master's row under a lock, with its Event."""
        with transaction.atomic():
            master = Master.objects.select_for_update().get(pk=self.pk)
            event = master.observe(observation, Thresholds.from_settings())
            master.save(update_fields=[*self.HEALTH_FIELDS, "updated_at"])
            if event is not None:
                event.save()
        self.refresh_from_db()
        return event

    def is_flapping(self, thresholds: Thresholds) -> bool:
        """Say whether health moved ``flap_limit`` times within the flap window."""
        since = timezone.now() - timezone.timedelta(seconds=thresholds.flap_window_s)
        recent = Event.objects.filter(
            master=self, kind=EventKind.HEALTH_CHANGED, created_at__gte=since
        )
        return recent.count() >= thresholds.flap_limit

    def is_send_ejected(self, at) -> bool:
        return self.send_ejected_until is not None and at < self.send_ejected_until

    def record_send_result(self, ok: bool, error: str = "") -> Event | None:
        """Count a send's outcome (the passive signal); eject after too many errors in a row.

        An ejected master is degraded, and probes cannot bring it back until
        the ejection ends: a gateway that says up while sends fail is not healthy.
        """
        if ok:
            Master.objects.filter(pk=self.pk, send_error_streak__gt=0).update(send_error_streak=0)
            return None
        thresholds = Thresholds.from_settings()
        with transaction.atomic():
            master = Master.objects.select_for_update().get(pk=self.pk)
            master.send_error_streak += 1
            fields = ["send_error_streak"]
            event = None
            if master.send_error_streak >= thresholds.send_error_limit:
                now = timezone.now()
                master.send_ejected_until = now + timezone.timedelta(
                    seconds=thresholds.send_ejection_s
                )
                master.send_error_streak = 0
                fields.append("send_ejected_until")
                Event.objects.create(
                    kind=EventKind.SEND_EJECTED,
                    severity=Severity.WARNING,
                    master=master,
                    message=f"{master.display_name}: {thresholds.send_error_limit} sends "
                    f"failed in a row, ejected for {thresholds.send_ejection_s}s ({error})",
                    data={"error": error},
                )
                event = master.observe(
                    Observation(
                        HealthStatus.DEGRADED, now, f"sends failing: {error}", None, "send"
                    ),
                    thresholds,
                )
                fields.extend(self.HEALTH_FIELDS)
            master.save(update_fields=fields)
            if event is not None:
                event.save()
        return event

    def start_maintenance(self, actor=None, reason: str = "") -> None:
        """Drain this master: no new messages until maintenance ends."""
        self._set_manual_status(
            HealthStatus.MAINTENANCE, EventKind.MAINTENANCE_STARTED, actor, reason
        )

    def end_maintenance(self, actor=None, reason: str = "") -> None:
        """Return the master to the probes: unknown until its first probe says healthy."""
        self._set_manual_status(HealthStatus.UNKNOWN, EventKind.MAINTENANCE_ENDED, actor, reason)

    def _set_manual_status(self, status: str, kind: str, actor, reason: str) -> None:
        with transaction.atomic():
            master = Master.objects.select_for_update().get(pk=self.pk)
            if (master.health_status == HealthStatus.MAINTENANCE) == (
                status == HealthStatus.MAINTENANCE
            ):
                return  # already there: no event for a no-op
            old = master.health_status
            master.health_status, master.health_changed_at = status, timezone.now()
            master.consecutive_failures = master.consecutive_successes = 0
            master.save(update_fields=[*self.HEALTH_FIELDS, "updated_at"])
            Event.objects.create(
                kind=kind,
                master=master,
                actor=actor,
                message=f"{master.display_name}: {old} → {status}"
                + (f" ({reason})" if reason else ""),
                data={"from": old, "to": status, "reason": reason},
            )
        self.refresh_from_db()

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


class ProberLease(models.Model):
    """Which prober acts: any number run, the holder of an unexpired lease probes.

    The lease is renewed every few seconds; a prober that dies or stalls lets
    it expire and another takes it. Every write of probe results checks the
    lease inside its transaction, so a prober that wakes from a stall cannot
    write stale results (a fencing check).
    """

    name = models.CharField(max_length=50, unique=True, default="prober")
    holder = models.CharField(max_length=100, blank=True)
    acquired_at = models.DateTimeField(null=True, blank=True)
    renewed_at = models.DateTimeField(null=True, blank=True)
    expires_at = models.DateTimeField(null=True, blank=True)
    stall_reported = models.BooleanField(default=False)
    # Set while every probed master fails at once: automatic failover holds.
    all_down_since = models.DateTimeField(null=True, blank=True)

    def __str__(self) -> str:
        return f"{self.name} held by {self.holder or 'nobody'}"

    @classmethod
    def claim(cls, holder: str, ttl: timedelta) -> bool:
        """Take or renew the lease for ``holder``; False while another holds it unexpired.

        Taking over a lease that expired without being released means the
        previous prober died or stalled: that is recorded as a takeover.
        """
        cls.objects.get_or_create(name="prober")
        now = timezone.now()
        with transaction.atomic():
            lease = cls.objects.select_for_update().get(name="prober")
            live = lease.expires_at is not None and lease.expires_at > now
            if lease.holder != holder and lease.holder and live:
                return False
            if lease.holder != holder:
                lease.acquired_at = now
                lease.record_acquisition(holder, stalled=bool(lease.holder) and not live)
            lease.holder, lease.renewed_at, lease.expires_at = holder, now, now + ttl
            lease.stall_reported = False
            lease.save()
        return True

    def record_acquisition(self, holder: str, *, stalled: bool) -> None:
        if stalled:
            Event.objects.create(
                kind=EventKind.PROBER_TAKEOVER,
                severity=Severity.WARNING,
                message=f"Prober {self.holder} stopped renewing its lease at "
                f"{self.renewed_at:%H:%M:%S}; {holder} takes over",
                data={"previous": self.holder, "holder": holder},
            )
        else:
            Event.objects.create(
                kind=EventKind.PROBER_ACQUIRED,
                message=f"Prober {holder} is probing",
                data={"holder": holder},
            )

    @classmethod
    def release(cls, holder: str) -> None:
        """Give the lease up at a clean stop, so a standby prober takes over at once."""
        with transaction.atomic():
            released = cls.objects.filter(name="prober", holder=holder).update(
                holder="", expires_at=timezone.now()
            )
            if released:
                Event.objects.create(
                    kind=EventKind.PROBER_STOPPED,
                    message=f"Prober {holder} stopped",
                    data={"holder": holder},
                )

    @classmethod
    def holds(cls, holder: str) -> bool:
        """Say, inside the caller's transaction and with a lock, whether ``holder`` may write."""
        return (
            cls.objects.select_for_update()
            .filter(name="prober", holder=holder, expires_at__gt=timezone.now())
            .exists()
        )

    @classmethod
    def report_stall(cls, grace: timedelta) -> Event | None:
        """Raise "health monitoring stopped" once when no prober held the lease for ``grace``."""
        now = timezone.now()
        with transaction.atomic():
            lease = cls.objects.select_for_update().filter(name="prober").first()
            if lease is None or lease.expires_at is None or lease.stall_reported:
                return None
            if lease.expires_at + grace > now:
                return None
            lease.stall_reported = True
            lease.save(update_fields=["stall_reported"])
            return Event.objects.create(
                kind=EventKind.PROBER_STALLED,
                severity=Severity.CRITICAL,
                message="Health monitoring stopped: no prober has renewed its lease since "
                f"{lease.renewed_at:%Y-%m-%d %H:%M:%S} UTC",
                data={"last_holder": lease.holder, "renewed_at": lease.renewed_at.isoformat()},
            )

    @classmethod
    def failover_on_hold(cls) -> bool:
        """Say whether every master failed at once (then automatic failover waits)."""
        return cls.objects.filter(name="prober", all_down_since__isnull=False).exists()


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


class HealthRollup(models.Model):
    """Probe results of one master over one hour, kept after the raw checks are pruned."""

    master = models.ForeignKey(Master, on_delete=models.CASCADE, related_name="health_rollups")
    bucket_start = models.DateTimeField()
    bucket_seconds = models.PositiveIntegerField(default=3600)
    checks = models.PositiveIntegerField(default=0)
    healthy = models.PositiveIntegerField(default=0)
    degraded = models.PositiveIntegerField(default=0)
    failed = models.PositiveIntegerField(default=0)
    response_ms_sum = models.FloatField(default=0.0)
    response_ms_count = models.PositiveIntegerField(default=0)
    response_ms_max = models.FloatField(null=True, blank=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["master", "bucket_start", "bucket_seconds"], name="rollup_unique_bucket"
            )
        ]
        indexes = [models.Index(fields=["master", "bucket_start"], name="rollup_master_time_idx")]

    def __str__(self) -> str:
        return f"{self.master_id} {self.bucket_start:%Y-%m-%d %H:%M} ({self.checks} checks)"


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
