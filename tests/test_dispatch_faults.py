"""Faults found in review: each once lost, duplicated or stranded a message, or misjudged
a master. Kept as regression tests."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from masters import failover, outbox
from masters.choices import EventKind, HealthStatus, MessageStatus
from masters.dispatcher import report_to_health
from masters.health import Observation, Thresholds
from masters.models import Event, Message, ProberLease
from masters.prober import write_results
from masters.queue import NewMessage, enqueue, enqueue_batch
from tests.conftest import make_master, wait_until

H, F = HealthStatus.HEALTHY, HealthStatus.FAILED


def test_a_backlog_on_a_slow_master_is_sent_not_killed_by_waiting_locally(
    simulator, start_dispatcher, settings
):
    make_master("a", gateway_url=simulator.url, gateway_session="a", max_messages_per_second=4)
    settings.QUEUE = settings.QUEUE | {"lease_s": 8, "send_timeout_ms": 500, "max_attempts": 3}
    enqueue_batch([NewMessage(f"+9715012345{i:02d}", f"m{i}") for i in range(16)])
    start_dispatcher()
    wait_until(
        lambda: (
            not Message.objects.exclude(status=MessageStatus.SENT)
            .exclude(status=MessageStatus.DEAD)
            .exists()
        ),
        timeout=60,
    )
    assert Message.objects.filter(status=MessageStatus.SENT).count() == 16
    assert len(simulator.state.messages()) == 16


def test_a_lease_too_short_for_a_send_is_refused_at_start_up():
    import os
    import subprocess
    import sys

    result = subprocess.run(
        [sys.executable, "manage.py", "check"],
        env=os.environ | {"HA_DEV": "1", "DISPATCH_LEASE": "10", "SEND_TIMEOUT": "10000"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert "DISPATCH_LEASE: must be at least SEND_TIMEOUT + 6 s" in result.stderr


@pytest.mark.django_db(transaction=True)
def test_send_errors_with_successes_between_them_are_not_a_streak(settings):
    settings.HEALTH = settings.HEALTH | {"send_error_limit": 5}
    a = make_master("a")
    outcomes = []
    for i in range(6):
        outcomes += [
            outbox.Outcome(2 * i, 0, a.pk, error="HTTP 429"),
            outbox.Outcome(2 * i + 1, 0, a.pk, gateway_message_id="g"),
        ]
    report_to_health([*outcomes, outbox.Outcome(99, 0, a.pk, error="HTTP 429")])
    assert not Event.objects.filter(kind=EventKind.SEND_EJECTED).exists()
    report_to_health([outbox.Outcome(i, 0, a.pk, error="HTTP 500") for i in range(5)])
    assert Event.objects.filter(kind=EventKind.SEND_EJECTED).count() == 1


@pytest.mark.django_db(transaction=True)
def test_a_master_that_answers_its_probes_is_not_counted_as_down(settings):
    settings.HEALTH = settings.HEALTH | {"send_error_limit": 2}
    a = make_master("a", "+971505760056", health_status=F, consecutive_failures=5)
    b = make_master("b", "+971505760057")
    for _ in range(2):
        b.record_send_result(False, "HTTP 500")
    assert ProberLease.claim("p", timedelta(seconds=10))
    now = timezone.now()
    write_results(
        "p",
        [(a.pk, Observation(F, now, "down")), (b.pk, Observation(H, now, "up"))],
        Thresholds.from_settings(),
        False,
    )
    assert not Event.objects.filter(kind=EventKind.ALL_DOWN).exists()


@pytest.mark.django_db(transaction=True)
def test_a_failover_never_requeues_a_message_recorded_as_sent_meanwhile(monkeypatch):
    a = make_master("a", "+971505760056", health_status=F)
    make_master("b", "+971505760057", gateway_url="http://127.0.0.2:3000")
    enqueue(NewMessage("+971501234597", "late record", idempotency_key="k"))
    [claimed] = outbox.claim("d1", 10, timedelta(seconds=30))
    # Lapsed longer ago than the doubt hold: movable, were it not recorded meanwhile.
    Message.objects.filter(pk=claimed.id).update(
        master=a, lease_expires_at=timezone.now() - timedelta(minutes=10)
    )
    real_plan = failover.plan_failover

    def plan_then_record(*args, **kwargs):  # a dispatcher commits between plan and move
        plan = real_plan(*args, **kwargs)
        sent = outbox.Outcome(claimed.id, claimed.epoch, a.pk, gateway_message_id="gw")
        assert outbox.record("d1", [sent], 10)
        return plan

    monkeypatch.setattr(failover, "plan_failover", plan_then_record)
    failover.execute_failover(a.pk, reason="test")
    message = Message.objects.get(pk=claimed.id)
    assert (message.status, message.master_id) == (MessageStatus.SENT, a.pk)


@pytest.mark.django_db(transaction=True)
def test_a_message_that_keeps_losing_its_lease_goes_dead_at_max_attempts(settings):
    settings.QUEUE = settings.QUEUE | {"max_attempts": 3}
    make_master("a")
    enqueue(NewMessage("+971501234598", "poison"))
    for _ in range(5):
        claimed = outbox.claim("d", 10, timedelta(seconds=30))
        if not claimed:
            break
        Message.objects.filter(pk=claimed[0].id).update(
            lease_expires_at=timezone.now() - timedelta(seconds=1)
        )
        outbox.reclaim_expired_leases()
        Message.objects.filter(pk=claimed[0].id).update(next_attempt_at=timezone.now())
    message = Message.objects.get()
    assert (message.status, message.attempts) == (MessageStatus.DEAD, 3)


@pytest.mark.django_db(transaction=True)
def test_recording_a_batch_costs_a_constant_number_of_queries():
    a = make_master("a")
    enqueue_batch([NewMessage(f"+9715012340{i:02d}", f"q{i}") for i in range(50)])
    claimed = outbox.claim("d", 100, timedelta(seconds=30))
    outcomes = [outbox.Outcome(c.id, c.epoch, a.pk, gateway_message_id=f"g{c.id}") for c in claimed]
    with CaptureQueriesContext(connection) as queries:
        assert len(outbox.record("d", outcomes, 10)) == 50
    assert len(queries.captured_queries) < 10


@pytest.mark.django_db(transaction=True)
def test_a_send_that_never_started_goes_back_uncounted():
    a = make_master("a")
    enqueue(NewMessage("+971501234599", "later"))
    [claimed] = outbox.claim("d", 10, timedelta(seconds=30))
    not_sent = outbox.Outcome(
        claimed.id, claimed.epoch, a.pk, error="no slot", blame_master=False, attempted=False
    )
    outbox.record("d", [not_sent], 10)
    message = Message.objects.get()
    assert (message.status, message.attempts) == (MessageStatus.RETRYING, 0)
    assert message.next_attempt_at <= timezone.now() + timedelta(seconds=1)


@pytest.mark.django_db(transaction=True)
def test_recording_a_mixed_batch_writes_each_outcome_once_and_fenced():
    a = make_master("a")
    b = make_master("b", "+971505760057", gateway_url="http://127.0.0.2:3000")
    enqueue_batch([NewMessage(f"+9715012341{i:02d}", f"m{i}") for i in range(4)])
    claimed = outbox.claim("d", 10, timedelta(seconds=30))
    Message.objects.filter(pk__any=[c.id for c in claimed]).update(master=a)
    plain, elsewhere, failed, stale = claimed
    Message.objects.filter(pk=stale.id).update(epoch=stale.epoch + 1)  # a failover took it
    outcomes = [
        outbox.Outcome(plain.id, plain.epoch, a.pk, gateway_message_id="gw-plain"),
        outbox.Outcome(elsewhere.id, elsewhere.epoch, b.pk, gateway_message_id="gw-b"),
        outbox.Outcome(failed.id, failed.epoch, a.pk, error="HTTP 500"),
        outbox.Outcome(stale.id, stale.epoch, a.pk, gateway_message_id="gw-stale"),
    ]
    written = outbox.record("d", outcomes, 10)
    assert {o.message_id for o in written} == {plain.id, elsewhere.id, failed.id}
    rows = {m.pk: m for m in Message.objects.all()}
    assert (rows[plain.id].status, rows[plain.id].gateway_message_id) == ("sent", "gw-plain")
    assert rows[plain.id].lease_owner == "" and rows[plain.id].sent_at is not None
    assert (rows[elsewhere.id].status, rows[elsewhere.id].master_id) == ("sent", b.pk)
    assert rows[elsewhere.id].gateway_message_id == "gw-b"
    assert (rows[failed.id].status, rows[failed.id].last_error) == ("retrying", "HTTP 500")
    assert (rows[stale.id].status, rows[stale.id].gateway_message_id) == ("sending", "")
