"""The plan's scenarios with every part real: simulator over HTTP, prober, dispatcher,
django-q2 running the orchestration (inline), and the database."""

from __future__ import annotations

from collections import Counter
from datetime import timedelta

import pytest
from django.utils import timezone
from django_q.conf import Conf

from masters.choices import EventKind, FailoverStatus, HealthStatus, MessageStatus, Role
from masters.models import Event, FailoverEvent, Master, Message
from masters.queue import NewMessage, enqueue_batch
from masters.routing import Router
from tests.conftest import make_master, sim_control, wait_until

H, F = HealthStatus.HEALTHY, HealthStatus.FAILED


@pytest.fixture
def cluster(simulator, fast_probes, start_prober, settings, monkeypatch):
    """Three masters, 1 s failover grace, a prober running (add ``dispatching`` to send)."""
    monkeypatch.setattr(Conf, "SYNC", True)
    settings.FAILOVER = settings.FAILOVER | {"hold_down_s": 2}
    runtime = fast_probes
    runtime.failover_timeout_ms = 1000
    runtime.save()
    masters = {
        session: make_master(
            session,
            phone,
            role=role,
            failover_priority=index + 1,
            gateway_url=simulator.url,
            gateway_session=session,
            health_status=HealthStatus.UNKNOWN,
            max_messages_per_second=1000,
        )
        for index, (session, phone, role) in enumerate(
            [
                ("a", "+971505760056", Role.PRIMARY),
                ("b", "+971505760057", Role.SECONDARY),
                ("c", "+966501234567", Role.TERTIARY),
            ]
        )
    }
    for session in masters:
        # Gateway restarts would heal the sessions these scenarios break on purpose.
        sim_control(simulator, session, "unrestartable")
    start_prober()
    for master in masters.values():
        wait_until(lambda m=master: status_of(m) == H, what=f"{master} healthy")
    return masters


@pytest.fixture
def dispatching(cluster, start_dispatcher):
    start_dispatcher()
    return cluster


def status_of(master) -> str:
    return Master.objects.values_list("health_status", flat=True).get(pk=master.pk)


def send(count: int, prefix: str) -> None:
    enqueue_batch(
        [
            NewMessage(f"+9715011{i:05d}", f"{prefix} {i}", idempotency_key=f"{prefix}-{i}")
            for i in range(count)
        ]
    )


def all_sent() -> bool:
    return not Message.objects.exclude(status=MessageStatus.SENT).exists()


def deliveries(simulator) -> Counter:
    return Counter(d.idempotency_key for d in simulator.state.messages())


def test_normal_operation_spreads_the_load_and_fails_nothing_over(dispatching, simulator):
    send(60, "normal")
    wait_until(all_sent, what="every message sent")
    per_session = Counter(d.session for d in simulator.state.messages())
    assert set(per_session) == {"a", "b", "c"}
    assert not FailoverEvent.objects.exists()
    assert max(deliveries(simulator).values()) == 1


def pending_on(master, count: int, prefix: str) -> list[Message]:
    """Work a master holds but has not sent yet (due later, as after a failed attempt)."""
    later = timezone.now() + timedelta(hours=1)
    return Message.objects.bulk_create(
        [
            Message(
                to=f"+9715012{i:04d}",
                text=f"{prefix} {i}",
                body_hash="-",
                master=master,
                idempotency_key=f"{prefix}-{i}",
                status=MessageStatus.RETRYING,
                next_attempt_at=later,
                attempts=1,
            )
            for i in range(count)
        ]
    )


def test_primary_failure_moves_its_work_to_the_backup_and_raises_the_alarm(dispatching, simulator):
    a, b = dispatching["a"], dispatching["b"]
    pending_on(a, 5, "stuck")
    sim_control(simulator, "a", "fail")

    event = wait_until(
        lambda: FailoverEvent.objects.filter(status=FailoverStatus.COMPLETED).first(),
        timeout=20,
        what="the failover",
    )
    assert (event.failed_master_id, event.backup_master_id) == (a.pk, b.pk)
    assert event.moved_messages == 5 and event.automatic
    wait_until(all_sent, what="the moved messages sent")
    assert {d.session for d in simulator.state.messages()} == {"b"}
    assert max(deliveries(simulator).values()) == 1
    assert Event.objects.filter(kind=EventKind.FAILOVER_STARTED, severity="critical").exists()
    assert dict(Master.objects.values_list("external_id", "role"))["b"] == Role.PRIMARY


def completed(failed, backup) -> bool:
    return FailoverEvent.objects.filter(
        failed_master=failed, backup_master=backup, status=FailoverStatus.COMPLETED
    ).exists()


def test_a_cascade_through_three_masters_holds_when_all_are_down_and_resumes(
    cluster, simulator, start_dispatcher
):
    a, b, c = cluster["a"], cluster["b"], cluster["c"]
    pending_on(a, 6, "cascade")
    sim_control(simulator, "a", "fail")
    wait_until(lambda: completed(a, b), timeout=20, what="a -> b")
    sim_control(simulator, "b", "fail")
    wait_until(lambda: completed(b, c), timeout=20, what="b -> c")
    sim_control(simulator, "c", "fail")

    wait_until(
        lambda: Event.objects.filter(kind=EventKind.ALL_DOWN).exists(),
        timeout=20,
        what="the all-down alarm",
    )
    assert Message.objects.filter(status=MessageStatus.SENT).count() == 0
    assert set(Message.objects.values_list("master_id", flat=True)) == {c.pk}

    sim_control(simulator, "a", "recover")
    wait_until(lambda: completed(c, a), timeout=30, what="c's work to move to a")
    start_dispatcher()  # sending starts only now, so nothing went out mid-cascade
    wait_until(all_sent, timeout=30, what="sending to resume by itself")
    assert sorted(deliveries(simulator).values()) == [1] * 6
    assert {d.session for d in simulator.state.messages()} == {"a"}


def test_a_master_that_recovers_inside_its_grace_period_keeps_its_work(cluster, simulator):
    from masters.models import RuntimeSettings

    runtime = RuntimeSettings.current()
    runtime.failover_timeout_ms = 60_000
    runtime.save()
    a = cluster["a"]
    sim_control(simulator, "a", "fail")
    wait_until(lambda: status_of(a) == F)
    sim_control(simulator, "a", "recover")
    wait_until(lambda: status_of(a) == H, what="recovered in grace")
    assert not FailoverEvent.objects.exists()


def test_after_a_failover_the_recovered_master_ramps_back_with_slow_start(
    cluster, simulator, settings
):
    settings.BALANCING = settings.BALANCING | {"slow_start_s": 60}
    a = cluster["a"]
    sim_control(simulator, "a", "fail")
    wait_until(
        lambda: FailoverEvent.objects.filter(status=FailoverStatus.COMPLETED).exists(), timeout=20
    )
    sim_control(simulator, "a", "recover")
    wait_until(lambda: status_of(a) == H, what="a healthy again")
    candidate = Router().snapshot().get(a.pk)
    assert candidate is not None, "back in rotation"
    assert candidate.recovered_at is not None, "ramping up, not a full share at once"
