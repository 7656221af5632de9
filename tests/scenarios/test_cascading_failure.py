"""Scenario 3: cascading failure, down to the tertiary and then to no master at all.

The plan: primary down, failover to the secondary; secondary down, failover to
the tertiary; all down: messages are held (not lost, not failed over to
nowhere) and sending resumes by itself when a master comes back.
"""

from __future__ import annotations

from datetime import timedelta

from masters.choices import EventKind, FailoverStatus, HealthStatus, MessageStatus
from masters.models import Event, FailoverEvent, Master, Message
from monitoring.alerts.choices import Rule
from monitoring.models import Alert
from tests.scenarios.conftest import (
    GRACE_S,
    all_sent,
    delivered_exactly_once,
    health,
    statuses,
)


def completed(failed: Master, backup: Master) -> FailoverEvent | None:
    return FailoverEvent.objects.filter(
        failed_master=failed, backup_master=backup, status=FailoverStatus.COMPLETED
    ).first()


def retrying_on(master: Master, ids: list[int]) -> int:
    return Message.objects.filter(pk__in=ids, master=master, status=MessageStatus.RETRYING).count()


def test_work_cascades_to_the_tertiary_is_held_when_all_are_down_and_resumes(product):
    # Failing sends would eject a master (degraded) after SEND_ERROR_LIMIT in a row; an
    # ejected master counts as answering, so c's failure would not be "all down" until
    # its ejection ended. Here the masters hold their work until their probes fail.
    stack = product(SEND_ERROR_LIMIT="1000")
    a, b, c = (stack.masters[s] for s in "abc")

    # The primary's sends break: its share stays pending on it.
    stack.sim("a", "break_sends")
    first = stack.submit("first", 30)
    stack.wait(
        lambda: (
            retrying_on(a, first) > 0
            and retrying_on(a, first)
            + Message.objects.filter(pk__in=first, status=MessageStatus.SENT).count()
            == len(first)
        ),
        what="the primary's share to be stuck on it",
    )

    # Primary down; the secondary's sends break too, so what it takes over stays on it.
    stack.sim("b", "break_sends")
    stack.sim("a", "fail")
    a_to_b = stack.wait(lambda: completed(a, b), what="failover a -> b")
    assert a_to_b.moved_messages > 0
    moved = list(Message.objects.filter(failover=a_to_b).values_list("pk", flat=True))
    stack.wait(lambda: retrying_on(b, moved) == len(moved), what="a's work stuck on b")

    # Secondary down: everything it holds, its own and a's, goes on to the tertiary.
    stack.sim("b", "fail")
    b_to_c = stack.wait(lambda: completed(b, c), what="failover b -> c")
    assert set(moved) <= set(Message.objects.filter(failover=b_to_c).values_list("pk", flat=True))
    stack.wait(lambda: all_sent(first), what="the tertiary to send it all")
    assert set(delivered_exactly_once(stack, first)[pk] for pk in moved) == {"c"}

    # The tertiary takes new work alone, but its sends break too: it holds what it took.
    stack.sim("c", "break_sends")
    last = stack.submit("last", 4)
    stack.wait(lambda: retrying_on(c, last) == len(last), what="new work stuck on c")

    # Tertiary down: no master is left.
    failovers_before = FailoverEvent.objects.count()
    stack.sim("c", "fail")
    stack.wait(
        lambda: Event.objects.filter(kind=EventKind.ALL_DOWN).exists(),
        what="the all-masters-down event",
    )
    held = stack.submit("held", 10)
    stack.wait(lambda: health("c") == HealthStatus.FAILED, what="c failed")
    c_failed_at = Master.objects.get(pk=c.pk).health_changed_at
    # Held: the dispatcher keeps looking at the new messages (after c's grace
    # period ran out) and finds no master, so they wait in the queue; c's own
    # work stays on c, retrying, not failed over to nowhere.
    stack.wait(
        lambda: (
            Message.objects.filter(
                pk__in=held,
                last_error="waiting: no master is routable",
                updated_at__gt=c_failed_at + timedelta(seconds=2 * GRACE_S),
            ).count()
            == len(held)
        ),
        what="the held messages to be looked at after c's grace period",
    )
    assert statuses(held) == {MessageStatus.QUEUED: len(held)}
    assert retrying_on(c, last) == len(last)
    status, body = stack.api("GET", f"messages/{held[0]}")
    assert status == 200 and body["status"] == "queued" and body["master"] is None
    status, body = stack.api("GET", "route?to=%2B971501234567")
    assert status == 503, body
    masters = stack.master_list()
    assert not any(m["routable"] for m in masters.values())
    assert masters["c"]["load"]["pending"] == len(last)
    assert FailoverEvent.objects.count() == failovers_before, "no failover to nowhere"
    stack.wait(lambda: Alert.objects.filter(rule=Rule.ALL_DOWN).exists(), what="the all-down alert")
    delivered = {d["idempotency_key"] for d in stack.deliveries()}
    assert not delivered & set(
        Message.objects.filter(pk__in=last + held).values_list("idempotency_key", flat=True)
    )

    # One master comes back: sending resumes by itself, each message exactly once.
    # c's work reaches a by c's failover, or back through the queue when that
    # failover ran before a's probes counted it healthy again (no backup yet).
    stack.sim("a", "recover")
    stack.wait(lambda: all_sent(last + held), what="the held messages sent")
    assert Event.objects.filter(kind=EventKind.SOME_UP).exists()
    sessions = delivered_exactly_once(stack, first + last + held)
    assert {sessions[pk] for pk in last + held} == {"a"}
    assert health("a") == HealthStatus.HEALTHY
