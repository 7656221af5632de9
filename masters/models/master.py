"""Masters and the run-time failover settings."""

from __future__ import annotations

import re

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models, transaction
from django.utils import timezone

from masters.choices import (
    ROLE_WEIGHTS,
    EventKind,
    GatewayKind,
    HealthStatus,
    Role,
    Severity,
    Strategy,
)
from masters.gateways.base import GatewayConfig
from masters.health import HealthState, Observation, Thresholds, next_health, transition_severity
from masters.models.events import Event
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

    # Failover bookkeeping (masters.failover). A master failed over recently is
    # held down: it takes no work back by failover until this time.
    failover_hold_until = models.DateTimeField(null=True, blank=True, editable=False)
    # Set when the orchestrator is asked to act, so the prober asks once.
    failover_requested_at = models.DateTimeField(null=True, blank=True, editable=False)
    # Gateway recovery (masters.recovery): when the next restart may be tried,
    # and when the "needs re-link" alert went out (it goes out once per outage).
    next_recovery_at = models.DateTimeField(null=True, blank=True, editable=False)
    relink_alerted_at = models.DateTimeField(null=True, blank=True, editable=False)
    # Open circuit breaker: automatic failover stops until an operator resets it.
    breaker_tripped_at = models.DateTimeField(null=True, blank=True, editable=False)

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

    # What observe() changes: the prober saves them in one statement (prober.save_health).
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
        "recovery_attempts",
        "next_recovery_at",
        "relink_alerted_at",
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
        if new.status == HealthStatus.HEALTHY:
            # A new outage starts a new round of recovery attempts.
            self.recovery_attempts, self.next_recovery_at, self.relink_alerted_at = 0, None, None
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
