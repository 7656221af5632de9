"""Failover: a failed master's pending work moves to a backup in one transaction.

``execute_failover`` is the whole move: it locks the failed master's row
for the duration (a second failover of the same master waits for the first,
up to ``LOCK_WAIT``, and is then refused; a crashed worker's lock goes with
its connection), picks the backup (masters.backup), moves the pending
messages (bumping their epoch, so a dispatcher holding a stale claim cannot
record a send; those that may have gone out already stay, see ``movable``)
and the conversation affinities, passes the routing role on,
verifies the move (counts and a checksum of the moved ids) and records a
FailoverEvent, all or nothing. ``rollback_failover`` undoes one, the same way.
"""

from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import dataclass, field
from datetime import datetime
from functools import partial

from django.conf import settings
from django.db import DatabaseError, OperationalError, connection, transaction
from django.db.models import Count, Exists, F, OuterRef, Q
from django.utils import timezone
from django_q.tasks import async_task

from masters import outbox
from masters.backup import BackupCandidate, choose_backup, gateway_host
from masters.choices import EventKind, FailoverStatus, HealthStatus, MessageStatus, Severity
from masters.models import ConversationAffinity, Event, FailoverEvent, Master, Message

logger = logging.getLogger(__name__)

PENDING = (MessageStatus.QUEUED, MessageStatus.RETRYING)
# How long a failover waits for the failed master's row (see _lock).
LOCK_WAIT = "5s"


class FailoverRefused(Exception):
    """The failover cannot run now; the message says why."""


class FailoverBusy(FailoverRefused):
    """The master's row stayed locked: another failover of it is probably running."""


class TransferMismatch(Exception):
    """What moved is not what was selected: the transaction is rolled back."""


@dataclass
class Plan:
    """What a failover would move where (the dry-run preview)."""

    failed_id: int
    backup_id: int | None
    messages: list[int] = field(default_factory=list)
    affinities: list[int] = field(default_factory=list)
    reasons: dict[str, str] = field(default_factory=dict)

    @property
    def checksum(self) -> str:
        return checksum(self.messages)


def checksum(ids: list[int]) -> str:
    """SHA-256 over the sorted ids: the same set gives the same sum on both sides."""
    return hashlib.sha256(",".join(map(str, sorted(ids))).encode()).hexdigest()


def movable(now: datetime) -> Q:
    """What a failover or a rollback may move off a master: its pending work.

    Pending messages, and claims whose lease ran out unsent, except those
    that may have gone out through the master already (in doubt: a send that
    timed out, a dispatcher that died mid-send, within ``doubt_hold_s``).
    Another master would deliver those a second time, since only the first
    master's gateway knows their idempotency key; they stay until the doubt
    ends (outbox.release_doubts).
    """
    return (Q(status__in=PENDING) & ~Message.doubted(now)) | Q(
        status=MessageStatus.SENDING, lease_expires_at__lt=now - outbox.doubt_hold()
    )


def movable_messages(master_id: int, now: datetime):
    """A master's movable messages (see movable)."""
    return Message.objects.filter(master_id=master_id).filter(movable(now))


def candidate_for(master: Master, sending: dict[int, float]) -> BackupCandidate:
    return BackupCandidate(
        id=master.pk,
        name=master.display_name,
        failover_priority=master.failover_priority,
        region=master.region,
        is_active=master.is_active,
        health_status=master.health_status,
        gateway_host=gateway_host(master.gateway_config().url),
        rate_per_s=float(master.max_messages_per_second),
        current_rate_per_s=sending.get(master.pk, 0.0),
        held_down_until=master.failover_hold_until,
    )


def plan_failover(
    failed: Master, backup_id: int | None = None, now=None, *, list_work: bool = True
) -> Plan:
    """Choose the backup and list what would move (reads only).

    The failover itself passes ``list_work=False``: it reads the work under
    lock while moving it, and 10,000 ids read twice cost more than the move.
    """
    now = now or timezone.now()
    masters = [
        m for m in Master.objects.exclude(pk=failed.pk) if backup_id is None or m.pk == backup_id
    ]
    # Per candidate, through the (master, sent_at) index: a scan of every
    # message sent in the last 10 s would grow with the table.
    recent = (
        Message.objects.filter(
            master__in=[failed.pk, *(m.pk for m in masters)],
            sent_at__gte=now - timezone.timedelta(seconds=10),
        )
        .values("master")
        .annotate(sent=Count("pk"))
    )
    sending = {row["master"]: row["sent"] / 10 for row in recent}
    others = [candidate_for(m, sending) for m in masters]
    choice = choose_backup(candidate_for(failed, sending), others, now=now)
    plan = Plan(failed.pk, choice.backup_id)
    plan.reasons = {str(key): reason for key, reason in choice.reasons.items()}
    if list_work:
        plan.messages = list(movable_messages(failed.pk, now).values_list("pk", flat=True))
        plan.affinities = list(
            ConversationAffinity.objects.filter(master=failed).values_list("pk", flat=True)
        )
    return plan


def execute_failover(
    failed_id: int,
    *,
    reason: str,
    backup_id: int | None = None,
    actor=None,
) -> FailoverEvent:
    """Move a master's pending work to a backup, atomically; return the recorded event.

    Raises FailoverRefused when another failover of the master runs. A
    transfer whose verification fails is rolled back and recorded as such.
    """
    started = time.monotonic()
    started_at = timezone.now()
    chosen: list[int | None] = [backup_id]
    try:
        with transaction.atomic():
            _commit_without_waiting_for_disk()
            failed = _lock(failed_id)
            if actor is None and _failed_over_since_it_failed(failed):
                raise FailoverRefused(f"{failed.display_name} was already failed over")
            plan = plan_failover(failed, backup_id, started_at, list_work=False)
            chosen[0] = plan.backup_id
            if plan.backup_id is None:
                return _no_backup(failed, plan, reason, actor, started_at)
            backup = Master.objects.select_for_update().get(pk=plan.backup_id)
            event = FailoverEvent.objects.create(
                failed_master=failed,
                backup_master=backup,
                reason=reason,
                automatic=actor is None,
                initiated_by=actor,
                started_at=started_at,
                detail={
                    "reasons": plan.reasons,
                    "roles": {"failed": failed.role, "backup": backup.role},
                },
            )
            _transfer(plan, event, started_at)
            _pass_role(failed, backup)
            failed.failover_hold_until = started_at + timezone.timedelta(
                seconds=settings.FAILOVER["hold_down_s"]
            )
            failed.save(update_fields=["failover_hold_until", "role"])
            _finish(event, started)
            _record_events(event, failed, backup, actor)
            return event
    except TransferMismatch as mismatch:
        return _record_rolled_back(failed_id, chosen[0], reason, actor, started_at, mismatch)


def _commit_without_waiting_for_disk() -> None:
    """Let this transaction's commit return before its WAL reaches the disk (PostgreSQL).

    Waiting for the flush of a 10,000-row move was a third of a failover. It
    is safe: a crash in the next fraction of a second loses the failover
    whole, never half of it (the WAL replays in order), so the master is
    simply failed over again; and anything that acted on the move (a
    dispatcher recording a send through the backup) commits normally, which
    flushes the WAL up to and including this failover first.
    """
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("SET LOCAL synchronous_commit TO OFF")


def _lock(master_id: int) -> Master:
    """Lock the failed master's row for the whole failover.

    Waits up to ``LOCK_WAIT`` on PostgreSQL: the prober and the dispatchers
    write health fields to this row many times a second, each for a moment,
    and refusing at the first such moment (NOWAIT) dropped the failover of a
    master whose row was merely busy. A second failover of the same master
    waits for the first and is then refused by _failed_over_since_it_failed.
    """
    postgresql = connection.vendor == "postgresql"
    try:
        if postgresql:
            with connection.cursor() as cursor:
                cursor.execute(f"SET LOCAL lock_timeout = '{LOCK_WAIT}'")
        master = Master.objects.select_for_update().get(pk=master_id)
    except OperationalError as error:
        raise FailoverBusy(
            f"master {master_id} stayed locked for {LOCK_WAIT}: a failover of it is running"
        ) from error
    if postgresql:
        with connection.cursor() as cursor:
            cursor.execute("SET LOCAL lock_timeout TO DEFAULT")
    return master


def _failed_over_since_it_failed(master: Master) -> bool:
    """Say whether a failover of this master completed after its last health change."""
    return FailoverEvent.objects.filter(
        failed_master=master,
        status=FailoverStatus.COMPLETED,
        started_at__gte=master.health_changed_at or timezone.now(),
    ).exists()


def _transfer(plan: Plan, event: FailoverEvent, now: datetime) -> None:
    """Move messages and affinities; verify both before the transaction commits.

    The work is read and locked, then moved with the same filter (no long id
    lists in the UPDATE), which returns the ids it moved: count and checksum
    must match what was read. A message a dispatcher recorded as sent meanwhile is no
    longer movable, so it stays. With no backup the messages go back to the
    queue unassigned: the dispatcher sends them through whichever master
    recovers first.
    """
    locked = movable_messages(plan.failed_id, now).select_for_update().order_by("pk")
    plan.messages = _ids(*locked.values_list("pk").query.sql_with_params())
    expected = plan.checksum  # once: summing 10,000 ids takes milliseconds
    landed = _ids(*_move_sql(plan, event, now))
    moved = checksum(landed)
    if len(landed) != len(plan.messages) or moved != expected:
        raise TransferMismatch(
            f"selected {len(plan.messages)} messages, moved {len(landed)}, "
            f"checksum {moved[:12]} != {expected[:12]}"
        )
    affinities = ConversationAffinity.objects.filter(master_id=plan.failed_id)
    selected = affinities.count()
    if plan.backup_id is None:
        moved_affinities, _ = affinities.delete()  # the contacts are routed afresh
    else:
        moved_affinities = affinities.update(master_id=plan.backup_id, failover=event)
    if moved_affinities != selected:
        raise TransferMismatch(f"selected {selected} affinities, moved {moved_affinities}")
    event.moved_messages, event.moved_affinities = len(landed), moved_affinities
    event.checksum = expected
    # What stays behind on purpose: messages that may have gone out already.
    held = Message.objects.filter(
        master_id=plan.failed_id, status__in=[*PENDING, MessageStatus.SENDING]
    )
    event.detail["held_in_doubt"] = held.filter(
        Message.doubted(now) | Q(status=MessageStatus.SENDING, lease_expires_at__lt=now)
    ).count()


def _ids(sql: str, params) -> list[int]:
    """Run a query whose rows are single ids; fetch them all at once (10,000s of them)."""
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        return [row[0] for row in cursor.fetchall()]


def _move_sql(plan: Plan, event: FailoverEvent, now: datetime) -> tuple[str, list]:
    """The move as one UPDATE … RETURNING (PostgreSQL, SQLite 3.35+): no second read.

    The same filter as movable_messages; Django's update() cannot return rows.
    """
    table = connection.ops.quote_name(Message._meta.db_table)
    at = connection.ops.adapt_datetimefield_value(now)  # what the ORM would send
    sql = (
        f"UPDATE {table} SET master_id = %s, failover_id = %s, epoch = epoch + 1, "
        "status = %s, lease_owner = '', lease_expires_at = NULL, "
        "next_attempt_at = %s, updated_at = %s "
        "WHERE master_id = %s AND ("
        "(status IN (%s, %s) AND (in_doubt_until IS NULL OR in_doubt_until <= %s)) "
        "OR (status = %s AND lease_expires_at < %s)) "
        "RETURNING id"
    )
    params = [
        plan.backup_id,
        event.pk,
        MessageStatus.RETRYING,
        at,
        at,
        plan.failed_id,
        *PENDING,
        at,
        MessageStatus.SENDING,
        connection.ops.adapt_datetimefield_value(now - outbox.doubt_hold()),
    ]
    return sql, params


def _pass_role(failed: Master, backup: Master) -> None:
    """The backup takes the failed master's routing role (a primary stays a primary)."""
    failed.role, backup.role = backup.role, failed.role
    backup.save(update_fields=["role"])


def _finish(event: FailoverEvent, started: float) -> None:
    event.status = FailoverStatus.COMPLETED
    event.finished_at = timezone.now()
    event.duration_ms = (time.monotonic() - started) * 1000
    event.save()


def _record_events(event: FailoverEvent, failed: Master, backup: Master, actor) -> None:
    how = "automatically" if actor is None else f"by {actor}"
    Event.objects.create(
        kind=EventKind.FAILOVER_STARTED,
        severity=Severity.CRITICAL,
        master=failed,
        actor=actor,
        message=f"Failover of {failed.display_name} to {backup.display_name} initiated {how}",
        data={"failover": event.pk, "backup": backup.pk, "reason": event.reason},
    )
    Event.objects.create(
        kind=EventKind.FAILOVER_COMPLETED,
        master=failed,
        actor=actor,
        message=f"Failover of {failed.display_name} to {backup.display_name} complete: "
        f"{event.moved_messages} messages and {event.moved_affinities} conversations moved "
        f"in {event.duration_ms:.0f} ms",
        data={"failover": event.pk, "backup": backup.pk, "moved": event.moved_messages},
    )


def _no_backup(failed: Master, plan: Plan, reason: str, actor, started_at) -> FailoverEvent:
    """No master can take the work: give it back to the queue and raise the alarm."""
    event = FailoverEvent.objects.create(
        failed_master=failed,
        reason=reason,
        automatic=actor is None,
        initiated_by=actor,
        started_at=started_at,
        detail={"reasons": plan.reasons, "error": "no healthy backup"},
    )
    _transfer(plan, event, started_at)
    event.status, event.finished_at = FailoverStatus.FAILED, timezone.now()
    event.save()
    Event.objects.create(
        kind=EventKind.NO_BACKUP,
        severity=Severity.CRITICAL,
        master=failed,
        message=f"No backup for {failed.display_name}: {event.moved_messages} messages wait "
        "in the queue and go out through the first master that recovers",
        data={"failover": event.pk, "reasons": plan.reasons},
    )
    return event


def _record_rolled_back(failed_id, backup_id, reason, actor, started_at, error) -> FailoverEvent:
    logger.error("failover of master %s rolled back: %s", failed_id, error)
    with transaction.atomic():
        event = FailoverEvent.objects.create(
            failed_master_id=failed_id,
            backup_master_id=backup_id,
            reason=reason,
            status=FailoverStatus.ROLLED_BACK,
            automatic=actor is None,
            initiated_by=actor,
            started_at=started_at,
            finished_at=timezone.now(),
            detail={"error": str(error)},
        )
        Event.objects.create(
            kind=EventKind.FAILOVER_FAILED,
            severity=Severity.CRITICAL,
            master_id=failed_id,
            message=f"Failover rolled back, nothing moved: {error}",
            data={"failover": event.pk},
        )
    return event


def rollback_failover(event_id: int, actor=None) -> FailoverEvent:
    """Move back what a failover moved and is still pending on the backup, atomically."""
    with transaction.atomic():
        original = FailoverEvent.objects.select_for_update().get(pk=event_id)
        if original.status != FailoverStatus.COMPLETED:
            raise FailoverRefused(f"failover {event_id} is {original.status}: nothing to roll back")
        failed = _lock(original.failed_master_id)
        now = timezone.now()
        messages = Message.objects.filter(
            failover=original, master_id=original.backup_master_id
        ).filter(movable(now))
        moved = messages.update(
            master_id=failed.pk,
            epoch=F("epoch") + 1,
            status=MessageStatus.RETRYING,
            lease_owner="",
            lease_expires_at=None,
            next_attempt_at=now,
            updated_at=now,
        )
        affinities = ConversationAffinity.objects.filter(
            failover=original, master_id=original.backup_master_id
        ).update(master_id=failed.pk, failover=None)
        backup = Master.objects.select_for_update().get(pk=original.backup_master_id)
        roles = original.detail.get("roles", {})
        failed.role = roles.get("failed", failed.role)
        backup.role = roles.get("backup", backup.role)
        failed.failover_hold_until = None
        failed.save(update_fields=["role", "failover_hold_until"])
        backup.save(update_fields=["role"])
        original.status = FailoverStatus.ROLLED_BACK
        original.detail = original.detail | {
            "rolled_back": {
                "messages": moved,
                "affinities": affinities,
                "at": now.isoformat(),
                "by": str(actor) if actor else "automatic",
            }
        }
        original.save(update_fields=["status", "detail"])
        Event.objects.create(
            kind=EventKind.FAILOVER_ROLLED_BACK,
            severity=Severity.WARNING,
            master=failed,
            actor=actor,
            message=f"Failover {event_id} rolled back: {moved} messages and {affinities} "
            f"conversations back on {failed.display_name}",
            data={"failover": event_id, "messages": moved, "affinities": affinities},
        )
        return original


# A failover asked for this long ago that left no FailoverEvent is asked for
# again: its django-q2 task was lost (a Redis broker restarted empty, a
# worker killed before it started). A duplicate of a task that was only slow
# waits on the master's lock and is refused; one that ran left its event.
REASK_AFTER = timezone.timedelta(seconds=30)


def due_for_failover(now=None) -> list[int]:
    """Masters failed longer than FAILOVER_TIMEOUT with no failover asked for since.

    Or asked for more than ``REASK_AFTER`` ago with nothing to show for it.
    """
    from masters.models import ProberLease, RuntimeSettings

    runtime = RuntimeSettings.current()
    if not runtime.failover_enabled or ProberLease.failover_on_hold():
        return []
    now = now or timezone.now()
    cutoff = now - timezone.timedelta(milliseconds=runtime.failover_timeout_ms)
    ran = FailoverEvent.objects.filter(
        failed_master=OuterRef("pk"), started_at__gte=OuterRef("failover_requested_at")
    )
    return list(
        Master.objects.filter(
            health_status=HealthStatus.FAILED,
            health_changed_at__lte=cutoff,
            breaker_tripped_at__isnull=True,
        )
        .filter(
            Q(failover_requested_at__isnull=True)
            | Q(failover_requested_at__lt=F("health_changed_at"))
            | (Q(failover_requested_at__lt=now - REASK_AFTER) & ~Exists(ran))
        )
        .values_list("pk", flat=True)
    )


def request_failovers(now=None) -> list[int]:
    """Ask django-q2 to fail over every master that is due; each is asked once per failure."""
    due = due_for_failover(now)
    if not due:
        return []
    with transaction.atomic():
        Master.objects.filter(pk__in=due).update(failover_requested_at=timezone.now())
        for master_id in due:
            transaction.on_commit(partial(async_task, "masters.tasks.consider_failover", master_id))
    return due


def consider_failover(master_id: int) -> FailoverEvent | None:
    """Fail a master over if it is still failed, its breaker closed and failover on."""
    from masters.models import RuntimeSettings

    master = Master.objects.get(pk=master_id)
    runtime = RuntimeSettings.current()
    if master.health_status != HealthStatus.FAILED:
        Event.objects.create(
            kind=EventKind.FAILOVER_SKIPPED,
            master=master,
            message=f"{master.display_name} recovered before its failover: nothing moved",
        )
        return None
    if not runtime.failover_enabled or master.breaker_tripped_at is not None:
        return None
    if trip_breaker_if_needed(master, runtime.max_recovery_attempts):
        return None
    seconds = runtime.failover_timeout_ms / 1000
    try:
        return execute_failover(
            master_id, reason=f"failed for over {seconds:g}s: {master.last_error}"
        )
    except FailoverBusy as busy:
        # Not refused for good: let the prober ask again next second.
        logger.info("failover of master %s waits: %s", master_id, busy)
        Master.objects.filter(pk=master_id).update(failover_requested_at=None)
        return None
    except FailoverRefused as refused:
        logger.info("failover of master %s not run: %s", master_id, refused)
        return None
    except DatabaseError:
        # A deadlock or a lost connection: let the prober ask again next second.
        Master.objects.filter(pk=master_id).update(failover_requested_at=None)
        raise


def trip_breaker_if_needed(master: Master, limit: int) -> bool:
    """Open the breaker after ``limit`` failovers within the window: a human must look."""
    since = timezone.now() - timezone.timedelta(seconds=settings.FAILOVER["breaker_window_s"])
    recent = FailoverEvent.objects.filter(failed_master=master, started_at__gte=since).count()
    if limit == 0 or recent < limit:
        return False
    with transaction.atomic():
        Master.objects.filter(pk=master.pk).update(breaker_tripped_at=timezone.now())
        Event.objects.create(
            kind=EventKind.BREAKER_TRIPPED,
            severity=Severity.CRITICAL,
            master=master,
            message=f"Circuit breaker open for {master.display_name}: {recent} failovers in "
            f"{settings.FAILOVER['breaker_window_s'] // 60} min; automatic failover stopped "
            "until an operator resets it",
            data={"failovers": recent},
        )
    return True


def reset_breaker(master_id: int, actor=None) -> None:
    """Close a tripped breaker (an operator acknowledged it)."""
    with transaction.atomic():
        reset = Master.objects.filter(pk=master_id, breaker_tripped_at__isnull=False).update(
            breaker_tripped_at=None
        )
        if reset:
            Event.objects.create(
                kind=EventKind.BREAKER_RESET,
                master_id=master_id,
                actor=actor,
                message="Circuit breaker reset: automatic failover resumes",
            )


def drain(master_id: int, actor=None, wait_s: float | None = None) -> FailoverEvent | None:
    """Planned switchover: no new traffic at once, in-flight sends finish, then the rest moves.

    Waits up to ``wait_s`` (default: one dispatcher lease) for the master's
    in-flight sends; claims still open after that are left to their lease
    and move with the next failover.
    """
    master = Master.objects.get(pk=master_id)
    master.start_maintenance(actor=actor, reason="drained for a planned switchover")
    deadline = time.monotonic() + (wait_s if wait_s is not None else settings.QUEUE["lease_s"])
    while Message.objects.filter(master_id=master_id, status=MessageStatus.SENDING).exists():
        if time.monotonic() >= deadline:
            break
        time.sleep(0.2)  # in-flight sends finish in another process: nothing to await here
    try:
        return execute_failover(master_id, reason="planned switchover (maintenance)", actor=actor)
    except FailoverRefused as refused:
        logger.info("drain of master %s: %s", master_id, refused)
        return None


def failbacks_due() -> list[int]:
    """Completed failovers whose master is healthy again, when failback is switched on.

    Off by default: moving conversations back is a human decision (as in
    Patroni and Orchestrator); FAILBACK_ENABLED=true makes it automatic.
    """
    if not settings.FAILOVER["failback_enabled"]:
        return []
    return list(
        FailoverEvent.objects.filter(
            status=FailoverStatus.COMPLETED,
            failed_master__health_status=HealthStatus.HEALTHY,
            failed_master__failover_hold_until__lte=timezone.now(),
        ).values_list("pk", flat=True)
    )
