"""What the prober writes: the lease, health checks, roll-ups and load metrics."""

from __future__ import annotations

from datetime import timedelta

from django.db import connections, models, transaction
from django.utils import timezone

from masters.choices import (
    EventKind,
    HealthStatus,
    Severity,
)
from masters.models.events import Event

# Referenced by name: this module is imported before masters.models.master.
MASTER = "masters.Master"


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
        """Say, inside the caller's transaction and with a lock, whether ``holder`` may write.

        In SQL: the prober asks before every batch, up to ten times a second,
        and compiling the query took twice as long as running it.
        """
        connection = connections[cls.objects.db]
        lock = " FOR UPDATE" if connection.features.has_select_for_update else ""
        table = connection.ops.quote_name(cls._meta.db_table)
        now = connection.ops.adapt_datetimefield_value(timezone.now())
        with connection.cursor() as cursor:
            cursor.execute(
                f"SELECT 1 FROM {table} WHERE name = %s AND holder = %s AND expires_at > %s{lock}",
                ["prober", holder, now],
            )
            return cursor.fetchone() is not None

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

    master = models.ForeignKey(MASTER, on_delete=models.CASCADE, related_name="health_checks")
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

    master = models.ForeignKey(MASTER, on_delete=models.CASCADE, related_name="health_rollups")
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

    master = models.ForeignKey(MASTER, on_delete=models.CASCADE, related_name="load_metrics")
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
