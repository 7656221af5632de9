"""Scenario 5: recovery after a failure.

The plan: the failed master comes back online, is detected as healthy, is
rebalanced gradually (slow start: a growing share, not half the traffic at
once), and the failover is not undone behind the operator's back.
"""

from __future__ import annotations

from datetime import timedelta

from masters.choices import EventKind, FailoverStatus, HealthStatus, Role
from masters.models import Event, FailoverEvent, Master, Message
from monitoring.alerts.choices import Rule
from monitoring.models import Alert
from tests.scenarios.conftest import all_sent, delivered_exactly_once

SLOW_START_S = 6
WAVE = 20


def share_of(session: str, rows: list[tuple[str, float]], start: float, end: float) -> float:
    """The share ``session`` sent of the messages sent ``start`` to ``end`` s after recovery."""
    window = [sender for sender, at in rows if start <= at < end]
    assert len(window) >= 40, f"too few messages in [{start}, {end}): {len(window)}"
    return window.count(session) / len(window)


def test_a_recovered_master_is_given_a_growing_share_over_the_slow_start(product):
    stack = product(sessions=("a", "b"), SLOW_START=str(SLOW_START_S))
    a = stack.masters["a"]
    stack.sim("a", "fail")
    failover = stack.wait(
        lambda: FailoverEvent.objects.filter(status=FailoverStatus.COMPLETED).first(),
        what="the failover of a",
    )

    stack.sim("a", "recover")
    stack.wait(lambda: stack.master_list()["a"]["routable"], what="a detected as healthy")
    recovered_at = Master.objects.get(pk=a.pk).health_changed_at
    change = Event.objects.filter(kind=EventKind.HEALTH_CHANGED, master=a).latest("pk")
    assert (change.data["from"], change.data["to"]) == (HealthStatus.FAILED, HealthStatus.HEALTHY)

    # Steady traffic through the slow-start window and past it: each wave goes in
    # once the last one is out, so the rate follows what the masters can send.
    ids: list[int] = []
    past_the_window = recovered_at + timedelta(seconds=SLOW_START_S + 2)
    wave = 0
    while not Message.objects.filter(pk__in=ids[-WAVE:], sent_at__gte=past_the_window).exists():
        wave_ids = stack.submit(f"wave{wave}", WAVE)
        stack.wait(lambda w=wave_ids: all_sent(w), what=f"wave {wave} sent")
        ids += wave_ids
        wave += 1

    senders = delivered_exactly_once(stack, ids)
    rows = [
        (senders[pk], (sent_at - recovered_at).total_seconds())
        for pk, sent_at in Message.objects.filter(pk__in=ids).values_list("pk", "sent_at")
    ]
    step = SLOW_START_S / 3
    ramp = [share_of("a", rows, n * step, (n + 1) * step) for n in range(3)]
    full = share_of("a", rows, SLOW_START_S, SLOW_START_S + 2)
    # Round robin over two masters gives a a share f / (1 + f) of the messages,
    # where f grows from 10 % to 100 % of a full share over the window.
    assert ramp[0] < 0.3, ramp
    assert ramp[0] < ramp[1] < full, (ramp, full)
    assert 0.4 <= full <= 0.6, full

    # Back in rotation, and said so; the failover stands (failback is a human decision).
    stack.wait(
        lambda: Alert.objects.filter(rule=Rule.MASTER_RECOVERED, master=a).exists(),
        what="the master-recovered notice",
    )
    failover.refresh_from_db()
    assert failover.status == FailoverStatus.COMPLETED
    masters = stack.master_list()
    assert masters["b"]["role"] == Role.PRIMARY and masters["a"]["routable"]
