"""The change feed: what it notices, and its lifetime."""

from __future__ import annotations

import asyncio

import pytest
from asgiref.sync import async_to_sync
from django.utils import timezone

from masters.choices import Severity
from masters.models import Event
from monitoring.live.dashboard import Dashboard
from monitoring.live.feed import Feed
from monitoring.models import Alert, AlertState

FAR = 10**9  # explicit ids well above what the sequence hands out


def event(pk: int) -> Event:
    return Event.objects.create(pk=pk, kind="test", message=f"event {pk}")


@pytest.mark.django_db
def test_an_event_committed_after_a_higher_id_is_still_noticed():
    # On PostgreSQL ids are taken at insert and seen at commit: FAR + 2 may
    # commit after FAR + 3 has been read.
    event(FAR + 1)
    feed = Feed()
    feed.start_marks()
    event(FAR + 3)
    assert feed.poll() is True
    assert feed.poll() is False
    event(FAR + 2)
    assert feed.poll() is True
    assert feed.poll() is False
    assert feed.last_id == FAR + 3 and feed.gaps == {}


@pytest.mark.django_db
def test_alerts_raised_acknowledged_and_resolved_are_noticed():
    feed = Feed()
    feed.start_marks()
    now = timezone.now()
    alert = Alert.objects.create(
        dedup_key="k",
        rule="r",
        severity=Severity.WARNING,
        title="t",
        fired_at=now,
        last_seen_at=now,
    )
    assert feed.poll() is True
    assert feed.poll() is False
    for state in (AlertState.ACKNOWLEDGED, AlertState.RESOLVED):
        Alert.objects.filter(pk=alert.pk).update(state=state)
        assert feed.poll() is True
        assert feed.poll() is False


class Listener:
    def __init__(self) -> None:
        self.offered: list[Dashboard] = []

    def offer(self, dashboard: Dashboard) -> None:
        self.offered.append(dashboard)


@pytest.mark.django_db(transaction=True)
def test_the_feed_runs_from_its_first_listener_to_its_last():
    feed = Feed(poll_s=0.01, refresh_s=0.05)
    first, second = Listener(), Listener()

    async def scenario() -> None:
        feed.join(first)
        feed.join(second)
        task = feed.task
        dashboard = await feed.read()
        assert dashboard.rows == [] and feed.task is task  # one tailer for both
        await feed.leave(first)
        assert feed.task is task and not task.done()
        await asyncio.wait_for(refreshed(second), timeout=5)  # the refresh reaches who is left
        assert second.offered[1].version > second.offered[0].version
        await feed.leave(second)
        assert feed.task is None and feed.thread is None and task.done()

    async_to_sync(scenario)()


async def refreshed(listener: Listener) -> None:
    while len(listener.offered) < 2:
        await asyncio.sleep(0.01)
