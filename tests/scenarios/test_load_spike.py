"""Scenario 4: a load spike.

The plan: message distribution balanced, queue length monitored, rebalancing
triggered only if needed, no message loss.
"""

from __future__ import annotations

from collections import Counter
from concurrent.futures import ThreadPoolExecutor

from masters.choices import EventKind
from masters.models import Event, FailoverEvent
from monitoring.alerts.choices import Rule
from monitoring.models import Alert, AlertSettings
from tests.scenarios.conftest import all_sent, delivered_exactly_once

BATCHES = 4
BATCH = 500  # the API's batch limit (API_BATCH_LIMIT)
SPIKE = BATCHES * BATCH
# Each master sends at most RATE messages a second: the spike outruns the three
# of them, so the queue builds up for seconds, as it would in production.
RATE = 50


def test_a_spike_is_queued_spread_evenly_over_the_masters_and_delivered_in_full(product):
    stack = product(dispatchers=2, rate=RATE)
    threshold = AlertSettings.current().queue_warning  # the plan's 1,000 by default
    assert threshold < SPIKE

    # The bot bursts: four clients each post a full batch at once.
    with ThreadPoolExecutor(BATCHES) as pool:
        batches = pool.map(lambda n: stack.submit(f"spike{n}", BATCH), range(BATCHES))
        ids = [pk for batch in batches for pk in batch]
    assert len(set(ids)) == SPIKE

    # The queue is watched: the elected prober raises the queue warning.
    alert = stack.wait(
        lambda: Alert.objects.filter(rule=Rule.QUEUE_HIGH).first(),
        what="the queue-length warning",
    )
    assert alert.severity == "warning" and alert.data["queue_length"] > threshold

    stack.wait(lambda: all_sent(ids), timeout=90, what="the spike to drain")
    sessions = Counter(delivered_exactly_once(stack, ids).values())
    # Balanced: round robin over three equal masters, within a few percent.
    shares = {session: 100 * n / SPIKE for session, n in sessions.items()}
    assert set(shares) == {"a", "b", "c"}
    assert all(abs(share - 100 / 3) < 5 for share in shares.values()), shares

    # The API tells the operator the same.
    masters = stack.master_list()
    assert {m: row["load"]["sent_last_minute"] for m, row in masters.items()} == dict(sessions)
    assert all(row["load"]["pending"] == 0 for row in masters.values())

    # Balanced already: no imbalance alert, no rebalancing, no failover.
    assert not Alert.objects.filter(rule=Rule.LOAD_SHARE).exists()
    assert not Event.objects.filter(kind=EventKind.REBALANCED).exists()
    assert not FailoverEvent.objects.exists()
