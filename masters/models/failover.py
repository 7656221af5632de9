"""Failover events: what moved where, why, and how it ended."""

from __future__ import annotations

from django.conf import settings
from django.db import models

from masters.choices import (
    FailoverStatus,
)

# Referenced by name: this module is imported before masters.models.master.
MASTER = "masters.Master"


class FailoverEvent(models.Model):
    """One failover (or its rollback): what moved where, why, and how it ended."""

    failed_master = models.ForeignKey(
        MASTER, on_delete=models.PROTECT, related_name="failovers_from"
    )
    backup_master = models.ForeignKey(
        MASTER,
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="failovers_to",
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
