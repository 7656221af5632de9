"""Injecting the faults: the simulator's controls, SIGKILL, and server restarts.

Each injection returns what it did and when (wall-clock, comparable with the
database's timestamps and the simulator's delivery log). A fault that could
not be injected is recorded with its error, never silently skipped.
"""

from __future__ import annotations

import asyncio
import logging
import random
import subprocess
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import urlsplit

from django.db import DatabaseError, close_old_connections

from ha_portal.lib.http import HttpClient, HttpError
from masters.models import ProberLease
from monitoring.chaos.fleet import Fleet, children
from monitoring.chaos.schedule import SESSION_ACTIONS, Fault, FaultKind

logger = logging.getLogger(__name__)

T = TypeVar("T")

CONTROL_TIMEOUT_S = 10.0
SERVER_TIMEOUT_S = 60.0


@dataclass
class Injection:
    """What happened to one scheduled fault."""

    fault: Fault
    at: float  # time.time() when the fault took effect
    done_at: float  # when the injection returned (a restart takes seconds)
    detail: str = ""
    error: str = ""
    healed_at: float | None = None


def postgres_cluster(listing: str, port: int) -> tuple[str, str] | None:
    """Return (version, name) of the cluster on ``port`` in ``pg_lsclusters --no-header`` output."""
    for line in listing.splitlines():
        fields = line.split()
        if len(fields) >= 3 and fields[2] == str(port):
            return fields[0], fields[1]
    return None


def redis_commands(url: str) -> tuple[list[str], list[str]]:
    """Return the commands that stop Redis (losing its data) and start it empty again."""
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", str(parts.port or 6379)
    stop = ["redis-cli", "-h", host, "-p", port, "shutdown", "nosave"]
    start = ["redis-server", "--daemonize", "yes", "--bind", host, "--port", port]
    return stop, [*start, "--save", "", "--appendonly", "no"]


class Injector:
    """Apply faults and heal them; holds what every injection needs."""

    def __init__(
        self,
        http: HttpClient,
        simulator_url: str,
        fleet: Fleet,
        database: dict[str, Any],
        redis_url: str,
        seed: int,
    ) -> None:
        self.http, self.simulator_url = http, simulator_url
        self.fleet = fleet
        self.database, self.redis_url = database, redis_url
        self.rng = random.Random(seed)  # which worker a kill-qworker picks
        self.db_thread = ThreadPoolExecutor(1, thread_name_prefix="chaos-inject-db")

    async def inject(self, fault: Fault) -> Injection:
        at = time.time()
        try:
            detail = await self._apply(fault)
            error = ""
        except (HttpError, OSError, subprocess.SubprocessError, RuntimeError) as failure:
            detail, error = "", f"{type(failure).__name__}: {failure}"
            logger.warning("fault #%s (%s) failed: %s", fault.index, fault.kind, error)
        return Injection(fault, at, time.time(), detail, error)

    async def heal(self, injection: Injection) -> None:
        """Recover the fault's session (session faults only).

        The heal is timed when asked for: the simulator switches as the
        request arrives, so a delivery after this moment is not "while faulted".
        """
        healed_at = time.time()
        await self.control(injection.fault.target, "recover")
        injection.healed_at = healed_at

    async def control(self, session: str, verb: str, body: dict[str, int] | None = None) -> None:
        url = f"{self.simulator_url}/_sim/sessions/{session}/{verb}"
        response = await self.http.request("POST", url, json=body or {}, timeout=CONTROL_TIMEOUT_S)
        if not response.ok:
            raise RuntimeError(f"{url} answered {response.status}: {response.text_preview()}")

    async def _apply(self, fault: Fault) -> str:
        kind = fault.kind
        if kind in SESSION_ACTIONS:
            body = {"delay_ms": fault.param} if kind is FaultKind.SESSION_SLOW else {}
            if kind is FaultKind.SESSION_FLAP:
                body = {"period_ms": fault.param}
            await self.control(fault.target, SESSION_ACTIONS[kind], body)
            return f"{fault.target} is {SESSION_ACTIONS[kind]}"
        if kind is FaultKind.KILL_PROBER:
            return await self._on_fleet(self.fleet.kill, await self._active_prober())
        if kind is FaultKind.KILL_QWORKER:
            return await self._on_fleet(self._kill_qworker, fault.target)
        if kind in (FaultKind.KILL_DISPATCHER, FaultKind.KILL_WEB, FaultKind.KILL_QCLUSTER):
            return await self._on_fleet(self.fleet.kill, fault.target)
        if kind is FaultKind.RESTART_POSTGRES:
            return await asyncio.to_thread(self._restart_postgres)
        if kind is FaultKind.RESTART_REDIS:
            return await asyncio.to_thread(self._restart_redis)
        raise RuntimeError(f"no injector for {kind}")

    async def _on_fleet(self, function: Callable[..., T], *args: Any) -> T:
        # On the fleet's thread: see Fleet.
        return await asyncio.get_running_loop().run_in_executor(self.fleet.thread, function, *args)

    async def _active_prober(self) -> str:
        """Name the slot of the prober holding the lease (prober-1 if none can be read)."""
        holder = await asyncio.get_running_loop().run_in_executor(self.db_thread, lease_holder)
        slot = (holder or "").split(".r")[0]
        return slot if slot in self.fleet.slots else self.fleet.of_kind("prober")[0].name

    def _kill_qworker(self, slot: str) -> str:
        """Kill one process under the cluster's sentinel (a worker, the pusher or the monitor)."""
        main = self.fleet.slots[slot].process.pid
        sentinels = children(main)
        workers = [pid for sentinel in sentinels for pid in children(sentinel)]
        if not workers:
            raise RuntimeError(f"{slot} has no worker processes to kill")
        return self.fleet.kill_one(slot, self.rng.choice(workers))

    def _restart_postgres(self) -> str:
        listing = run(["pg_lsclusters", "--no-header"]).stdout
        port = int(self.database.get("PORT") or 5432)
        cluster = postgres_cluster(listing, port)
        if cluster is None:
            raise RuntimeError(f"no PostgreSQL cluster on port {port} in pg_lsclusters")
        started = time.monotonic()
        run(["pg_ctlcluster", "--skip-systemctl-redirect", *cluster, "restart"])
        host = self.database.get("HOST") or "127.0.0.1"
        wait_until_ok(["pg_isready", "-q", "-h", host, "-p", str(port)])
        return f"cluster {'/'.join(cluster)} restarted in {time.monotonic() - started:.1f} s"

    def _restart_redis(self) -> str:
        stop, start = redis_commands(self.redis_url)
        started = time.monotonic()
        run(stop, check=False)  # it answers nothing when it goes down
        ping = [*stop[:5], "ping"]
        wait_until_ok(ping, want_failure=True)
        run(start)
        wait_until_ok(ping)
        return f"Redis restarted empty in {time.monotonic() - started:.1f} s"


def lease_holder() -> str | None:
    """Return the prober lease's holder, or None when the database cannot say."""
    close_old_connections()
    try:
        lease = ProberLease.objects.filter(name="prober").first()
    except DatabaseError:
        return None
    return lease.holder if lease else None


def run(argv: list[str], *, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run(argv, capture_output=True, text=True, timeout=SERVER_TIMEOUT_S)
    if check and result.returncode != 0:
        output = (result.stderr or result.stdout).strip()
        raise RuntimeError(f"{' '.join(argv)} exited with {result.returncode}: {output}")
    return result


def wait_until_ok(argv: list[str], *, want_failure: bool = False) -> None:
    """Poll ``argv`` until it succeeds (or fails, with ``want_failure``) within SERVER_TIMEOUT_S."""
    deadline = time.monotonic() + SERVER_TIMEOUT_S
    while time.monotonic() < deadline:
        result = subprocess.run(argv, capture_output=True, text=True, timeout=10)
        ok = result.returncode == 0 and "Could not connect" not in result.stdout
        if ok != want_failure:
            return
        time.sleep(0.1)
    raise RuntimeError(f"{' '.join(argv)} did not {'fail' if want_failure else 'succeed'} in time")
