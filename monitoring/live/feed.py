"""The change feed of one web process: tail the Event table, tell this process's dashboards.

Every state change writes an ``Event`` row in its own transaction (the domain
does, in whatever process made the change), so new committed rows are the
changes to show; alerts change without events (acknowledged, resolved), so
the open alerts are watched too. One ``Feed`` per event loop (one per
daphne process) polls both every ``POLL_S`` with one indexed query each,
and when something changed reads the dashboard once (``load_dashboard``)
and hands it to every listening consumer of this process, which render what
changed for their user. No channel layer is involved: each process serves
its own sockets, so any number of web processes work, with or without Redis.

The feed starts with the first consumer and stops with the last one, closing
its database connection; it runs its queries on a thread of its own that
keeps one connection open (web processes run with CONN_MAX_AGE=0, which
would otherwise reconnect ten times a second).
"""

from __future__ import annotations

import asyncio
import logging
import time
import weakref
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import Any, Protocol, TypeVar

from django.db import DatabaseError, connections

from masters.models import Event
from monitoring.live.dashboard import TRENDS_MAX_AGE_S, Dashboard, Trends, load_dashboard
from monitoring.models import Alert

logger = logging.getLogger(__name__)

T = TypeVar("T")

POLL_S = 0.1
REFRESH_S = 5.0  # the figures without events (queue, throughput, last check) refresh this often
RETRY_S = 1.0  # after a database error
# A row whose id was taken but not yet committed (PostgreSQL hands out ids
# before commit) shows up later: ids skipped over are looked for this long.
GAP_WAIT_S = 10.0
MAX_GAP = 100  # a larger jump is a sequence skipping ahead (a restart), not open transactions
MAX_EVENTS_PER_POLL = 1000


class Listener(Protocol):
    def offer(self, dashboard: Dashboard) -> None: ...


class Feed:
    """Poll for changes while anyone listens; hand each listener the fresh dashboard."""

    def __init__(self, poll_s: float = POLL_S, refresh_s: float = REFRESH_S) -> None:
        self.poll_s, self.refresh_s = poll_s, refresh_s
        self.listeners: set[Listener] = set()
        self.task: asyncio.Task | None = None
        self.thread: ThreadPoolExecutor | None = None
        self.last_id = 0
        self.gaps: dict[int, float] = {}  # event id -> monotonic deadline
        self.alerts_seen: tuple = ()
        self.ready = asyncio.Event()  # set once the marks are read: reads come after them
        self.trends: Trends | None = None
        self.trends_at = 0.0

    # --- listeners --------------------------------------------------------------

    def join(self, listener: Listener) -> None:
        """Start telling ``listener`` about changes (starting the feed if it is idle)."""
        self.listeners.add(listener)
        if self.task is None:
            self.thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="dashboard-feed")
            self.ready = asyncio.Event()
            self.task = asyncio.get_running_loop().create_task(self.run(), name="dashboard-feed")

    async def leave(self, listener: Listener) -> None:
        """Stop telling ``listener``; the last one to leave stops the feed."""
        self.listeners.discard(listener)
        if self.listeners or self.task is None:
            return
        task, thread = self.task, self.thread
        self.task = self.thread = None
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await asyncio.get_running_loop().run_in_executor(thread, connections.close_all)
        thread.shutdown(wait=False)

    async def db(self, function: Callable[..., T], *args: Any) -> T:
        """Run ORM work (or template rendering) on the feed's database thread."""
        if self.thread is None:
            raise RuntimeError("the dashboard feed is not running")
        return await asyncio.get_running_loop().run_in_executor(
            self.thread, partial(_closing_on_error, function, *args)
        )

    # --- the loop ---------------------------------------------------------------

    async def run(self) -> None:
        """Poll until cancelled; after a change or REFRESH_S, read and hand out the dashboard."""
        while True:
            try:
                await self.db(self.start_marks)
                break
            except DatabaseError as error:
                logger.warning("dashboard feed: cannot read the event log (%s)", error)
                await asyncio.sleep(RETRY_S)
        self.ready.set()
        next_refresh = time.monotonic() + self.refresh_s
        while True:
            try:
                changed = await self.db(self.poll)
                if changed or time.monotonic() >= next_refresh:
                    dashboard = await self.read()
                    next_refresh = time.monotonic() + self.refresh_s
                    for listener in list(self.listeners):
                        listener.offer(dashboard)
            except DatabaseError as error:
                logger.warning("dashboard feed: database error, retrying (%s)", error)
                await asyncio.sleep(RETRY_S)
            except Exception:
                # A bug in reading the dashboard must not end the pushes of every
                # socket in this process: log it and try again.
                logger.exception("dashboard feed: cannot read the dashboard")
                await asyncio.sleep(RETRY_S)
            await asyncio.sleep(self.poll_s)

    async def read(self) -> Dashboard:
        """Read the dashboard now, after the feed's marks: a later change is pushed."""
        await self.ready.wait()
        return await self.db(self._read)

    def _read(self) -> Dashboard:
        fresh = time.monotonic() - self.trends_at <= TRENDS_MAX_AGE_S
        reuse = self.trends if fresh else None
        dashboard = load_dashboard(reuse)
        if dashboard.trends is not reuse:
            self.trends, self.trends_at = dashboard.trends, time.monotonic()
        return dashboard

    # --- what changed (on the feed's thread) --------------------------------------

    def start_marks(self) -> None:
        """Start from now: what is already committed is in the first render."""
        self.last_id = Event.objects.order_by("-pk").values_list("pk", flat=True).first() or 0
        self.gaps = {}
        self.alerts_seen = open_alerts()

    def poll(self) -> bool:
        """Say whether an event was committed or an open alert changed since the last poll."""
        now = time.monotonic()
        self.gaps = {pk: until for pk, until in self.gaps.items() if until > now}
        ids = list(
            Event.objects.filter(pk__gt=self.last_id)
            .order_by("pk")
            .values_list("pk", flat=True)[:MAX_EVENTS_PER_POLL]
        )
        late = (
            set(Event.objects.filter(pk__in=list(self.gaps)).values_list("pk", flat=True))
            if self.gaps
            else set()
        )
        for pk in late:
            del self.gaps[pk]
        previous = self.last_id
        for pk in ids:
            if pk - previous <= MAX_GAP:
                self.gaps.update(dict.fromkeys(range(previous + 1, pk), now + GAP_WAIT_S))
            previous = pk
        self.last_id = previous
        alerts = open_alerts()
        changed = bool(ids or late) or alerts != self.alerts_seen
        self.alerts_seen = alerts
        return changed


def open_alerts() -> tuple:
    """The open alerts' ids and states: new, acknowledged and resolved ones change it."""
    return tuple(Alert.objects.open().order_by("pk").values_list("pk", "state"))


def _closing_on_error(function: Callable[..., T], *args: Any) -> T:
    try:
        return function(*args)
    except DatabaseError:
        # A dropped connection (a database restart) is reopened on the next call.
        connections.close_all()
        raise


_feeds: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Feed] = weakref.WeakKeyDictionary()


def feed() -> Feed:
    """Return the running event loop's feed (one per web process; tests run a loop each)."""
    loop = asyncio.get_running_loop()
    if loop not in _feeds:
        _feeds[loop] = Feed()
    return _feeds[loop]
