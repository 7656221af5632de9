"""Dashboard push latency (issue 6): a state change committed -> the row changed in a browser.

Two deployments, each with two daphne web processes (as the Procfile runs
them) and one headless Chromium page open on each:

1. PostgreSQL (the bench database) with Redis configured, as in production;
2. the embedded default: SQLite in a file of its own, no Redis.

This process commits state changes the way an operator's action does
(``Master.start_maintenance`` / ``end_maintenance``: the row and its Event in
one transaction), at random moments, and each page records (a
MutationObserver, the browser's clock) when the changed master's row shows
the new status. Latency is that moment minus the moment the commit returned.
Browser and processes share this machine's clock.
"""

from __future__ import annotations

import asyncio
import random
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.db import connections

from ha_portal.lib.env import database_from_url
from masters.choices import HealthStatus, Role
from masters.models import Master
from monitoring.bench.harness import (
    START_TIMEOUT_S,
    WEB_READY,
    BenchError,
    BenchProcess,
    Context,
    percentile,
    reset_database,
    use_default_database,
)
from monitoring.bench.report import Section, table, verdict
from monitoring.roles import VIEWER, grant

CHROMIUM = Path("/usr/bin/chromium")
WEB_PROCESSES = 2
MASTERS = 5
CHANGES, QUICK_CHANGES = 60, 10
# Changes come at random moments, so they land anywhere in the feed's poll cycle.
PAUSE_S = (0.05, 0.3)
GOALS_P95_MS = {"postgres": 250.0, "embedded": 1000.0}
USER, PASSWORD = "bench-viewer", "bench-viewer-password"

# window.seen: a promise of when the row first shows the status, in the browser's clock
# (ms since the epoch). Evaluated over the DevTools protocol, so the page's CSP allows it.
WATCH_ROW = """([id, health]) => {
  window.seen = new Promise((resolve) => {
    const observer = new MutationObserver(() => {
      const row = document.getElementById(id);
      if (row && row.dataset.health === health) {
        observer.disconnect();
        resolve(Date.now());
      }
    });
    observer.observe(document.body, {subtree: true, childList: true, attributes: true});
  });
}"""
SEEN_TIMEOUT_S = 10.0


@dataclass
class Deployment:
    key: str
    name: str
    latencies_ms: list[float] = field(default_factory=list)
    # "Exception inside application" in the web processes' logs: a socket dropped.
    crashes: int = 0

    @property
    def goal_ms(self) -> float:
        return GOALS_P95_MS[self.key]


def run(ctx: Context) -> Section:
    """Measure push latency on PostgreSQL + Redis and on the embedded default."""
    if not CHROMIUM.exists():
        raise BenchError(f"{CHROMIUM} is missing: apt-get install -y chromium")
    # Production settings (DEBUG off) serve static files (htmx) from STATIC_ROOT.
    call_command("collectstatic", interactive=False, verbosity=0)
    changes = QUICK_CHANGES if ctx.quick else CHANGES
    redis_url = settings.REDIS_URL or "redis://127.0.0.1:6379/0"
    postgres = Deployment("postgres", "PostgreSQL + Redis")
    embedded = Deployment("embedded", "embedded default (SQLite, no Redis)")
    with ctx.phase():
        reset_database()
        measure(ctx, postgres, {"REDIS_URL": redis_url}, changes)
    with ctx.phase(), embedded_database(ctx) as url:
        measure(ctx, embedded, {"DATABASE_URL": url, "REDIS_URL": ""}, changes)
    deployments = [postgres, embedded]
    warnings = [
        f"{d.name}: p95 {percentile(d.latencies_ms, 95):.0f} ms is over the goal"
        for d in deployments
        if percentile(d.latencies_ms, 95) > d.goal_ms
    ] + [
        f"{d.name}: {d.crashes} application errors in the web logs ({ctx.log_dir}): "
        "sockets dropped and reconnected during the run"
        for d in deployments
        if d.crashes
    ]
    return Section("dashboard", "Dashboard push latency (issue 6)", render(deployments), warnings)


@contextmanager
def embedded_database(ctx: Context) -> Iterator[str]:
    """Point this process at a fresh SQLite file, migrated; yield its URL; point back after."""
    path = ctx.log_dir / "dashboard-embedded.sqlite3"
    ctx.log_dir.mkdir(parents=True, exist_ok=True)
    for leftover in path.parent.glob(path.name + "*"):
        leftover.unlink()
    url = f"sqlite:///{path}"
    use_default_database(database_from_url("DATABASE_URL", url))
    try:
        call_command("migrate", verbosity=0, interactive=False)
        yield url
    finally:
        use_default_database(database_from_url("BENCH_DATABASE_URL", ctx.database_url))


def measure(ctx: Context, deployment: Deployment, env: dict[str, str], changes: int) -> None:
    """Start the web processes, open a page on each, time ``changes`` pushes to both."""
    masters = create_rows()
    webs = [
        start_web(ctx, f"dashboard-{deployment.key}-web-{i}", env)
        for i in range(1, WEB_PROCESSES + 1)
    ]
    ctx.progress(f"dashboard: {deployment.name}, {changes} changes seen on {len(webs)} pages")
    deployment.latencies_ms = asyncio.run(time_pushes([url for _, url in webs], masters, changes))
    ctx.check_running()
    deployment.crashes = sum(
        process.log_path.read_text(errors="replace").count("Exception inside application")
        for process, _ in webs
    )


def create_rows() -> list[int]:
    """A viewer and MASTERS healthy masters without gateways (nothing probes them)."""
    user = get_user_model().objects.create_user(USER, password=PASSWORD)
    grant(user, VIEWER)
    masters = Master.objects.bulk_create(
        Master(
            external_id=f"bench-live-{i}",
            phone_number=f"+1555{i:07d}",
            display_name=f"Bench live {i}",
            role=Role.SECONDARY,
            health_status=HealthStatus.HEALTHY,
        )
        for i in range(MASTERS)
    )
    connections.close_all()  # the pushes are timed from another thread
    return [master.pk for master in masters]


def start_web(ctx: Context, label: str, env: dict[str, str]) -> tuple[BenchProcess, str]:
    """Start one daphne process with ``env`` on top of the run's; return it and its URL."""
    command = [sys.executable, "-m", "daphne", "-b", "127.0.0.1", "-p", "0"]
    # As the Procfile runs web processes; plain http on loopback, so no secure cookies.
    extra = env | {"CONN_MAX_AGE": "0", "SECURE_COOKIES": "0"}
    process = ctx.spawn(label, [*command, "ha_portal.asgi:application"], env=extra)
    match = ctx.wait_for(
        lambda: WEB_READY.search(process.log_path.read_text(errors="replace")),
        START_TIMEOUT_S,
        f"{label} to listen (see {process.log_path})",
    )
    return process, f"http://{match.group(1)}"


async def time_pushes(urls: list[str], masters: list[int], changes: int) -> list[float]:
    """Commit ``changes`` changes; return, per change and page, commit -> DOM in ms."""
    from playwright.async_api import async_playwright

    db = ThreadPoolExecutor(max_workers=1, thread_name_prefix="bench-db")
    loop = asyncio.get_running_loop()
    rng = random.Random(6)
    latencies: list[float] = []
    try:
        async with async_playwright() as playwright:
            browser = await playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True)
            pages = [await open_dashboard(browser, url) for url in urls]
            for n in range(changes):
                master_id = masters[n % len(masters)]
                row, status = await loop.run_in_executor(db, next_state, master_id)
                for page in pages:
                    await page.evaluate(WATCH_ROW, [row, status])
                await asyncio.sleep(rng.uniform(*PAUSE_S))
                committed_ms = await loop.run_in_executor(db, toggle, master_id)
                for page in pages:
                    seen = await asyncio.wait_for(page.evaluate("window.seen"), SEEN_TIMEOUT_S)
                    latencies.append(seen - committed_ms)
            await browser.close()
    finally:
        db.submit(connections.close_all).result()
        db.shutdown()
    return latencies


async def open_dashboard(browser, url: str):
    page = await browser.new_page()
    await page.goto(f"{url}/login/")
    await page.fill("#id_username", USER)
    await page.fill("#id_password", PASSWORD)
    await page.click("button[type=submit]")
    await page.wait_for_url(f"{url}/")
    await page.wait_for_selector("#live-status.live")
    return page


def next_state(master_id: int) -> tuple[str, str]:
    """The row's id and the status the next toggle gives it."""
    status = Master.objects.values_list("health_status", flat=True).get(pk=master_id)
    after = HealthStatus.UNKNOWN if status == HealthStatus.MAINTENANCE else HealthStatus.MAINTENANCE
    return f"master-{master_id}", after


def toggle(master_id: int) -> float:
    """Start or end maintenance (one transaction with its Event); return when it committed."""
    master = Master.objects.get(pk=master_id)
    if master.health_status == HealthStatus.MAINTENANCE:
        master.end_maintenance(reason="bench")
    else:
        master.start_maintenance(reason="bench")
    return time.time() * 1000


def render(deployments: list[Deployment]) -> str:
    rows = [
        [
            d.name,
            str(len(d.latencies_ms)),
            f"{percentile(d.latencies_ms, 50):.0f} ms",
            f"{percentile(d.latencies_ms, 95):.0f} ms",
            f"{max(d.latencies_ms):.0f} ms",
            f"p95 ≤ {d.goal_ms:.0f} ms",
            verdict(percentile(d.latencies_ms, 95) <= d.goal_ms),
        ]
        for d in deployments
    ]
    headers = ["deployment", "pushes timed", "p50", "p95", "max", "goal", "verdict"]
    return (
        "### From a committed state change to the row changed in the browser\n\n"
        f"{table(headers, rows)}\n\n"
        f"{WEB_PROCESSES} daphne web processes per deployment (the embedded one on a SQLite "
        "file in var/bench, not the database above), DEBUG off, one headless "
        "Chromium page logged in on each; every change is timed on both pages. This "
        f"process toggles maintenance on one of {MASTERS} masters at a random moment "
        f"({PAUSE_S[0] * 1000:.0f}-{PAUSE_S[1] * 1000:.0f} ms apart); each web process's "
        "feed polls the event log every 100 ms, reads the dashboard once and pushes the "
        "changed parts to its own sockets (no channel layer). Latency runs from the "
        "commit's return to a MutationObserver seeing the row's new status."
    )
