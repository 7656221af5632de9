"""The admin for alerts: alerts and deliveries to read, thresholds to edit.

Alerts and deliveries are written only by the evaluator and the delivery
tasks, so they are read-only here (operators acknowledge from the
dashboard). A delivery shows its ``target``, never its recipient: a
recipient's URL or key may be the secret.
"""

from __future__ import annotations

from django.contrib import admin
from django.http import HttpRequest

from monitoring.models import Alert, AlertDelivery, AlertSettings


class ReadOnlyAdmin(admin.ModelAdmin):
    """Viewable by anyone with the view permission; nobody adds, edits or deletes here."""

    def has_add_permission(self, request: HttpRequest, obj=None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj=None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj=None) -> bool:
        return False


class DeliveryInline(admin.TabularInline):
    model = AlertDelivery
    fields = ("notice", "target", "status", "attempts", "last_result", "created_at", "finished_at")
    readonly_fields = fields
    extra = 0
    can_delete = False
    show_change_link = True

    def has_add_permission(self, request: HttpRequest, obj=None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj=None) -> bool:
        return False


@admin.register(Alert)
class AlertAdmin(ReadOnlyAdmin):
    list_display = (
        "title",
        "severity",
        "state",
        "rule",
        "master",
        "fired_at",
        "last_seen_at",
        "notify_count",
        "acknowledged_by",
        "resolved_at",
    )
    list_filter = ("state", "severity", "rule", "master")
    list_select_related = ("master", "acknowledged_by")
    search_fields = ("title", "detail", "dedup_key")
    date_hierarchy = "fired_at"
    fields = (
        "title",
        "detail",
        "severity",
        "state",
        "rule",
        "dedup_key",
        "master",
        "data",
        "fired_at",
        "last_seen_at",
        "last_notified_at",
        "notify_count",
        "acknowledged_at",
        "acknowledged_by",
        "resolved_at",
    )
    inlines = [DeliveryInline]


@admin.register(AlertDelivery)
class AlertDeliveryAdmin(ReadOnlyAdmin):
    list_display = (
        "alert",
        "notice",
        "target",
        "status",
        "attempts",
        "last_result",
        "next_attempt_at",
        "created_at",
        "finished_at",
    )
    list_filter = ("status", "notice")
    list_select_related = ("alert",)
    search_fields = ("target", "alert__title", "last_result")
    # No "recipient" link: the target names it without its secret.
    fields = (*list_display, "history")


@admin.register(AlertSettings)
class AlertSettingsAdmin(admin.ModelAdmin):
    list_display = (
        "__str__",
        "queue_warning",
        "load_share_warning_pct",
        "failures_warning_count",
        "failures_window_min",
        "recovery_warning_min",
        "repeat_interval_min",
        "updated_at",
    )
    fieldsets = (
        ("Warnings", {"fields": ("queue_warning", "load_share_warning_pct")}),
        ("Failures", {"fields": ("failures_warning_count", "failures_window_min")}),
        ("Recovery", {"fields": ("recovery_warning_min",)}),
        ("Notices", {"fields": ("repeat_interval_min",)}),
    )

    def has_add_permission(self, request: HttpRequest) -> bool:
        # One row only; AlertSettings.current() creates it with the plan's defaults.
        return super().has_add_permission(request) and not AlertSettings.objects.exists()

    def has_delete_permission(self, request: HttpRequest, obj=None) -> bool:
        return False
