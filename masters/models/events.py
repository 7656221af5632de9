"""The audit trail and where alerts go."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import models
from django.db.models import Q

from masters.choices import (
    RecipientKind,
    Severity,
    WebhookFormat,
)
from masters.validators import validate_http_url

# Referenced by name: this module is imported before masters.models.master.
MASTER = "masters.Master"


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
        MASTER, null=True, blank=True, on_delete=models.SET_NULL, related_name="events"
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
        master: Any = None,
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
        if self.kind == RecipientKind.EMAIL:
            return self.email
        # A webhook's path and query are often its credential (Slack's are):
        # shown anywhere, only the scheme and host.
        parts = urlsplit(self.url)
        port = f":{parts.port}" if parts.port else ""
        return f"{self.get_format_display()} {parts.scheme}://{parts.hostname}{port}/…"

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
