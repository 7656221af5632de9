"""Gateway recovery while a master is down: restart it, with backoff, or ask for a re-link.

The prober (the one elected process, with an HTTP client at hand) runs the
attempts; these functions decide when one is due and record each outcome.
A session whose phone is logged out (WAHA SCAN_QR_CODE, Evolution refused)
is never restarted in a loop: one "needs re-link" alert goes out instead,
and the master's QR page lets an operator re-link it from the portal.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from django.db import transaction
from django.db.models import F, Q
from django.utils import timezone

from masters.choices import EventKind, GatewayKind, HealthStatus, Severity
from masters.models import Event, Master, RuntimeSettings

RESTARTABLE = (GatewayKind.WAHA, GatewayKind.EVOLUTION)
FIRST_RETRY_S = 10
MAX_RETRY_S = 600


def backoff(attempts: int) -> timedelta:
    """10 s, 20 s, 40 s … up to 10 minutes between restarts."""
    return timedelta(seconds=min(MAX_RETRY_S, FIRST_RETRY_S * 2 ** max(0, attempts - 1)))


def recovery_due(now: datetime | None = None) -> list[int]:
    """Failed masters whose gateway can restart and whose next attempt is due."""
    now = now or timezone.now()
    limit = RuntimeSettings.current().max_recovery_attempts
    return list(
        Master.objects.filter(
            is_active=True,
            health_status=HealthStatus.FAILED,
            gateway_kind__in=RESTARTABLE,
            recovery_attempts__lt=limit,
            relink_alerted_at__isnull=True,
        )
        .filter(Q(next_recovery_at__isnull=True) | Q(next_recovery_at__lte=now))
        .values_list("pk", flat=True)
    )


def record_attempt(master_id: int, ok: bool, detail: str) -> None:
    """Count one restart attempt, schedule the next, and say how it went."""
    now = timezone.now()
    limit = RuntimeSettings.current().max_recovery_attempts
    with transaction.atomic():
        master = Master.objects.select_for_update().get(pk=master_id)
        master.recovery_attempts = F("recovery_attempts") + 1
        master.save(update_fields=["recovery_attempts"])
        master.refresh_from_db(fields=["recovery_attempts"])
        master.next_recovery_at = now + backoff(master.recovery_attempts)
        master.save(update_fields=["next_recovery_at"])
        attempt = master.recovery_attempts
        Event.objects.create(
            kind=EventKind.RECOVERY_ATTEMPTED,
            severity=Severity.INFO if ok else Severity.WARNING,
            master=master,
            message=f"{master.display_name}: restart {attempt} of {limit} "
            f"{'accepted' if ok else 'failed'}: {detail}",
            data={"attempt": attempt, "ok": ok, "detail": detail},
        )
        if attempt >= limit:
            Event.objects.create(
                kind=EventKind.RECOVERY_EXHAUSTED,
                severity=Severity.CRITICAL,
                master=master,
                message=f"{master.display_name}: {attempt} restarts did not bring it back; "
                "no more automatic restarts",
                data={"attempts": attempt},
            )


def record_needs_relink(master_id: int, detail: str, has_qr: bool) -> bool:
    """Raise the "needs re-link" alert once per outage; return whether it was raised now."""
    with transaction.atomic():
        raised = Master.objects.filter(pk=master_id, relink_alerted_at__isnull=True).update(
            relink_alerted_at=timezone.now()
        )
        if raised:
            where = (
                "scan the QR code on its page in the portal"
                if has_qr
                else ("re-link the phone in the gateway")
            )
            master = Master.objects.get(pk=master_id)
            Event.objects.create(
                kind=EventKind.NEEDS_RELINK,
                severity=Severity.CRITICAL,
                master=master,
                message=f"{master.display_name} is logged out and needs its phone re-linked: "
                f"{where} ({detail})",
                data={"detail": detail, "qr": has_qr},
            )
    return bool(raised)
