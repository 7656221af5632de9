"""Scenario 1: normal operation with two masters.

The plan: load balanced across both, health checks passing, no failovers triggered.
"""

from __future__ import annotations

from collections import Counter

from masters.choices import EventKind, HealthStatus
from masters.models import Event, FailoverEvent, HealthCheck
from tests.scenarios.conftest import all_sent, delivered_exactly_once

MESSAGES = 60


def test_two_healthy_masters_share_the_messages_and_nothing_fails_over(product):
    stack = product(sessions=("a", "b"))
    ids = stack.submit("normal", MESSAGES - 10)
    ids += [stack.submit_one(f"normal-single-{i}") for i in range(10)]

    stack.wait(lambda: all_sent(ids), what="every message sent")
    sessions = Counter(delivered_exactly_once(stack, ids).values())
    # Round robin over two masters: an even split, give or take the batches' edges.
    assert set(sessions) == {"a", "b"}
    assert abs(sessions["a"] - sessions["b"]) <= MESSAGES // 5, sessions

    # The operator's view through the API: both healthy and routable, every message
    # counted as sent in the last minute, nothing pending, no failover.
    masters = stack.master_list()
    assert {m["health_status"] for m in masters.values()} == {HealthStatus.HEALTHY}
    assert all(m["routable"] for m in masters.values())
    assert sum(m["load"]["sent_last_minute"] for m in masters.values()) == MESSAGES
    assert sum(m["load"]["pending"] for m in masters.values()) == 0
    assert stack.failovers() == []
    status, one = stack.api("GET", f"messages/{ids[-1]}")
    assert status == 200 and one["status"] == "sent" and one["master"]["id"] in {"a", "b"}

    # Health checks kept passing: both masters probed healthy again and again, and
    # neither ever left healthy once it got there.
    # (The messages can all be out before a master's second probe: wait for it.)
    for master in stack.masters.values():
        healthy = HealthCheck.objects.filter(master=master, status=HealthStatus.HEALTHY)
        stack.wait(lambda h=healthy: h.count() >= 2, what=f"a second healthy probe of {master}")
    assert not FailoverEvent.objects.exists()
    moved = Event.objects.filter(kind=EventKind.HEALTH_CHANGED).values_list("data", flat=True)
    assert {(change["from"], change["to"]) for change in moved} == {
        (HealthStatus.UNKNOWN, HealthStatus.HEALTHY)
    }
