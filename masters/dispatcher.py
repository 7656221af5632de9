"""The dispatcher: claims queued messages, picks their masters and sends them.

One asyncio loop per process; run any number (``manage.py ha_dispatcher``).
Database work (masters.outbox) runs on two threads so that claiming the
next batch overlaps with recording the last one. Sends run concurrently on
one pooled HTTP client, bounded per master by a concurrency limit and the
master's messages-per-second rate.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import socket
import time
from collections import defaultdict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import timedelta
from functools import partial
from typing import Any

from django.conf import settings
from django.db import DatabaseError, connections
from django.utils import timezone

from ha_portal.lib.db import with_fresh_connection
from ha_portal.lib.http import HttpClient
from masters import outbox
from masters.gateways import Gateway, GatewayError, gateway_for
from masters.models import DispatcherNode, Master
from masters.models.dispatch import rate_share
from masters.outbox import Claimed, Outcome
from masters.routing import Router

logger = logging.getLogger(__name__)

IDLE_WAIT_S = 0.1  # how long an empty claim waits before asking again
SWEEP_EVERY_S = 2.0
MASTERS_EVERY_S = 1.0
# A send ends at least this long before its claim's lease runs out, so that
# recording it has time even on a slow database.
SEND_MARGIN_S = 5.0
RECORD_RETRY_S = 1.0
MAX_RECORD_BATCH = 500
# Sent messages whose results wait to be recorded may add this many times the
# unsent cap (max_unsent): enough that a master's send lane never runs dry while results
# are written, few enough that a slow database still slows the claims.
RECORDING_ALLOWANCE = 1


def node_name() -> str:
    return f"dispatcher:{socket.gethostname()}:{os.getpid()}:{random.randrange(16**4):04x}"


class RateLimiter:
    """A token bucket: at most ``rate`` sends a second, in bursts of up to one second's worth."""

    def __init__(self, rate: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate = max(rate, 0.001)
        self.tokens = self.rate
        self.clock = clock
        self.updated = clock()

    async def acquire(self) -> None:
        while True:
            now = self.clock()
            self.tokens = min(self.rate, self.tokens + (now - self.updated) * self.rate)
            self.updated = now
            if self.tokens >= 1:
                self.tokens -= 1
                return
            await asyncio.sleep((1 - self.tokens) / self.rate)

    def set_rate(self, rate: float) -> None:
        """Change the rate in place; tokens saved beyond the new burst are dropped."""
        self.rate = max(rate, 0.001)
        self.tokens = min(self.tokens, self.rate)


@dataclass
class Lane:
    """One master as the dispatcher sends through it."""

    gateway: Gateway
    limiter: RateLimiter
    slots: asyncio.Semaphore


class Dispatcher:
    """Claim, route, send and record until told to stop."""

    def __init__(self, name: str | None = None, router: Router | None = None) -> None:
        self.name = name or node_name()
        self.router = router or Router()
        self.claim_thread = ThreadPoolExecutor(1, thread_name_prefix="dispatch-claim")
        self.record_thread = ThreadPoolExecutor(1, thread_name_prefix="dispatch-record")
        self.lanes: dict[int, Lane] = {}
        self.outcomes: list[Outcome] = []
        self.record_limit = MAX_RECORD_BATCH  # halved while a batch fails for no database reason
        self.outcomes_ready = asyncio.Event()
        # Claimed messages until their result is recorded, and those of them
        # not sent yet (waiting for a slot or a rate token, or sending).
        self.in_flight = 0
        self.unsent = 0
        self.max_unsent = settings.QUEUE["claim_batch"] * 4
        self.capacity = asyncio.Event()
        self.capacity.set()
        self.sent = 0
        self.dispatchers = 0  # live dispatchers sharing each master's rate, self included

    async def on(self, thread: ThreadPoolExecutor, function: Callable, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(
            thread, partial(with_fresh_connection, function, *args)
        )

    async def run(self, stopping: asyncio.Event) -> None:
        """Dispatch until ``stopping`` is set; finish and record the sends under way."""
        timeout_s = settings.QUEUE["send_timeout_ms"] / 1000
        async with HttpClient(limit=0) as http:
            self.http, self.timeout_s = http, timeout_s
            await self.refresh_lanes()
            recording = asyncio.create_task(self.record_loop(stopping))
            housekeeping = asyncio.create_task(self.housekeeping_loop(stopping))
            sends: set[asyncio.Task] = set()
            await self.claim_loop(stopping, sends)
            await asyncio.gather(*sends, return_exceptions=True)
            housekeeping.cancel()
            # The record loop is woken and awaited, never cancelled: a cancel
            # in the middle of a flush dropped that batch of results, and a
            # send that went out but was never recorded goes out again once
            # its lease runs out.
            self.outcomes_ready.set()
            await asyncio.gather(recording, housekeeping, return_exceptions=True)
            await self.flush_remaining()
            try:
                await self.on(self.record_thread, DispatcherNode.check_out, self.name)
            except DatabaseError:
                logger.exception("%s: could not check out; the others wait for it", self.name)
        for thread in (self.claim_thread, self.record_thread):
            thread.submit(connections.close_all).result()
            thread.shutdown(wait=True)

    async def claim_loop(self, stopping: asyncio.Event, sends: set[asyncio.Task]) -> None:
        lease = timedelta(seconds=settings.QUEUE["lease_s"])
        batch = settings.QUEUE["claim_batch"]
        while not stopping.is_set():
            await self.capacity.wait()
            limit = max(1, min(batch, self.room()))
            try:
                claimed = await self.on(
                    self.claim_thread, outbox.claim, self.name, limit, lease, self.router
                )
            except DatabaseError:
                logger.exception("%s: claim failed; retrying", self.name)
                claimed = []
            for message in claimed:
                task = asyncio.create_task(self.send(message))
                sends.add(task)
                task.add_done_callback(sends.discard)
            if len(claimed) < limit:
                # The queue is (nearly) empty: wait a moment or until told to stop.
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stopping.wait(), IDLE_WAIT_S)

    async def send(self, message: Claimed) -> None:
        master_id = message.master_id
        # Counted until its result is recorded, so a slow database slows the
        # claims instead of piling results up in memory.
        self.track(+1, unsent=+1)
        try:
            outcome = await self.send_through(message, master_id)
        except Exception as error:  # a bug must not strand the message until its lease runs out
            logger.exception("%s: sending message %s crashed", self.name, message.id)
            outcome = Outcome(
                message.id,
                message.epoch,
                master_id,
                error=f"dispatcher error: {error}",
                blame_master=False,
            )
        except asyncio.CancelledError:
            self.track(-1, unsent=-1)
            raise
        self.track(0, unsent=-1)
        self.outcomes.append(outcome)
        self.outcomes_ready.set()

    async def send_through(self, message: Claimed, master_id: int) -> Outcome:
        lane = self.lanes.get(master_id)
        if lane is None:
            await self.refresh_lanes()
            lane = self.lanes.get(master_id)
        if lane is None:
            return self.not_sent(message, master_id, "its master is no longer sendable")
        # A send must end SEND_MARGIN_S before the claim's lease: after that the
        # message may belong to another dispatcher or master. Waiting for a slot
        # or a rate token is bounded so; a message that never started goes back.
        budget = (message.lease_expires_at - timezone.now()).total_seconds()
        budget -= self.timeout_s + SEND_MARGIN_S
        try:
            async with asyncio.timeout(max(budget, 0)):
                await lane.slots.acquire()
                try:
                    await lane.limiter.acquire()
                except BaseException:
                    lane.slots.release()
                    raise
        except TimeoutError:
            return self.not_sent(message, master_id, "no send slot before the claim ran short")
        try:
            gateway_id = await lane.gateway.send(message.to, message.text, message.idempotency_key)
        except GatewayError as error:
            return Outcome(
                message.id,
                message.epoch,
                master_id,
                error=error.detail,
                retryable=error.retryable,
                in_doubt=error.in_doubt,
            )
        finally:
            lane.slots.release()
        return Outcome(message.id, message.epoch, master_id, gateway_message_id=gateway_id)

    @staticmethod
    def not_sent(message: Claimed, master_id: int, why: str) -> Outcome:
        return Outcome(
            message.id, message.epoch, master_id, error=why, blame_master=False, attempted=False
        )

    def room(self) -> int:
        """How many more messages this dispatcher may claim now.

        The cap is on messages not sent yet: those are what keeps every
        master's send lane fed. Counting results still being recorded
        against it too left a lane idle whenever a claimed batch split
        unevenly over the masters, as conversations kept on their master
        make it (13-20 % of the time in the bench's drains).
        """
        recording_cap = (1 + RECORDING_ALLOWANCE) * self.max_unsent
        return min(self.max_unsent - self.unsent, recording_cap - self.in_flight)

    def track(self, delta: int, *, unsent: int = 0) -> None:
        """Count claimed messages until recorded (``delta``) and until sent; gate the claims."""
        self.in_flight += delta
        self.unsent += unsent
        if self.room() > 0:
            self.capacity.set()
        else:
            self.capacity.clear()

    async def record_loop(self, stopping: asyncio.Event) -> None:
        while not stopping.is_set():
            await self.outcomes_ready.wait()
            await self.flush_outcomes()

    async def flush_remaining(self) -> None:
        """Record the results left at stop, retrying for up to one lease."""
        deadline = time.monotonic() + settings.QUEUE["lease_s"]
        while self.outcomes and time.monotonic() < deadline:
            await self.flush_outcomes()
        if self.outcomes:
            logger.error(
                "%s: stopping with %d results unrecorded: their messages go out again "
                "when their leases run out",
                self.name,
                len(self.outcomes),
            )

    async def flush_outcomes(self) -> None:
        self.outcomes_ready.clear()
        # Bounded batches: a backlog of results is written in steps, never as
        # one statement whose cost grows with the square of its size.
        limit = self.record_limit
        batch, self.outcomes = self.outcomes[:limit], self.outcomes[limit:]
        if self.outcomes:
            self.outcomes_ready.set()
        if not batch:
            return
        try:
            written = await self.on(
                self.record_thread,
                outbox.record,
                self.name,
                batch,
                settings.QUEUE["max_attempts"],
            )
        except DatabaseError:
            # Keep the results and try again: a send that went out and is not
            # recorded would be sent again after its lease. Recording is fenced,
            # so a retry never overwrites a newer claim.
            logger.exception("%s: could not record %d results; retrying", self.name, len(batch))
            self.outcomes = batch + self.outcomes
            self.outcomes_ready.set()
            await asyncio.sleep(RECORD_RETRY_S)
            return
        except Exception:
            # A bug or a poisoned result, not the database: halve the batch until
            # the bad result is alone, so it cannot hold everyone else's back.
            if len(batch) == 1:
                logger.exception(
                    "%s: could not record the result of message %s; it goes out again "
                    "when its lease runs out",
                    self.name,
                    batch[0].message_id,
                )
                self.track(-1)
                return
            logger.exception("%s: could not record %d results; splitting", self.name, len(batch))
            self.record_limit = max(1, len(batch) // 2)
            self.outcomes = batch + self.outcomes
            self.outcomes_ready.set()
            return
        self.record_limit = MAX_RECORD_BATCH
        self.track(-len(batch))
        self.sent += sum(1 for outcome in written if outcome.sent)
        try:
            await self.on(self.record_thread, report_to_health, written)
        except DatabaseError:
            logger.exception("%s: could not report send results to health", self.name)

    async def housekeeping_loop(self, stopping: asyncio.Event) -> None:
        """Check in and refresh masters every second; expire and reclaim every few seconds."""
        last_sweep = 0.0
        while not stopping.is_set():
            try:
                await self.refresh_lanes()
                if time.monotonic() - last_sweep >= SWEEP_EVERY_S:
                    last_sweep = time.monotonic()
                    expired = await self.on(self.record_thread, outbox.expire_overdue)
                    reclaimed = await self.on(self.record_thread, outbox.reclaim_expired_leases)
                    released = await self.on(self.record_thread, outbox.release_doubts)
                    if expired or reclaimed or released:
                        logger.info(
                            "%s: %d expired, %d reclaimed, %d released from doubt",
                            self.name,
                            expired,
                            reclaimed,
                            released,
                        )
            except DatabaseError:
                logger.exception("%s: housekeeping failed", self.name)
            await asyncio.sleep(MASTERS_EVERY_S)

    async def refresh_lanes(self) -> None:
        """Check in, and keep one lane per sendable master at this dispatcher's share of its rate.

        A lane is rebuilt when its gateway changes; a new rate or share is
        applied in place, so sends under way keep their slots.
        """
        dispatchers = await self.on(self.record_thread, DispatcherNode.check_in, self.name)
        if dispatchers != self.dispatchers:
            logger.info(
                "%s: %d dispatcher(s) running, each sending at most 1/%d of a master's rate",
                self.name,
                dispatchers,
                dispatchers,
            )
            self.dispatchers = dispatchers
        masters = await self.on(self.record_thread, load_sendable_masters)
        for master_id, config, rate in masters:
            share = rate_share(rate, dispatchers)
            lane = self.lanes.get(master_id)
            if lane is None or lane.gateway.config != config:
                self.lanes[master_id] = Lane(
                    gateway_for(config, self.http, timeout=self.timeout_s),
                    RateLimiter(share),
                    asyncio.Semaphore(settings.QUEUE["per_master_concurrency"]),
                )
            elif lane.limiter.rate != share:
                lane.limiter.set_rate(share)
        for master_id in set(self.lanes) - {master_id for master_id, _, _ in masters}:
            del self.lanes[master_id]
        # Hold no more than the lanes can start within a claim's lease: the rest
        # would only wait here while other dispatchers could send it.
        budget_s = max(1.0, settings.QUEUE["lease_s"] - self.timeout_s - SEND_MARGIN_S)
        startable = sum(lane.limiter.rate for lane in self.lanes.values()) * budget_s
        self.max_unsent = max(1, min(settings.QUEUE["claim_batch"] * 4, int(startable)))
        self.track(0)


def load_sendable_masters() -> list[tuple[int, Any, float]]:
    """Return (id, gateway config, rate) for masters a claimed message may go through."""
    masters = Master.objects.filter(is_active=True, health_status__in=outbox.SENDABLE)
    return [(m.pk, m.gateway_config(), float(m.max_messages_per_second)) for m in masters]


def report_to_health(outcomes: list[Outcome]) -> None:
    """Feed send results to the health state machine (the passive signal), in order.

    Only master-side failures count; a message the gateway rejects as
    invalid says nothing about the master. Errors count toward the
    in-a-row limit only while no success comes between them.
    """
    by_master: dict[int, list[Outcome]] = defaultdict(list)
    for outcome in outcomes:
        if outcome.master_id is None or not outcome.blame_master or not outcome.attempted:
            continue
        if outcome.sent or outcome.retryable:
            by_master[outcome.master_id].append(outcome)
    masters = Master.objects.in_bulk(by_master)
    for master_id, results in by_master.items():
        master = masters.get(master_id)
        if master is None:
            continue
        for outcome in results:
            if outcome.sent:
                if master.send_error_streak:
                    master.record_send_result(True)
                    master.send_error_streak = 0
            else:
                master.record_send_result(False, outcome.error)
                master.send_error_streak += 1
