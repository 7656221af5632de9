"""The prober: every active master probed every interval, results written in batches.

One asyncio loop per process. Any number of probers may run (one per node);
the one holding ``ProberLease`` probes, the others stand by and take over
when its lease expires. Probes run concurrently on one pooled HTTP client;
their results are written by one database thread in batches (one
transaction per batch: health checks, master counters, transition events),
and each batch checks the lease first so a prober that wakes from a stall
never writes stale results.

django-q2's scheduler scans only every 30 s, so it cannot drive a 5-second
loop: this is a long-running command (``manage.py ha_prober``).
"""

from __future__ import annotations

import asyncio
import heapq
import logging
import os
import random
import socket
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import timedelta
from functools import partial
from typing import Any

from django.conf import settings
from django.db import DatabaseError, connections, transaction
from django.db.models import Q
from django.utils import timezone

from ha_portal.lib.db import with_fresh_connection
from ha_portal.lib.http import HttpClient
from masters import recovery
from masters.choices import EventKind, HealthStatus, Severity
from masters.failover import failbacks_due, request_failovers, rollback_failover
from masters.gateways import Gateway, HealthResult, gateway_for
from masters.health import Observation, Thresholds
from masters.load import record_load_metrics
from masters.models import Event, HealthCheck, Master, ProberLease, RuntimeSettings

logger = logging.getLogger(__name__)

# At most this many probes wait on gateways at once: 1,000 hung gateways at a
# 2-second timeout and a 5-second interval keep about 400 in flight.
MAX_IN_FLIGHT = 1000
TICK_S = 0.05
# Adds at most this much to the time a failure takes to reach the database.
FLUSH_EVERY_S = 0.1


def node_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{random.randrange(16**4):04x}"


@dataclass(order=True)
class Target:
    """A master the prober is watching, ordered by when its next probe is due."""

    due: float
    master_id: int = field(compare=False)
    gateway: Gateway = field(compare=False)
    status: str = field(compare=False, default=HealthStatus.UNKNOWN)
    generation: int = field(compare=False, default=0)
    last_result: HealthResult | None = field(compare=False, default=None)


@dataclass(frozen=True)
class Timing:
    interval_s: float
    timeout_s: float
    confirm_s: float

    @classmethod
    def current(cls) -> Timing:
        interval_s = RuntimeSettings.current().health_check_interval_ms / 1000
        timeout_s = min(settings.HEALTH["timeout_ms"] / 1000, interval_s * 0.8)
        confirm_s = min(settings.HEALTH["confirm_interval_ms"] / 1000, interval_s)
        return cls(interval_s, timeout_s, confirm_s)

    @property
    def lease_ttl(self) -> timedelta:
        # Renewed every third of an interval: a standby takes over at most
        # 1.5 + 1/3 intervals after the holder's last renewal.
        return timedelta(seconds=self.interval_s * 1.5)

    @property
    def renew_every_s(self) -> float:
        return self.interval_s / 3


# --- the database side (runs on the prober's one database thread) -------------


# What load_targets reads: gateway_config(), has_gateway and the status.
TARGET_FIELDS = (
    "gateway_kind",
    "gateway_url",
    "gateway_session",
    "gateway_secret",
    "gateway_api_version",
    "health_status",
)
# What Master.observe() reads. The fields it only writes stay unloaded (parsing
# their timestamps was a good part of each batch): save_health writes what it set.
OBSERVED_FIELDS = (
    "health_status",
    "consecutive_failures",
    "consecutive_successes",
    "send_ejected_until",
    "display_name",
)
CHECK_COLUMNS = ("master_id", "checked_at", "status", "response_time_ms", "error")
# Rows per statement: far below SQLite's 32,766 parameters and PostgreSQL's 65,535.
ROWS_PER_STATEMENT = 500


def load_targets() -> list[tuple[int, Any, str]]:
    """Return (id, gateway config, status) for every active master that has a gateway."""
    masters = Master.objects.filter(is_active=True).only(*TARGET_FIELDS).order_by("pk")
    return [(m.pk, m.gateway_config(), m.health_status) for m in masters if m.has_gateway]


def write_results(
    holder: str,
    results: list[tuple[int, Observation]],
    thresholds: Thresholds,
    all_down: bool = True,
) -> tuple[dict[int, str], bool] | None:
    """Write one batch of probe results; None if this prober no longer leads.

    Returns each master's new status and whether every master is down;
    ``all_down`` is what the previous batch returned (True when unknown).
    """
    with transaction.atomic():
        if not ProberLease.holds(holder):
            return None
        ids = {master_id for master_id, _ in results}
        # Locked in id order, like every multi-row lock, so no two writers deadlock.
        locked = Master.objects.select_for_update().filter(pk__in=ids).order_by("pk")
        masters = {m.pk: m for m in locked.only(*OBSERVED_FIELDS)}
        before = {pk: loaded_health(master) for pk, master in masters.items()}
        checks, events = [], []
        for master_id, observation in results:
            master = masters.get(master_id)
            if master is None:
                continue  # deleted since it was probed
            healthy = observation.status == HealthStatus.HEALTHY
            checks.append(
                (
                    master_id,
                    observation.at,
                    observation.status,
                    observation.latency_ms,
                    "" if healthy else observation.detail,
                )
            )
            event = master.observe(observation, thresholds)
            if event is not None:
                events.append(event)
        save_health(masters.values(), before)
        insert_health_checks(checks)
        if events:
            Event.objects.bulk_create(events)
        # "All down" can only start with a failure and only end while it holds:
        # skip the check when neither can have happened.
        failures = any(obs.status != HealthStatus.HEALTHY for _, obs in results)
        if failures or all_down:
            all_down = update_all_down()
    for event in events:
        logger.info("%s", event.message)
    return {master.pk: master.health_status for master in masters.values()}, all_down


def loaded_health(master: Master) -> dict[str, Any]:
    """Return the HEALTH_FIELDS loaded on ``master``, by name."""
    deferred = master.get_deferred_fields()
    return {name: getattr(master, name) for name in Master.HEALTH_FIELDS if name not in deferred}


def save_health(masters: Iterable[Master], before: dict[int, dict[str, Any]]) -> None:
    """Save the HEALTH_FIELDS observe() changed, one UPDATE ... FROM (VALUES ...) per set of fields.

    ``before`` holds what loaded_health() returned before observe(): a field
    loaded then is saved if its value changed, one not loaded if observe() set
    it. Steady masters all change the same fields (the check times and
    latency), so a batch is usually one statement. bulk_update built a CASE
    expression per field and row: 3/4 of the prober's CPU while counters moved.
    The rows must be locked by the caller's transaction.
    """
    groups: dict[tuple[str, ...], list[Master]] = {}
    for master in masters:
        old, new = before[master.pk], loaded_health(master)
        changed = tuple(
            name for name, value in new.items() if name not in old or old[name] != value
        )
        if changed:
            groups.setdefault(changed, []).append(master)
    for names, group in groups.items():
        for chunk in chunks(group, ROWS_PER_STATEMENT):
            update_rows(chunk, names)


def update_rows(masters: list[Master], names: tuple[str, ...]) -> None:
    """Write the fields ``names`` of ``masters`` with one UPDATE ... FROM (VALUES ...)."""
    connection = connections[Master.objects.db]
    meta = Master._meta
    fields = [meta.pk, *(meta.get_field(name) for name in names)]
    quote = connection.ops.quote_name
    # PostgreSQL types a VALUES column by its literals (text, or nothing when all
    # are NULL): cast each to its column's type. SQLite needs no cast.
    postgres = connection.vendor == "postgresql"
    cast = {f.column: f"::{f.cast_db_type(connection)}" if postgres else "" for f in fields}
    table, pk = quote(meta.db_table), quote(meta.pk.column)
    columns = ", ".join(quote(f.column) for f in fields)
    assignments = ", ".join(
        f"{quote(f.column)} = v.{quote(f.column)}{cast[f.column]}" for f in fields[1:]
    )
    row = f"({', '.join(['%s'] * len(fields))})"
    sql = (
        f"WITH v ({columns}) AS (VALUES {', '.join([row] * len(masters))}) "
        f"UPDATE {table} SET {assignments} FROM v WHERE {table}.{pk} = v.{pk}{cast[meta.pk.column]}"
    )
    params = [
        f.get_db_prep_save(getattr(master, f.attname), connection)
        for master in masters
        for f in fields
    ]
    with connection.cursor() as cursor:
        cursor.execute(sql, params)


def insert_health_checks(rows: list[tuple]) -> None:
    """Insert HealthCheck rows given as CHECK_COLUMNS tuples with multi-row INSERTs.

    bulk_create would build a model instance per probe; the prober writes
    one row per master every few seconds.
    """
    connection = connections[HealthCheck.objects.db]
    quote = connection.ops.quote_name
    adapt = connection.ops.adapt_datetimefield_value
    table, columns = quote(HealthCheck._meta.db_table), ", ".join(map(quote, CHECK_COLUMNS))
    row = f"({', '.join(['%s'] * len(CHECK_COLUMNS))})"
    for chunk in chunks(rows, ROWS_PER_STATEMENT):
        sql = f"INSERT INTO {table} ({columns}) VALUES {', '.join([row] * len(chunk))}"
        params = [
            value
            for master_id, at, status, latency_ms, error in chunk
            for value in (master_id, adapt(at), status, latency_ms, error)
        ]
        with connection.cursor() as cursor:
            cursor.execute(sql, params)


def chunks(items: list, size: int) -> list[list]:
    return [items[start : start + size] for start in range(0, len(items), size)]


def update_all_down() -> bool:
    """Record the moment every probed master fails at once, and the moment one answers.

    All masters failing together more likely means the prober's own network
    is down than that every gateway broke: automatic failover holds meanwhile.
    """
    probed = Master.objects.filter(is_active=True).exclude(health_status=HealthStatus.MAINTENANCE)
    # A master ejected for failing sends still answers its probes: it says the
    # prober's network is fine, so it does not count as down here.
    answering = Q(consecutive_failures=0) | Q(send_ejected_until__gt=timezone.now())
    all_down = probed.exists() and not probed.filter(answering).exists()
    lease = ProberLease.objects.get(name="prober")
    if all_down and lease.all_down_since is None:
        lease.all_down_since = timezone.now()
        lease.save(update_fields=["all_down_since"])
        Event.objects.create(
            kind=EventKind.ALL_DOWN,
            severity=Severity.CRITICAL,
            message=f"All {probed.count()} masters are failing their probes: "
            "automatic failover holds until one answers",
        )
    elif not all_down and lease.all_down_since is not None:
        lease.all_down_since = None
        lease.save(update_fields=["all_down_since"])
        Event.objects.create(kind=EventKind.SOME_UP, message="A master answers again")
    return all_down


# --- the loop -----------------------------------------------------------------


class Prober:
    """Probe every active master every interval while holding the lease."""

    def __init__(self, name: str | None = None, clock: Callable[[], float] = time.monotonic):
        self.name = name or node_name()
        self.clock = clock
        self.leader = False
        self.targets: dict[int, Target] = {}
        self.heap: list[Target] = []
        self.results: list[tuple[int, Observation]] = []
        self.results_ready = asyncio.Event()
        self.in_flight: set[asyncio.Task] = set()
        self.db_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="prober-db")
        self.thresholds = Thresholds.from_settings()
        self.timing: Timing | None = None
        self.all_down = True  # unknown until the first batch says otherwise

    async def db(self, function: Callable, *args: Any) -> Any:
        """Run ORM work on the prober's one database thread."""
        return await asyncio.get_running_loop().run_in_executor(
            self.db_thread, partial(with_fresh_connection, function, *args)
        )

    async def run(self, stopping: asyncio.Event) -> None:
        """Probe until ``stopping`` is set, then release the lease."""
        self.timing = await self.db(Timing.current)
        async with HttpClient(limit=MAX_IN_FLIGHT) as http:
            self.http = http
            tasks = [
                asyncio.create_task(self.lease_loop(stopping)),
                asyncio.create_task(self.schedule_loop(stopping)),
                asyncio.create_task(self.flush_loop(stopping)),
                asyncio.create_task(self.load_metrics_loop(stopping)),
                asyncio.create_task(self.failover_loop(stopping)),
                asyncio.create_task(self.recovery_loop(stopping)),
                asyncio.create_task(self.alert_loop(stopping)),
            ]
            await stopping.wait()
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, *self.in_flight, return_exceptions=True)
            if self.results and self.leader:
                await self.flush()
        if self.leader:
            await self.db(ProberLease.release, self.name)
        await self.db(connections.close_all)
        self.db_thread.shutdown(wait=True)

    async def lease_loop(self, stopping: asyncio.Event) -> None:
        """Renew the lease (or wait for it) and refresh the list of masters."""
        next_refresh = 0.0
        while not stopping.is_set():
            try:
                self.timing = await self.db(Timing.current)
                leader = await self.db(ProberLease.claim, self.name, self.timing.lease_ttl)
                # The master list is re-read once an interval, not at every renewal.
                if leader and (not self.leader or self.clock() >= next_refresh):
                    await self.refresh_targets()
                    next_refresh = self.clock() + self.timing.interval_s
                else:
                    await self.db(
                        ProberLease.report_stall, timedelta(seconds=self.timing.interval_s)
                    )
                self.set_leader(leader)
            except DatabaseError:
                # The database is away (a restart, a failover): stand down and
                # retry; the lease expires on its own if we stay away.
                logger.exception("prober %s: lease renewal failed", self.name)
                self.set_leader(False)
            await asyncio.sleep(self.timing.renew_every_s if self.timing else 1.0)

    def set_leader(self, leader: bool) -> None:
        if leader != self.leader:
            self.all_down = True  # another prober may have changed it meanwhile
            logger.info("prober %s is %s", self.name, "probing" if leader else "standing by")
        if not leader:
            self.targets.clear()
            self.heap.clear()
            for task in self.in_flight:
                task.cancel()
        self.leader = leader

    async def refresh_targets(self) -> None:
        """Add new masters with a random phase (jitter), drop removed ones, update gateways."""
        rows = await self.db(load_targets)
        now, interval = self.clock(), self.timing.interval_s
        seen = set()
        for master_id, config, status in rows:
            seen.add(master_id)
            target = self.targets.get(master_id)
            if target is None:
                gateway = gateway_for(config, self.http, timeout=self.timing.timeout_s)
                target = Target(now + random.uniform(0, interval), master_id, gateway, status)
                self.targets[master_id] = target
                heapq.heappush(self.heap, target)
            elif (target.gateway.config, target.gateway.timeout) != (config, self.timing.timeout_s):
                target.gateway = gateway_for(config, self.http, timeout=self.timing.timeout_s)
        for master_id in set(self.targets) - seen:
            self.targets.pop(master_id).generation = -1  # a stale heap entry

    async def schedule_loop(self, stopping: asyncio.Event) -> None:
        """Start every probe that is due; each master has at most one probe in flight."""
        while not stopping.is_set():
            now = self.clock()
            while self.heap and self.heap[0].due <= now:
                target = heapq.heappop(self.heap)
                if target.generation < 0 or not self.leader:
                    continue
                task = asyncio.create_task(self.probe(target))
                self.in_flight.add(task)
                task.add_done_callback(self.in_flight.discard)
            await asyncio.sleep(TICK_S)

    async def probe(self, target: Target) -> None:
        try:
            result = await target.gateway.health()
            target.last_result = result
            observation = Observation(
                result.status, timezone.now(), result.detail, result.latency_ms
            )
        except Exception as error:  # a bug must not stop this master's probes for good
            logger.exception("prober %s: probe of master %s crashed", self.name, target.master_id)
            observation = Observation(HealthStatus.FAILED, timezone.now(), f"probe error: {error}")
        result_status = observation.status
        self.results.append((target.master_id, observation))
        self.results_ready.set()
        if target.generation < 0:
            return
        # A failure is confirmed sooner than the interval; the phase is kept otherwise.
        confirm = result_status == HealthStatus.FAILED and target.status != HealthStatus.FAILED
        target.due = (
            self.clock() + self.timing.confirm_s
            if confirm
            else max(target.due + self.timing.interval_s, self.clock())
        )
        heapq.heappush(self.heap, target)

    async def load_metrics_loop(self, stopping: asyncio.Event) -> None:
        """Roll up load per master at a fixed interval: the elected prober is the one writer."""
        while not stopping.is_set():
            await asyncio.sleep(settings.LOAD_METRICS_INTERVAL_S)
            if not self.leader:
                continue
            try:
                await self.db(record_load_metrics)
            except DatabaseError:
                logger.exception("prober %s: load metrics failed", self.name)

    async def failover_loop(self, stopping: asyncio.Event) -> None:
        """Once a second, hand masters failed past their grace period to the orchestrator.

        django-q2's scheduler looks only every 30 s; the prober already wakes
        often and is the one elected process, so it asks (once per failure).
        """
        while not stopping.is_set():
            await asyncio.sleep(1.0)
            if not self.leader:
                continue
            try:
                due = await self.db(request_failovers)
                for event_id in await self.db(failbacks_due):
                    await self.db(rollback_failover, event_id)
            except DatabaseError:
                logger.exception("prober %s: failover check failed", self.name)
                continue
            if due:
                logger.info("prober %s: failover requested for masters %s", self.name, due)

    async def recovery_loop(self, stopping: asyncio.Event) -> None:
        """Once a second, try the gateway's own recovery on failed masters that are due."""
        while not stopping.is_set():
            await asyncio.sleep(1.0)
            if not self.leader:
                continue
            try:
                for master_id in await self.db(recovery.recovery_due):
                    target = self.targets.get(master_id)
                    if target is not None:
                        await self.recover(target)
            except DatabaseError:
                logger.exception("prober %s: recovery step failed", self.name)

    async def alert_loop(self, stopping: asyncio.Event) -> None:
        """Every few seconds, evaluate the alert rules and send what is due.

        The elected prober is the one evaluator, as it is the one writer of
        health: no alert is raised twice, and one is never missed because
        nobody was looking. The rules live in the monitoring app.
        """
        from monitoring.alerts.engine import evaluate

        every_s = settings.ALERTS["evaluate_every_s"]
        while not stopping.is_set():
            await asyncio.sleep(every_s)
            if not self.leader:
                continue
            try:
                await self.db(evaluate)
            except Exception:  # any failure (database, broker, a bug): log, retry next time
                logger.exception("prober %s: alert evaluation failed", self.name)

    async def recover(self, target: Target) -> None:
        gateway, last = target.gateway, target.last_result
        if last is not None and gateway.needs_relink(last):
            await self.db(
                recovery.record_needs_relink, target.master_id, last.detail, gateway.supports_qr
            )
            return
        result = await gateway.restart()
        await self.db(recovery.record_attempt, target.master_id, result.ok, result.detail)
        logger.info(
            "prober %s: restart of master %s: %s", self.name, target.master_id, result.detail
        )

    async def flush_loop(self, stopping: asyncio.Event) -> None:
        """Write results in batches: whatever arrived during the last write, at most
        FLUSH_EVERY_S apart, so 1,000 masters cost a few transactions a second, not 200."""
        while not stopping.is_set():
            await self.results_ready.wait()
            started = self.clock()
            await self.flush()
            await asyncio.sleep(max(0.0, FLUSH_EVERY_S - (self.clock() - started)))

    async def flush(self) -> None:
        self.results_ready.clear()
        batch, self.results = self.results, []
        if not batch:
            return
        try:
            written = await self.db(write_results, self.name, batch, self.thresholds, self.all_down)
        except DatabaseError:
            logger.exception("prober %s: could not write %d results", self.name, len(batch))
            return
        if written is None:
            logger.warning("prober %s lost the lease; results discarded", self.name)
            self.set_leader(False)
            return
        statuses, self.all_down = written
        for master_id, status in statuses.items():
            if master_id in self.targets:
                self.targets[master_id].status = status
