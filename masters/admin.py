"""The admin: where an admin edits masters, failover settings and alert recipients."""

from __future__ import annotations

from django.contrib import admin
from django.http import HttpRequest

from masters.forms import AlertRecipientAdminForm, MasterAdminForm
from masters.models import (
    AlertRecipient,
    DispatcherNode,
    Event,
    FailoverEvent,
    HealthCheck,
    Master,
    Message,
    RuntimeSettings,
)


@admin.register(Master)
class MasterAdmin(admin.ModelAdmin):
    form = MasterAdminForm
    list_display = (
        "display_name",
        "phone_number",
        "role",
        "priority",
        "failover_priority",
        "weight",
        "region",
        "is_active",
        "health_status",
        "gateway_kind",
    )
    list_editable = ("priority", "failover_priority", "weight", "is_active")
    list_filter = ("health_status", "role", "is_active", "gateway_kind", "region")
    search_fields = ("display_name", "phone_number", "external_id", "region")
    readonly_fields = ("health_status", "health_changed_at", "created_at", "updated_at")
    fieldsets = (
        (None, {"fields": ("external_id", "display_name", "phone_number", "region")}),
        (
            "Routing",
            {"fields": ("role", "priority", "weight", "failover_priority", "is_active")},
        ),
        (
            "Gateway",
            {
                "fields": (
                    "gateway_kind",
                    "gateway_url",
                    "gateway_session",
                    "gateway_api_version",
                    "gateway_secret",
                    "clear_gateway_secret",
                )
            },
        ),
        ("Send limits", {"fields": ("max_messages_per_second", "max_recipients_per_day")}),
        ("Health", {"fields": ("health_status", "health_changed_at", "created_at", "updated_at")}),
    )


@admin.register(RuntimeSettings)
class RuntimeSettingsAdmin(admin.ModelAdmin):
    list_display = (
        "__str__",
        "failover_enabled",
        "health_check_interval_ms",
        "failover_timeout_ms",
        "max_recovery_attempts",
        "load_balancing_strategy",
    )

    def has_add_permission(self, request: HttpRequest) -> bool:
        # One row only; RuntimeSettings.current() creates it from the environment.
        return not RuntimeSettings.objects.exists()

    def has_delete_permission(self, request: HttpRequest, obj=None) -> bool:
        return False


@admin.register(AlertRecipient)
class AlertRecipientAdmin(admin.ModelAdmin):
    form = AlertRecipientAdminForm
    list_display = (
        "__str__",
        "kind",
        "format",
        "wants_critical",
        "wants_warning",
        "wants_info",
        "is_active",
    )
    list_filter = ("kind", "format", "is_active")
    search_fields = ("email", "url")


class ReadOnlyAdmin(admin.ModelAdmin):
    """Records of what happened: visible in the admin, never edited there."""

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj=None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj=None) -> bool:
        return False


@admin.register(Event)
class EventAdmin(ReadOnlyAdmin):
    list_display = ("created_at", "kind", "severity", "master", "message")
    list_filter = ("severity", "kind")
    search_fields = ("message",)


@admin.register(FailoverEvent)
class FailoverEventAdmin(ReadOnlyAdmin):
    list_display = (
        "started_at",
        "failed_master",
        "backup_master",
        "status",
        "automatic",
        "moved_messages",
        "moved_affinities",
        "duration_ms",
    )
    list_filter = ("status", "automatic")


@admin.register(HealthCheck)
class HealthCheckAdmin(ReadOnlyAdmin):
    list_display = ("checked_at", "master", "status", "response_time_ms", "error")
    list_filter = ("status", "master")


@admin.register(Message)
class MessageAdmin(ReadOnlyAdmin):
    list_display = ("id", "to", "status", "master", "attempts", "created_at", "last_error")
    list_filter = ("status", "master")
    search_fields = ("to", "idempotency_key")


@admin.register(DispatcherNode)
class DispatcherNodeAdmin(ReadOnlyAdmin):
    """The dispatchers that checked in: each sends at most its share of a master's rate."""

    list_display = ("name", "started_at", "seen_at")
    ordering = ("-seen_at",)
