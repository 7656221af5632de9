"""Health detection (issue 3): how fast a broken master leaves rotation, and what probing costs.

Three measurements, each on fresh processes over the bench database:

1. Time from a session failing (crash: WAHA says FAILED; hang: no answer)
   to its master leaving rotation, at the default settings. Trials run in
   parallel on distinct masters; each fault comes after its own random delay
   within one interval, so it lands at a uniformly random point of the
   prober's schedule.
2. The prober's CPU and how well it keeps the 5-second schedule at 100 and
   1,000 masters.
3. The project's HTTP client against the simulator process, for context.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import timedelta

from django.conf import settings
from django.db import connections
from django.db.models import Exists, OuterRef
from django.utils import timezone

from ha_portal.lib.http import HttpClient, HttpError
from masters.choices import HealthStatus, Role
from masters.models import HealthCheck, Master, RuntimeSettings
from monitoring.bench.harness import (
    BenchError,
    Context,
    CpuReading,
    cpu_percent,
    percentile,
    reset_database,
)
from monitoring.bench.report import Section, table, verdict

logger = logging.getLogger(__name__)

INTERVAL_MS = 5000
GOALS_P95_S = {"fail": 5.0, "hang": 7.0}
FAULT_NAMES = {"fail": "crash (session FAILED)", "hang": "hang (no answer)"}
GOAL_CPU_PCT = 25.0
GOAL_SCHEDULE_PCT = 99.0
# Below this, something else on the machine starved the prober: say so.
DISTURBED_SCHEDULE_PCT = 95.0
# CPU (% of one core) used during a window by processes other than those
# measured, above which the figures are flagged. PostgreSQL serving the
# prober counts here, about 10 % at 1,000 masters.
DISTURBED_OTHER_PCT = 30.0
SIZES = (100, 1000)
CONCURRENCIES = (10, 50)
# Masters nobody breaks: they must stay healthy through the trials.
BYSTANDERS = 10
POLL_S = 0.01
START_TIMEOUT_S = 60.0
# Settings that would move the figures away from the defaults the goals are about.
OVERRIDES = (
    "HEALTH_CHECK_INTERVAL",
    "HEALTH_CHECK_TIMEOUT",
    "HEALTH_CONFIRM_INTERVAL",
    "HEALTH_FALL_THRESHOLD",
)


@dataclass
class Trial:
    master_id: int
    session: str
    fault: str  # a simulator action: "fail" or "hang"
    delay_s: float
    sent: bool = False
    t0: float | None = None
    t1: float | None = None

    @property
    def seconds(self) -> float:
        assert self.t0 is not None and self.t1 is not None
        return self.t1 - self.t0


@dataclass
class Load:
    masters: int
    window_s: float
    cpu: dict[str, float]
    probes_done: int

    @property
    def probes_due(self) -> float:
        return self.masters * self.window_s / (INTERVAL_MS / 1000)

    @property
    def schedule_pct(self) -> float:
        return 100 * self.probes_done / self.probes_due

    @property
    def cpu_ms_per_probe(self) -> float:
        return 10 * self.cpu["prober"] * self.window_s / max(self.probes_done, 1)


@dataclass
class ClientRun:
    concurrency: int
    seconds: float
    latencies_ms: list[float] = field(default_factory=list)
    errors: int = 0
    cpu: dict[str, float] = field(default_factory=dict)


def run(ctx: Context) -> Section:
    """Measure detection times, prober CPU and the HTTP client; return the report section."""
    overridden = [name for name in OVERRIDES if name in os.environ]
    if overridden:
        raise BenchError(
            f"unset {', '.join(overridden)}: the detection goals are about the default settings"
        )
    trials_per_fault = 5 if ctx.quick else 20
    window_s = 10.0 if ctx.quick else 30.0
    client_s = 2.0 if ctx.quick else 5.0
    warnings: list[str] = []
    trials = measure_detection(ctx, trials_per_fault, warnings)
    loads = [measure_load(ctx, size, window_s) for size in SIZES]
    clients = measure_client(ctx, client_s)
    warnings += disturbances(loads, clients)
    body = "\n\n".join(
        [render_settings(), render_trials(trials), render_loads(loads), render_clients(clients)]
    )
    return Section("detection", "Health detection (issue 3)", body, warnings)


def disturbances(loads: list[Load], clients: list[ClientRun]) -> list[str]:
    """Say which figures other work on the machine may have disturbed."""
    found = []
    for load in loads:
        if load.schedule_pct < DISTURBED_SCHEDULE_PCT:
            found.append(
                f"at {load.masters:,} masters only {load.schedule_pct:.1f} % of due probes "
                "were done: something else was using the machine, re-run"
            )
        other = load.cpu["machine"] - load.cpu["prober"] - load.cpu["simulator"]
        if other > DISTURBED_OTHER_PCT:
            found.append(
                f"other processes used {other:.0f} % of a core while {load.masters:,} "
                "masters were measured"
            )
    for run in clients:
        other = run.cpu["machine"] - run.cpu["client"] - run.cpu["simulator"]
        if other > DISTURBED_OTHER_PCT:
            found.append(
                f"other processes used {other:.0f} % of a core during the HTTP client run "
                f"at concurrency {run.concurrency}"
            )
    return found


# --- setup ------------------------------------------------------------------------


def session_names(count: int) -> list[str]:
    return [f"s{i:04d}" for i in range(count)]


def create_masters(url: str, sessions: list[str]) -> list[int]:
    """Start from an empty database: default settings and one unprobed master per session."""
    reset_database()
    RuntimeSettings.objects.update_or_create(
        pk=1, defaults=settings.HA_DEFAULTS | {"health_check_interval_ms": INTERVAL_MS}
    )
    masters = Master.objects.bulk_create(
        Master(
            external_id=f"bench-{session}",
            phone_number=f"+1555{i:07d}",
            display_name=f"Bench {session}",
            role=Role.SECONDARY,
            gateway_url=url,
            gateway_session=session,
        )
        for i, session in enumerate(sessions)
    )
    return [master.pk for master in masters]


def unprobed_masters() -> int:
    probed = HealthCheck.objects.filter(master=OuterRef("pk"))
    return Master.objects.filter(~Exists(probed)).count()


def unhealthy_masters(ids: list[int]) -> int:
    return Master.objects.filter(pk__in=ids).exclude(health_status=HealthStatus.HEALTHY).count()


# --- 1. time to leave rotation ------------------------------------------------------


def measure_detection(ctx: Context, per_fault: int, warnings: list[str]) -> list[Trial]:
    """Break 2 x per_fault sessions, each at a random moment; time each master's exit."""
    interval_s = INTERVAL_MS / 1000
    sessions = session_names(2 * per_fault + BYSTANDERS)
    with ctx.phase():
        _, url = ctx.start_simulator("detection-simulator", sessions)
        ids = create_masters(url, sessions)
        ctx.start_prober("detection-prober")
        ctx.progress(f"detection: waiting for {len(ids)} masters to be healthy")
        ctx.wait_for(lambda: unhealthy_masters(ids) == 0, START_TIMEOUT_S, "every master healthy")
        trials = [
            Trial(ids[i], sessions[i], fault, random.uniform(0, interval_s))
            for i, fault in enumerate(["fail"] * per_fault + ["hang"] * per_fault)
        ]
        ctx.progress(f"detection: {len(trials)} faults within {interval_s:g} s, timing each")
        asyncio.run(run_trials(ctx, url, trials))
        if strays := unhealthy_masters(ids[2 * per_fault :]):
            warnings.append(f"{strays} of {BYSTANDERS} masters nobody broke left rotation too")
    return trials


async def run_trials(ctx: Context, url: str, trials: list[Trial]) -> None:
    db = ThreadPoolExecutor(max_workers=1, thread_name_prefix="bench-db")
    try:
        async with HttpClient(limit=len(trials) + 4) as http:
            start = time.monotonic()
            faults = [asyncio.create_task(inject(http, url, t, start)) for t in trials]
            try:
                await wait_for_exits(ctx, db, trials, faults, deadline=start + 40.0)
            finally:
                for task in faults:
                    task.cancel()
                await asyncio.gather(*faults, return_exceptions=True)
                await recover(http, url, trials)
    finally:
        db.submit(connections.close_all).result()
        db.shutdown()


async def inject(http: HttpClient, url: str, trial: Trial, start: float) -> None:
    await asyncio.sleep(max(0.0, start + trial.delay_s - time.monotonic()))
    trial.sent = True
    control = f"{url}/_sim/sessions/{trial.session}/{trial.fault}"
    response = await http.request("POST", control, timeout=5)
    trial.t0 = time.monotonic()
    if not response.ok:
        raise BenchError(f"POST {control} answered {response.status}: {response.text_preview()}")


async def wait_for_exits(
    ctx: Context,
    db: ThreadPoolExecutor,
    trials: list[Trial],
    faults: list[asyncio.Task],
    deadline: float,
) -> None:
    """Poll every POLL_S until each broken master is out of rotation; set its t1."""
    loop = asyncio.get_running_loop()
    pending = {trial.master_id: trial for trial in trials}
    while pending:
        for task in faults:
            if task.done() and not task.cancelled() and task.exception():
                raise task.exception()
        if time.monotonic() > deadline:
            left = ", ".join(sorted(t.session for t in pending.values()))
            raise BenchError(f"these masters stayed in rotation after their fault: {left}")
        statuses = await loop.run_in_executor(db, statuses_of, list(pending))
        now = time.monotonic()
        for master_id, status in statuses.items():
            trial = pending[master_id]
            if status == HealthStatus.HEALTHY or (trial.sent and trial.t0 is None):
                continue  # still in rotation, or its control call has not returned yet
            if not trial.sent:
                raise BenchError(f"{trial.session} left rotation ({status}) before its fault")
            trial.t1 = now
            del pending[master_id]
        ctx.check_running()
        await asyncio.sleep(POLL_S)


def statuses_of(ids: list[int]) -> dict[int, str]:
    return dict(Master.objects.filter(pk__in=ids).values_list("pk", "health_status"))


async def recover(http: HttpClient, url: str, trials: list[Trial]) -> None:
    """Put every broken session back to work (it also frees requests held by hang).

    Runs on the way out, maybe after another error: it warns rather than
    raises, so that error is the one reported.
    """
    for trial in trials:
        try:
            await http.request("POST", f"{url}/_sim/sessions/{trial.session}/recover", timeout=5)
        except HttpError as error:
            logger.warning("Could not recover simulator session %s: %s", trial.session, error)
            return


# --- 2. prober CPU and schedule ---------------------------------------------------------


def measure_load(ctx: Context, size: int, window_s: float) -> Load:
    """Run one prober over ``size`` masters; measure its CPU and probes over ``window_s``."""
    sessions = session_names(size)
    with ctx.phase():
        simulator, url = ctx.start_simulator(f"load-{size}-simulator", sessions)
        create_masters(url, sessions)
        prober = ctx.start_prober(f"load-{size}-prober")
        ctx.progress(f"load: waiting for the first probe of each of {size:,} masters")
        ctx.wait_for(lambda: unprobed_masters() == 0, START_TIMEOUT_S, "every master probed")
        ctx.sleep(1.0)  # past the first round's burst of unknown -> healthy events
        pids = {"prober": prober.pid, "simulator": simulator.pid}
        ctx.progress(f"load: measuring {size:,} masters for {window_s:g} s")
        before, w0 = CpuReading.take(pids), timezone.now()
        ctx.sleep(window_s)
        after, w1 = CpuReading.take(pids), timezone.now()
        # Results are written in the order probes finish: once one from after
        # the window is in, every probe of the window is.
        later = w1 + timedelta(seconds=0.5)
        ctx.wait_for(
            lambda: HealthCheck.objects.filter(checked_at__gte=later).exists(),
            15.0,
            "the window's probes to be written",
        )
        done = HealthCheck.objects.filter(checked_at__gte=w0, checked_at__lt=w1).count()
    return Load(size, (w1 - w0).total_seconds(), cpu_percent(before, after), done)


# --- 3. the HTTP client -----------------------------------------------------------------


def measure_client(ctx: Context, seconds: float) -> list[ClientRun]:
    sessions = session_names(max(CONCURRENCIES))
    with ctx.phase():
        simulator, url = ctx.start_simulator("client-simulator", sessions)
        runs = []
        for concurrency in CONCURRENCIES:
            ctx.progress(f"client: {concurrency} concurrent GETs for {seconds:g} s")
            runs.append(asyncio.run(hammer(url, sessions, concurrency, seconds, simulator.pid)))
            ctx.check_running()
    return runs


async def hammer(
    url: str, sessions: list[str], concurrency: int, seconds: float, simulator_pid: int
) -> ClientRun:
    """GET /api/sessions/<s> from ``concurrency`` workers on one HttpClient for ``seconds``."""
    result = ClientRun(concurrency, seconds)
    async with HttpClient(limit=concurrency) as http:

        async def worker(index: int, until: float, record: bool) -> None:
            target = f"{url}/api/sessions/{sessions[index % len(sessions)]}"
            while time.monotonic() < until:
                started = time.perf_counter()
                try:
                    response = await http.request("GET", target, timeout=5)
                    ok = response.ok
                except HttpError:
                    ok = False
                if record:
                    result.latencies_ms.append((time.perf_counter() - started) * 1000)
                    result.errors += not ok

        async def burst(duration: float, record: bool) -> None:
            until = time.monotonic() + duration
            await asyncio.gather(*(worker(i, until, record) for i in range(concurrency)))

        await burst(0.5, record=False)  # open the pool's connections first
        pids = {"simulator": simulator_pid, "client": os.getpid()}
        before = CpuReading.take(pids)
        await burst(seconds, record=True)
        after = CpuReading.take(pids)
        result.seconds = after.wall - before.wall
        result.cpu = cpu_percent(before, after)
    return result


# --- the report -------------------------------------------------------------------------


def render_settings() -> str:
    health = settings.HEALTH
    return (
        f"Settings: probe interval {INTERVAL_MS / 1000:g} s, probe timeout "
        f"{min(health['timeout_ms'], 0.8 * INTERVAL_MS) / 1000:g} s, confirm interval "
        f"{health['confirm_interval_ms'] / 1000:g} s, fall threshold {health['fall']} "
        "(the defaults). One prober process, one simulator process, PostgreSQL, all on "
        "this machine; processes run with DEBUG off, as in production."
    )


def render_trials(trials: list[Trial]) -> str:
    rows = []
    for fault, name in FAULT_NAMES.items():
        seconds = [t.seconds for t in trials if t.fault == fault]
        p95, goal = percentile(seconds, 95), GOALS_P95_S[fault]
        rows.append(
            [
                name,
                str(len(seconds)),
                f"{percentile(seconds, 50):.2f} s",
                f"{p95:.2f} s",
                f"{max(seconds):.2f} s",
                f"p95 ≤ {goal:g} s",
                verdict(p95 <= goal),
            ]
        )
    headers = ["fault", "trials", "p50", "p95", "max", "goal", "verdict"]
    return (
        "### Time from a session failing to its master leaving rotation\n\n"
        f"{table(headers, rows)}\n\n"
        "Each trial breaks its own session through the simulator's control endpoint "
        "after a random delay (uniform within one interval) and times from the control "
        "call's answer to the first poll (every 10 ms) that finds the master no longer "
        "healthy. A crash is seen by the next probe (0 to 5 s later); a hang needs that "
        "probe to time out (2 s) on top."
    )


def render_loads(loads: list[Load]) -> str:
    baseline = loads[0]
    rows = []
    for load in loads:
        goal, met = "baseline", "—"
        if load is not baseline:
            goal = f"< {GOAL_CPU_PCT:g} % of a core, ≥ {GOAL_SCHEDULE_PCT:g} % on schedule"
            met = verdict(
                load.cpu["prober"] < GOAL_CPU_PCT and load.schedule_pct >= GOAL_SCHEDULE_PCT
            )
        rows.append(
            [
                f"{load.masters:,}",
                f"{load.cpu['prober']:.1f} %",
                f"{load.cpu_ms_per_probe:.2f} ms",
                f"{load.probes_done:,} / {load.probes_due:,.0f}",
                f"{load.schedule_pct:.1f} %",
                f"{load.cpu['simulator']:.1f} %",
                f"{load.cpu['machine']:.0f} %",
                goal,
                met,
            ]
        )
    headers = [
        "masters",
        "prober CPU (one core)",
        "CPU per probe",
        "probes done / due",
        "on schedule",
        "simulator CPU",
        "machine CPU (all)",
        "goal",
        "verdict",
    ]
    ratios = [
        f"{load.cpu_ms_per_probe / baseline.cpu_ms_per_probe:.2f} times at {load.masters:,}"
        for load in loads[1:]
    ]
    return (
        f"### Prober CPU and schedule at the {INTERVAL_MS / 1000:g}-second interval "
        f"({baseline.window_s:.0f} s window)\n\n"
        f"{table(headers, rows)}\n\n"
        f"CPU per probe against the {baseline.masters:,}-master baseline: {', '.join(ratios)}. "
        "Prober CPU is the process's user + system time (/proc/<pid>/stat) over the "
        "window's wall time; probes done are the HealthCheck rows checked in the window; "
        "due is masters x window / interval. Machine CPU counts every process "
        "(PostgreSQL, the benchmark, anything else running) out of "
        f"{100 * len(os.sched_getaffinity(0))} %."
    )


def render_clients(runs: list[ClientRun]) -> str:
    rows = [
        [
            str(run.concurrency),
            f"{len(run.latencies_ms):,}",
            f"{len(run.latencies_ms) / run.seconds:,.0f}",
            f"{percentile(run.latencies_ms, 50):.1f} ms",
            f"{percentile(run.latencies_ms, 99):.1f} ms",
            str(run.errors),
            f"{run.cpu['simulator']:.0f} %",
            f"{run.cpu['client']:.0f} %",
            f"{run.cpu['machine']:.0f} %",
        ]
        for run in runs
    ]
    headers = [
        "concurrency",
        "requests",
        "req/s",
        "p50",
        "p99",
        "errors",
        "simulator CPU",
        "client CPU",
        "machine CPU (all)",
    ]
    return (
        "### HTTP client against the simulator (context)\n\n"
        f"{table(headers, rows)}\n\n"
        f"`ha_portal.lib.http.HttpClient` (aiohttp) sending `GET /api/sessions/<s>` to the "
        f"simulator process for {runs[0].seconds:.0f} s per row, after a 0.5 s warm-up. "
        "Client and simulator are single Python processes sharing this machine's cores: "
        "whichever sits near 100 % is the limit."
    )
