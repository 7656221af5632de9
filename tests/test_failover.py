"""Failover: a failed master's pending work moves to a backup atomically, or not at all."""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest
from django.db import connection
from django.utils import timezone

from masters import outbox
from masters.choices import EventKind, FailoverStatus, HealthStatus, MessageStatus, Role
from masters.failover import (
    FailoverRefused,
    due_for_failover,
    execute_failover,
    plan_failover,
    request_failovers,
    rollback_failover,
)
from masters.models import ConversationAffinity, Event, FailoverEvent, Master, Message

pytestmark = pytest.mark.django_db(transaction=True)


def add(master, status, count=1, **fields):
    now = timezone.now()
    return [
        Message.objects.create(
            to="+971501234567",
            text="x",
            body_hash="-",
            master=master,
            status=status,
            next_attempt_at=now,
            **fields,
        )
        for _ in range(count)
    ]


def snapshot():
    return (
        sorted(Message.objects.values_list("pk", "master_id", "status", "epoch")),
        sorted(ConversationAffinity.objects.values_list("pk", "master_id")),
        sorted(Master.objects.values_list("pk", "role")),
    )


def test_it_moves_pending_messages_and_affinities_to_the_backup(trio):
    a, b, c = trio
    # Lapsed longer ago than the doubt hold (tests/test_in_doubt.py has the recent ones).
    past = timezone.now() - timedelta(minutes=10)
    future = timezone.now() + timedelta(seconds=30)
    pending = add(a, MessageStatus.QUEUED, 3) + add(a, MessageStatus.RETRYING, 2)
    orphaned = add(a, MessageStatus.SENDING, lease_expires_at=past, lease_owner="dead")
    in_flight = add(a, MessageStatus.SENDING, lease_expires_at=future, lease_owner="alive")
    sent = add(a, MessageStatus.SENT)
    for contact in ("+971501111111", "+971502222222"):
        ConversationAffinity.objects.create(contact=contact, master=a, expires_at=future)

    event = execute_failover(a.pk, reason="master failed")

    assert event.status == FailoverStatus.COMPLETED and event.backup_master_id == b.pk
    assert (event.moved_messages, event.moved_affinities) == (6, 2)
    moved = Message.objects.filter(pk__in=[m.pk for m in pending + orphaned])
    assert set(moved.values_list("master_id", "status", "epoch")) == {
        (b.pk, MessageStatus.RETRYING, 1)
    }
    assert Message.objects.get(pk=in_flight[0].pk).master_id == a.pk, "a live claim stays"
    assert Message.objects.get(pk=sent[0].pk).master_id == a.pk
    assert set(ConversationAffinity.objects.values_list("master_id", flat=True)) == {b.pk}
    a.refresh_from_db(), b.refresh_from_db()
    assert (a.role, b.role) == (Role.SECONDARY, Role.PRIMARY), "the primary role passes on"
    assert a.failover_hold_until > timezone.now()
    assert event.checksum and event.duration_ms is not None
    assert "c" in str(event.detail["reasons"]) or str(c.pk) in event.detail["reasons"]
    kinds = list(Event.objects.order_by("pk").values_list("kind", "severity"))
    assert kinds == [
        (EventKind.FAILOVER_STARTED, "critical"),
        (EventKind.FAILOVER_COMPLETED, "info"),
    ]


def test_the_dry_run_shows_what_would_move_and_changes_nothing(trio):
    a, b, _ = trio
    add(a, MessageStatus.QUEUED, 4)
    before = snapshot()
    plan = plan_failover(a)
    assert (plan.backup_id, len(plan.messages)) == (b.pk, 4)
    assert snapshot() == before and not FailoverEvent.objects.exists()


def test_with_no_healthy_backup_the_work_waits_in_the_queue_and_it_says_so(trio):
    a, b, c = trio
    Master.objects.filter(pk__in=[b.pk, c.pk]).update(health_status=HealthStatus.FAILED)
    messages = add(a, MessageStatus.QUEUED, 2)
    ConversationAffinity.objects.create(
        contact="+971501111111", master=a, expires_at=timezone.now() + timedelta(hours=1)
    )
    event = execute_failover(a.pk, reason="master failed")
    assert event.status == FailoverStatus.FAILED and event.backup_master is None
    assert event.moved_messages == 2
    assert set(
        Message.objects.filter(pk__in=[m.pk for m in messages]).values_list("master_id", "status")
    ) == {(None, MessageStatus.RETRYING)}
    assert not ConversationAffinity.objects.exists()
    assert Event.objects.get(kind=EventKind.NO_BACKUP).severity == "critical"


def skip_updates_of(message_id: int) -> str:
    """Make the database silently skip updates of one row: a fault in the transfer."""
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute(
                "CREATE FUNCTION skip_row() RETURNS trigger AS $$ BEGIN RETURN NULL; END $$ "
                "LANGUAGE plpgsql"
            )
            cursor.execute(
                "CREATE TRIGGER skip_one BEFORE UPDATE ON masters_message FOR EACH ROW "
                f"WHEN (OLD.id = {message_id}) EXECUTE FUNCTION skip_row()"
            )
        return "DROP TRIGGER skip_one ON masters_message; DROP FUNCTION skip_row()"
    with connection.cursor() as cursor:
        cursor.execute(
            "CREATE TRIGGER skip_one BEFORE UPDATE ON masters_message "
            f"WHEN OLD.id = {message_id} BEGIN SELECT RAISE(IGNORE); END"
        )
    return "DROP TRIGGER skip_one"


def test_a_transfer_that_fails_verification_is_rolled_back_and_recorded(trio):
    a, _, _ = trio
    messages = add(a, MessageStatus.QUEUED, 5)
    ConversationAffinity.objects.create(
        contact="+971501111111", master=a, expires_at=timezone.now() + timedelta(hours=1)
    )
    before = snapshot()
    cleanup = skip_updates_of(messages[2].pk)
    try:
        event = execute_failover(a.pk, reason="master failed")
    finally:
        with connection.cursor() as cursor:
            for statement in cleanup.split("; "):
                cursor.execute(statement)
    assert event.status == FailoverStatus.ROLLED_BACK
    assert "selected 5 messages, moved 4" in event.detail["error"]
    assert snapshot() == before, "nothing half-moved"
    assert Event.objects.filter(kind=EventKind.FAILOVER_FAILED).count() == 1
    assert not Event.objects.filter(kind=EventKind.FAILOVER_COMPLETED).exists()


def test_rollback_moves_back_what_is_still_pending_and_restores_roles(trio):
    a, b, _ = trio
    messages = add(a, MessageStatus.QUEUED, 3)
    ConversationAffinity.objects.create(
        contact="+971501111111", master=a, expires_at=timezone.now() + timedelta(hours=1)
    )
    event = execute_failover(a.pk, reason="master failed")
    Message.objects.filter(pk=messages[0].pk).update(status=MessageStatus.SENT)  # went out

    rolled = rollback_failover(event.pk)

    assert rolled.status == FailoverStatus.ROLLED_BACK
    assert rolled.detail["rolled_back"]["messages"] == 2
    assert Message.objects.get(pk=messages[0].pk).master_id == b.pk, "sent stays sent"
    assert set(
        Message.objects.filter(pk__in=[m.pk for m in messages[1:]]).values_list(
            "master_id", flat=True
        )
    ) == {a.pk}
    assert ConversationAffinity.objects.get().master_id == a.pk
    assert dict(Master.objects.values_list("pk", "role"))[a.pk] == Role.PRIMARY
    with pytest.raises(FailoverRefused):
        rollback_failover(event.pk)


def test_a_dispatcher_holding_a_stale_claim_cannot_record_after_the_move(trio):
    a, _, _ = trio
    [message] = add(a, MessageStatus.QUEUED)
    Master.objects.filter(pk=a.pk).update(health_status=HealthStatus.DEGRADED)
    [claimed] = outbox.claim("old", 10, timedelta(seconds=30))
    Master.objects.filter(pk=a.pk).update(health_status=HealthStatus.FAILED)
    # Lapsed past the doubt hold, so the failover moves it.
    lapsed = timezone.now() - timedelta(minutes=10)
    Message.objects.filter(pk=message.pk).update(lease_expires_at=lapsed)
    execute_failover(a.pk, reason="master failed")

    late = outbox.Outcome(claimed.id, claimed.epoch, a.pk, gateway_message_id="late")
    assert outbox.record("old", [late], 10) == []
    assert Message.objects.get(pk=message.pk).status == MessageStatus.RETRYING


def test_only_masters_failed_past_the_grace_period_are_due(trio, settings):
    a, b, _ = trio
    from masters.models import RuntimeSettings

    runtime = RuntimeSettings.current()
    runtime.failover_timeout_ms = 30_000
    runtime.save()
    assert due_for_failover() == [a.pk]
    Master.objects.filter(pk=b.pk).update(
        health_status=HealthStatus.FAILED, health_changed_at=timezone.now()
    )
    assert due_for_failover() == [a.pk], "b is still inside its grace period"
    runtime.failover_enabled = False
    runtime.save()
    assert due_for_failover() == []


def test_a_failover_asked_for_that_never_ran_is_asked_for_again(trio):
    a, _, _ = trio
    assert request_failovers() == [a.pk]
    assert due_for_failover() == [], "asked for once"

    # Its task was lost (the broker restarted empty): 31 s on, nothing ran.
    later = timezone.now() + timedelta(seconds=31)
    assert due_for_failover(later) == [a.pk]

    execute_failover(a.pk, reason="master failed")
    assert due_for_failover(later) == [], "it ran: its event is there"


@pytest.mark.skipif("connection.vendor != 'postgresql'")
def test_two_orchestrators_racing_on_one_master_fail_it_over_once(trio):
    a, _, _ = trio
    add(a, MessageStatus.QUEUED, 50)
    barrier = threading.Barrier(2)
    outcomes: list[object] = []

    def race() -> None:
        barrier.wait()
        try:
            outcomes.append(execute_failover(a.pk, reason="race"))
        except FailoverRefused as refused:
            outcomes.append(refused)
        finally:
            connection.close()

    threads = [threading.Thread(target=race) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert FailoverEvent.objects.filter(status=FailoverStatus.COMPLETED).count() == 1
    assert Message.objects.filter(epoch=1).count() == 50, "each message moved exactly once"


def test_the_orchestrator_fails_over_a_master_past_its_grace_through_django_q2(trio, monkeypatch):
    from django_q.conf import Conf

    from masters.failover import request_failovers

    monkeypatch.setattr(Conf, "SYNC", True)  # django-q2 runs the task inline
    a, b, _ = trio
    add(a, MessageStatus.QUEUED, 2)
    assert request_failovers() == [a.pk]
    event = FailoverEvent.objects.get()
    assert (event.status, event.backup_master_id, event.moved_messages) == (
        FailoverStatus.COMPLETED,
        b.pk,
        2,
    )
    assert request_failovers() == [], "asked once per failure"


def test_a_master_that_recovered_in_its_grace_period_moves_nothing(trio):
    from masters.failover import consider_failover

    a, _, _ = trio
    add(a, MessageStatus.QUEUED, 2)
    Master.objects.filter(pk=a.pk).update(health_status=HealthStatus.HEALTHY)
    assert consider_failover(a.pk) is None
    assert not FailoverEvent.objects.exists()
    assert Event.objects.get(kind=EventKind.FAILOVER_SKIPPED).master_id == a.pk


def test_the_circuit_breaker_trips_after_too_many_failovers_and_resets(trio):
    from masters.failover import consider_failover, reset_breaker
    from masters.models import RuntimeSettings

    a, b, _ = trio
    runtime = RuntimeSettings.current()
    runtime.max_recovery_attempts = 2
    runtime.save()
    for _ in range(2):
        FailoverEvent.objects.create(
            failed_master=a,
            backup_master=b,
            reason="earlier",
            status=FailoverStatus.COMPLETED,
            started_at=timezone.now(),
        )
    add(a, MessageStatus.QUEUED)

    assert consider_failover(a.pk) is None
    a.refresh_from_db()
    assert a.breaker_tripped_at is not None
    assert Event.objects.get(kind=EventKind.BREAKER_TRIPPED).severity == "critical"
    assert Message.objects.get().master_id == a.pk, "nothing moved while the breaker is open"
    assert a.pk not in due_for_failover()

    reset_breaker(a.pk)
    a.refresh_from_db()
    assert a.breaker_tripped_at is None
    assert Event.objects.filter(kind=EventKind.BREAKER_RESET).count() == 1


def test_a_drain_stops_new_traffic_then_moves_the_work_once_in_flight_is_done(trio):
    from masters.failover import drain

    _, b, _ = trio
    Master.objects.filter(pk=b.pk).update(health_status=HealthStatus.HEALTHY)
    a = Master.objects.get(external_id="a")
    Master.objects.filter(pk=a.pk).update(health_status=HealthStatus.HEALTHY)
    add(a, MessageStatus.QUEUED, 3)
    event = drain(a.pk, wait_s=0)
    a.refresh_from_db()
    assert a.health_status == HealthStatus.MAINTENANCE and not a.is_routable
    assert event.status == FailoverStatus.COMPLETED and event.moved_messages == 3
    assert event.reason == "planned switchover (maintenance)"


def test_failback_is_off_by_default_and_moves_work_back_when_switched_on(trio, settings):
    from masters.failover import failbacks_due

    a, _, _ = trio
    add(a, MessageStatus.QUEUED, 2)
    event = execute_failover(a.pk, reason="master failed")
    Master.objects.filter(pk=a.pk).update(
        health_status=HealthStatus.HEALTHY, failover_hold_until=timezone.now()
    )
    assert failbacks_due() == []
    settings.FAILOVER = settings.FAILOVER | {"failback_enabled": True}
    assert failbacks_due() == [event.pk]
    rollback_failover(event.pk)
    assert set(Message.objects.values_list("master_id", flat=True)) == {a.pk}


def hold_row_lock(master_id: int, seconds: float, held: threading.Event) -> threading.Thread:
    """Lock a master's row from another connection, as a health write does, for a while."""
    from django.db import connections, transaction

    def run() -> None:
        try:
            with transaction.atomic():
                Master.objects.select_for_update().get(pk=master_id)
                held.set()
                threading.Event().wait(seconds)
        finally:
            connections.close_all()

    thread = threading.Thread(target=run)
    thread.start()
    held.wait(10)
    return thread


@pytest.mark.skipif("connection.vendor != 'postgresql'")
@pytest.mark.django_db(transaction=True)
def test_a_failover_waits_for_a_briefly_locked_master_row(trio):
    a, b, _ = trio
    add(a, MessageStatus.QUEUED, 3)
    thread = hold_row_lock(a.pk, 0.5, threading.Event())
    try:
        event = execute_failover(a.pk, reason="master failed")
    finally:
        thread.join()
    assert (event.status, event.backup_master_id, event.moved_messages) == (
        FailoverStatus.COMPLETED,
        b.pk,
        3,
    )


@pytest.mark.skipif("connection.vendor != 'postgresql'")
@pytest.mark.django_db(transaction=True)
def test_a_failover_kept_from_its_row_is_asked_for_again(trio, monkeypatch):
    from masters import failover

    a, _, _ = trio
    add(a, MessageStatus.QUEUED, 3)
    Master.objects.filter(pk=a.pk).update(failover_requested_at=timezone.now())
    monkeypatch.setattr(failover, "LOCK_WAIT", "200ms")
    thread = hold_row_lock(a.pk, 2, threading.Event())
    try:
        assert failover.consider_failover(a.pk) is None
    finally:
        thread.join()
    assert Master.objects.get(pk=a.pk).failover_requested_at is None, "the prober asks again"
    assert a.pk in failover.due_for_failover()
    assert not FailoverEvent.objects.exists()


def claimed_on(master: Master) -> outbox.Claimed:
    """A message in flight on ``master``, claimed while the master could send."""
    add(master, MessageStatus.QUEUED)
    Master.objects.filter(pk=master.pk).update(health_status=HealthStatus.HEALTHY)
    [claimed] = outbox.claim("d1", 10, timedelta(seconds=30))
    Master.objects.filter(pk=master.pk).update(health_status=HealthStatus.FAILED)
    return claimed


def test_a_send_failing_after_its_master_was_failed_over_goes_back_to_the_pool(trio):
    a, _, _ = trio
    claimed = claimed_on(a)
    event = execute_failover(a.pk, reason="master failed")
    assert event.moved_messages == 0, "in flight: not movable"

    failed = outbox.Outcome(claimed.id, claimed.epoch, a.pk, error="timed out")
    assert outbox.record("d1", [failed], 10)

    message = Message.objects.get(pk=claimed.id)
    assert (message.status, message.master_id) == (MessageStatus.RETRYING, None)


def test_with_no_doubt_hold_a_claim_expiring_after_a_failover_goes_back_to_the_pool(trio, settings):
    # DISPATCH_DOUBT_HOLD=0; by default it waits for its master (tests/test_in_doubt.py).
    settings.QUEUE = settings.QUEUE | {"doubt_hold_s": 0}
    a, b, _ = trio
    claimed = claimed_on(a)
    execute_failover(a.pk, reason="master failed")
    Message.objects.filter(pk=claimed.id).update(lease_expires_at=timezone.now())
    kept = claimed_on(b)  # b can send: its reclaimed message keeps it
    Master.objects.filter(pk=b.pk).update(health_status=HealthStatus.HEALTHY)
    Message.objects.filter(pk=kept.id).update(lease_expires_at=timezone.now())

    assert outbox.reclaim_expired_leases() == 2

    assert Message.objects.get(pk=claimed.id).master_id is None
    assert Message.objects.get(pk=kept.id).master_id == b.pk
