"""One chaos run: start the product, load it, break it on schedule, drain it, reconcile.

The database (CHAOS_DATABASE_URL, default ``ha_chaos`` on the local
PostgreSQL) is created, migrated and flushed through the benchmark
harness, which also starts every process with its output in
``var/chaos/<label>.log`` and stops them all at the end, however the run
ends. The Redis database (CHAOS_REDIS_URL) is flushed at the start.
Restarting PostgreSQL or Redis restarts the whole server on that port:
give the run servers of its own if anything else uses them.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import re
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import redis
from django.conf import settings
from django.core.management import call_command
from django.db import DatabaseError, close_old_connections, connections
from django.db.models import Count, Q

from ha_portal.lib.env import database_from_url
from ha_portal.lib.http import HttpClient
from masters.choices import HealthStatus, MessageStatus, RecipientKind, Role, WebhookFormat
from masters.models import AlertRecipient, Master, Message, RuntimeSettings
from monitoring.bench.harness import (
    BASE_DIR,
    SIMULATOR_READY,
    WEB_READY,
    BenchError,
    BenchProcess,
    Context,
    bench_database,
    is_same_database,
    redact,
)
from monitoring.chaos import collect
from monitoring.chaos.faults import Injection, Injector
from monitoring.chaos.fleet import Fleet
from monitoring.chaos.load import LoadGenerator, LoadReport
from monitoring.chaos.reconcile import Sample
from monitoring.chaos.schedule import (
    Fault,
    FaultKind,
    Shape,
    build_schedule,
    format_schedule,
    timeline,
)
from monitoring.chaos.verdict import Verdict

logger = logging.getLogger(__name__)

DEFAULT_DATABASE_URL = "postgres://postgres@127.0.0.1:5432/ha_chaos"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/3"
LOG_DIR = BASE_DIR / "var" / "chaos"
SESSIONS = ("chaos-a", "chaos-b", "chaos-c")
ROLES = (Role.PRIMARY, Role.SECONDARY, Role.TERTIARY)
WEB_PROCESSES = 2
PROBERS = 2
MASTER_RATE = 200  # messages a second per master: the run tests faults, not the send limit
START_TIMEOUT_S = 60.0
SAMPLE_EVERY_S = 1.0
RSS_EVERY_S = 10.0
ALERTS_SETTLE_S = 30.0
UNSENT = (MessageStatus.QUEUED, MessageStatus.RETRYING, MessageStatus.SENDING)
# The product's settings for the run, changed from the defaults so that a
# fault of tens of seconds reaches a failover and the queue drains before
# the deadline; everything else is as production runs it.
PRODUCT_ENV = {
    "FAILOVER_HOLD_DOWN": "60",
    "RETRY_MAX_MS": "20000",
    "Q_WORKERS": "2",
    "PORTAL_URL": "http://127.0.0.1:8000",
}
RUNTIME = {"failover_timeout_ms": 10_000}
SETTINGS_NOTE = (
    "failover 10 s after a master fails (FAILOVER_TIMEOUT, default 30 s), hold-down "
    "60 s (FAILOVER_HOLD_DOWN, default 300 s), retry backoff capped at 20 s "
    "(RETRY_MAX_MS, default 300 s); every other setting at its default"
)


@dataclass(frozen=True)
class Size:
    name: str
    title: str
    load_s: float
    messages: int
    faults: int
    hold_s: tuple[float, float]
    drain_s: float  # how long the queue may take to drain after the load


SHORT = Size("short", "Short run", 120, 3_000, 12, (8, 30), 150)
FULL = Size("full", "Full run", 1_860, 108_000, 200, (10, 60), 600)


@dataclass(frozen=True)
class Options:
    size: Size
    seed: int
    dispatchers: int = 3
    database_url: str = DEFAULT_DATABASE_URL
    redis_url: str = DEFAULT_REDIS_URL
    skip: frozenset[FaultKind] = frozenset()


@dataclass
class ChaosContext(Context):
    """The harness's context, plus Redis and the run's settings in every process's environment."""

    extra_env: dict[str, str] = field(default_factory=dict)

    def environment(self) -> dict[str, str]:
        return super().environment() | self.extra_env


@dataclass
class Stack:
    """The running product: what the load, the faults and the reconciliation need."""

    simulator_url: str
    web_urls: list[str]
    token: str
    masters: dict[str, int]  # session -> master id
    fleet: Fleet


@dataclass
class Drive:
    """What happened while the run drove the product."""

    started: float  # time.time() when the load began
    load_s: float
    injections: list[Injection]
    load: LoadReport
    samples: list[Sample]
    requests: set[tuple[int, float]]  # failover requests seen: (master, requested at)
    drained: bool
    drain_s: float
    deliveries: list[dict]


def run(options: Options, progress: Callable[[str], None]) -> Verdict:
    """Run the chaos test of ``options`` and return its verdict."""
    check_database_url(options.database_url)
    size = options.size
    shape = Shape(
        size.load_s,
        size.faults,
        SESSIONS,
        options.dispatchers,
        WEB_PROCESSES,
        size.hold_s,
        kinds=frozenset(FaultKind) - options.skip,
    )
    faults = build_schedule(options.seed, shape)
    progress(format_schedule(options.seed, faults))
    flush_redis(options.redis_url)
    env = PRODUCT_ENV | {"REDIS_URL": options.redis_url}
    ctx = ChaosContext(options.database_url, log_dir=LOG_DIR, progress=progress, extra_env=env)
    wall = time.monotonic()
    sink, fleet = AlertSink(), Fleet(ctx)
    try:
        with bench_database(options.database_url) as server:
            try:
                stack = start_stack(ctx, options, sink, fleet)
                drive = asyncio.run(drive_product(stack, faults, options, progress))
                collect.write_samples(LOG_DIR / "samples.csv", drive.samples, drive.started)
                stack.fleet.check()
                stack.fleet.measure_rss(end=True)
            finally:
                ctx.stop_all()
                fleet.close()  # after the processes: see Fleet
            # Read once nothing runs: the records and the webhook's count are final.
            # The server may have restarted under this thread's connection.
            connections.close_all()
            records = collect.read_records(stack.masters)
            received = len(sink.received)
    finally:
        sink.close()
    setup = describe_setup(options, server)
    return collect.conclude(
        size, options.seed, drive, records, stack, setup, received, time.monotonic() - wall
    )


def check_database_url(url: str) -> None:
    """Refuse, naming CHAOS_DATABASE_URL, a URL the harness would refuse in its own words."""
    conf = database_from_url("CHAOS_DATABASE_URL", url)
    if not conf["ENGINE"].endswith("postgresql"):
        raise BenchError(f"CHAOS_DATABASE_URL must be a postgres:// URL, not {redact(url)}")
    if is_same_database(conf, settings.DATABASES["default"]):
        raise BenchError(
            f"CHAOS_DATABASE_URL ({redact(url)}) is the portal's own database: the chaos "
            "run flushes its database and restarts its server, so give it another one"
        )


def flush_redis(url: str) -> None:
    """Empty the run's Redis database (left-over django-q2 tasks of an earlier run)."""
    try:
        redis.Redis.from_url(url, socket_timeout=5).flushdb()
    except redis.RedisError as error:
        raise BenchError(f"cannot reach Redis at {redact(url)}: {error}") from error


def describe_setup(options: Options, server: str) -> str:
    return (
        f"the simulator with {len(SESSIONS)} sessions, one master on each; "
        f"{options.dispatchers} dispatchers, {WEB_PROCESSES} web processes (daphne), one "
        f"django-q2 cluster ({PRODUCT_ENV['Q_WORKERS']} workers), {PROBERS} probers; "
        f"{server} at `{redact(options.database_url)}`, Redis at `{redact(options.redis_url)}`; "
        f"{SETTINGS_NOTE}"
    )


# --- starting the product ---------------------------------------------------------------


def start_stack(ctx: ChaosContext, options: Options, sink: AlertSink, fleet: Fleet) -> Stack:
    """Create the rows, start every process, and wait until every master is healthy."""
    simulator_url = ""

    def start_simulator(label: str) -> BenchProcess:
        nonlocal simulator_url
        if simulator_url:
            raise BenchError("the simulator died: its delivery log is gone, nothing to reconcile")
        process = ctx.start(label, "ha_simulator", "--port", "0", "--sessions", ",".join(SESSIONS))
        simulator_url = wait_ready(process, SIMULATOR_READY)
        return process

    fleet.add("simulator", "simulator", start_simulator)
    masters = create_rows(simulator_url, sink.url)
    token = issue_token()
    for index in range(1, PROBERS + 1):
        fleet.add(
            f"prober-{index}",
            "prober",
            lambda label: ctx.start(label, "ha_prober", "--name", label),
        )
    for index in range(1, options.dispatchers + 1):
        fleet.add(
            f"dispatcher-{index}",
            "dispatcher",
            lambda label: ctx.start(label, "ha_dispatcher", "--name", label),
        )
    fleet.add("qcluster", "qcluster", lambda label: ctx.start(label, "qcluster"))
    web_urls = [""] * WEB_PROCESSES
    for index in range(WEB_PROCESSES):
        fleet.add(f"web-{index + 1}", "web", web_starter(ctx, web_urls, index))
    ctx.progress(f"waiting for {len(masters)} masters to be healthy")
    wait_healthy(fleet, list(masters.values()))
    fleet.measure_rss(start=True)
    return Stack(simulator_url, web_urls, token, masters, fleet)


def web_starter(ctx: Context, urls: list[str], index: int) -> Callable[[str], BenchProcess]:
    """Start a web process as the Procfile does; its URL goes into ``urls[index]``."""
    argv = [sys.executable, "-m", "daphne", "-b", "127.0.0.1", "-p", "0"]

    def start(label: str) -> BenchProcess:
        process = ctx.spawn(label, [*argv, "ha_portal.asgi:application"], {"CONN_MAX_AGE": "0"})
        urls[index] = f"http://{wait_ready(process, WEB_READY)}"
        return process

    return start


def wait_ready(process: BenchProcess, pattern: re.Pattern) -> str:
    """Wait for ``pattern`` in the process's log; return its first group. This process only."""
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if match := pattern.search(process.log_path.read_text(errors="replace")):
            return match.group(1)
        process.check_running()
        time.sleep(0.05)
    raise BenchError(f"{process.label} did not start within {START_TIMEOUT_S:g} s")


def create_rows(simulator_url: str, sink_url: str) -> dict[str, int]:
    """Create the settings, a master per session, the alert webhook, schedules; return masters."""
    RuntimeSettings.objects.update_or_create(pk=1, defaults=settings.HA_DEFAULTS | RUNTIME)
    masters = {}
    for index, (session, role) in enumerate(zip(SESSIONS, ROLES, strict=True)):
        master = Master.objects.create(
            external_id=session,
            phone_number=f"+1555{index:07d}",
            display_name=f"Chaos {session[-1].upper()}",
            role=role,
            priority=index + 1,
            failover_priority=index + 1,
            gateway_url=simulator_url,
            gateway_session=session,
            max_messages_per_second=MASTER_RATE,
        )
        masters[session] = master.pk
    AlertRecipient.objects.create(
        kind=RecipientKind.WEBHOOK, url=sink_url, format=WebhookFormat.JSON, secret="chaos"
    )
    call_command("setup_schedules", stdout=io.StringIO())
    return masters


def issue_token() -> str:
    """Issue the bot's API token the way an operator does (manage.py create_api_token)."""
    out = io.StringIO()
    call_command("create_api_token", "chaos-bot", stdout=out)
    return out.getvalue().strip()


def wait_healthy(fleet: Fleet, ids: list[int]) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    healthy = Master.objects.filter(pk__in=ids, health_status=HealthStatus.HEALTHY)
    while healthy.count() < len(ids):
        if fleet.check():
            raise BenchError(f"a process died while starting: {fleet.crashes[-1].log_tail}")
        if time.monotonic() >= deadline:
            raise BenchError(f"the masters were not healthy within {START_TIMEOUT_S:g} s")
        time.sleep(0.2)


# --- driving it -------------------------------------------------------------------------


async def drive_product(
    stack: Stack, faults: list[Fault], options: Options, progress: Callable[[str], None]
) -> Drive:
    """Load the product, inject the faults on time, heal them, wait for the queue to drain."""
    size = options.size
    sampler = Sampler(stack.fleet, progress)
    async with HttpClient(limit=100) as http:
        injector = Injector(
            http,
            stack.simulator_url,
            stack.fleet,
            connections.settings["default"],
            options.redis_url,
            options.seed,
        )
        load = LoadGenerator(
            http,
            lambda: stack.web_urls,
            stack.token,
            rate=size.messages / size.load_s,
            duration_s=size.load_s,
            prefix=f"chaos{options.seed}",
            seed=options.seed,
        )
        started = time.time()
        progress(f"load: {size.messages / size.load_s:.1f} msg/s for {size.load_s:g} s")
        sampling = asyncio.create_task(sampler.run())
        loading = asyncio.create_task(load.run())
        injections = await run_timeline(injector, faults, started, progress)
        report = await loading
        await heal_all(injector)
        progress(f"load done: {len(report.submissions):,} messages; waiting for the queue to drain")
        drained, drain_s = await sampler.wait_drained(size.drain_s)
        await sampler.wait_alerts_settled(ALERTS_SETTLE_S)
        sampler.stop()
        await sampling
        deliveries = await collect.read_deliveries(stack.simulator_url)
    return Drive(
        started,
        size.load_s,
        injections,
        report,
        sampler.samples,
        sampler.requests,
        drained,
        drain_s,
        deliveries,
    )


async def run_timeline(
    injector: Injector, faults: list[Fault], started: float, progress: Callable[[str], None]
) -> list[Injection]:
    """Inject and heal each fault at its offset from ``started``; return the injections."""
    done: dict[int, Injection] = {}
    for step in timeline(faults):
        await asyncio.sleep(max(0.0, started + step.at_s - time.time()))
        if step.heal:
            try:
                await injector.heal(done[step.fault.index])
            except (OSError, RuntimeError) as error:
                progress(f"#{step.fault.index} heal failed: {error}")
            continue
        injection = await injector.inject(step.fault)
        done[step.fault.index] = injection
        outcome = injection.error or injection.detail
        at = injection.at - started
        progress(f"#{step.fault.index} t+{at:.1f} s {step.fault.describe()}: {outcome}")
    return [done[fault.index] for fault in faults]


async def heal_all(injector: Injector) -> None:
    """Recover every session, whatever the schedule did: the drain needs working gateways."""
    for session in SESSIONS:
        await injector.control(session, "recover")


class Sampler:
    """Once a second: can the database be read, is a master routable, does the queue move."""

    def __init__(self, fleet: Fleet, progress: Callable[[str], None]) -> None:
        self.fleet, self.progress = fleet, progress
        self.db_thread = ThreadPoolExecutor(1, thread_name_prefix="chaos-sample")
        self.samples: list[Sample] = []
        self.requests: set[tuple[int, float]] = set()
        self.stopping = asyncio.Event()

    def stop(self) -> None:
        self.stopping.set()

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        last_rss = time.monotonic()
        while not self.stopping.is_set():
            sample, requests = await loop.run_in_executor(self.db_thread, read_sample)
            self.samples.append(sample)
            self.requests |= requests
            for crash in await loop.run_in_executor(self.fleet.thread, self.fleet.check):
                self.progress(f"{crash.label} exited on its own (code {crash.code}); restarted")
            if time.monotonic() - last_rss >= RSS_EVERY_S:
                await loop.run_in_executor(self.fleet.thread, self.fleet.measure_rss)
                last_rss = time.monotonic()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stopping.wait(), SAMPLE_EVERY_S)
        self.db_thread.shutdown(wait=True)

    async def wait_drained(self, deadline_s: float) -> tuple[bool, float]:
        """Wait for a sample with nothing unsent; return whether it came and how long it took."""
        start, seen = time.monotonic(), len(self.samples)
        while time.monotonic() - start < deadline_s:
            fresh = self.samples[seen:]
            if any(s.reachable and s.unsent == 0 for s in fresh):
                return True, time.monotonic() - start
            await asyncio.sleep(SAMPLE_EVERY_S / 2)
        return False, time.monotonic() - start

    async def wait_alerts_settled(self, deadline_s: float) -> None:
        """Give alert deliveries under way (django-q2 tasks) up to ``deadline_s`` to finish."""
        loop = asyncio.get_running_loop()
        deadline = time.monotonic() + deadline_s
        while time.monotonic() < deadline:
            if not await loop.run_in_executor(self.db_thread, collect.alerts_pending):
                return
            await asyncio.sleep(0.5)


def read_sample() -> tuple[Sample, set[tuple[int, float]]]:
    """One sample of the queue and the masters; unreachable if the database does not answer."""
    close_old_connections()
    now = time.time()
    try:
        counts = Message.objects.aggregate(
            unsent=Count("pk", filter=Q(status__in=UNSENT)),
            sent=Count("pk", filter=Q(status=MessageStatus.SENT)),
        )
        masters = list(
            Master.objects.values_list("pk", "is_active", "health_status", "failover_requested_at")
        )
    except DatabaseError:
        return Sample(now, reachable=False), set()
    routable = sum(
        1 for _, active, status, _ in masters if active and status == HealthStatus.HEALTHY
    )
    requests = {(pk, at.timestamp()) for pk, _, _, at in masters if at is not None}
    return Sample(now, True, routable, counts["unsent"], counts["sent"]), requests


# --- the alert webhook ------------------------------------------------------------------


class AlertSink:
    """A webhook receiver on loopback that counts the alert notices the portal sends it."""

    def __init__(self) -> None:
        self.received: list[float] = []
        sink = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                sink.received.append(time.time())
                self.send_response(204)
                self.end_headers()

            def log_message(self, format: str, *args: object) -> None:
                logger.debug("alert sink: " + format, *args)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/alerts"
        self.thread = threading.Thread(
            target=self.server.serve_forever, name="chaos-sink", daemon=True
        )
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def utc_now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
