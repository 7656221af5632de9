"""What every benchmark section shares: its database, its processes, CPU readings, percentiles.

The benchmark runs against a database of its own (``BENCH_DATABASE_URL``,
by default ``ha_bench`` on the local PostgreSQL), flushed at the start, and
starts the simulator and probers as real processes on that database, as in
production. Every wait has a deadline and every process is stopped at the
end, whatever happened.
"""

from __future__ import annotations

import ctypes
import logging
import math
import os
import platform
import re
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

import psycopg
from django.conf import settings
from django.core.management import call_command
from django.db import connections
from psycopg import sql

from ha_portal.lib.env import database_from_url

logger = logging.getLogger(__name__)

T = TypeVar("T")

BASE_DIR: Path = settings.BASE_DIR
LOG_DIR = BASE_DIR / "var" / "bench"
DEFAULT_DATABASE_URL = "postgres://postgres@127.0.0.1:5432/ha_bench"
# Held (pg_try_advisory_lock) for the whole run: two runs would flush each other's rows.
LOCK_KEY = 0x4A_BE_4C
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
STOP_TIMEOUT_S = 10.0
START_TIMEOUT_S = 30.0
SIMULATOR_READY = re.compile(r"listening on (http://\S+)")
WEB_READY = re.compile(r"Listening on TCP address (127\.0\.0\.1:\d+)")


class BenchError(Exception):
    """The benchmark cannot go on; the message says why and where to look."""


# --- the bench database -----------------------------------------------------------


def bench_database_url() -> str:
    return os.environ.get("BENCH_DATABASE_URL") or DEFAULT_DATABASE_URL


def redact(url: str) -> str:
    """Return the URL with its password replaced, for the report and messages."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))


def connect_params(conf: Mapping[str, Any], dbname: str) -> dict[str, Any]:
    params = {
        "host": conf["HOST"] or "127.0.0.1",
        "port": conf["PORT"] or "5432",
        "user": conf["USER"] or None,
        "password": conf["PASSWORD"] or None,
        "dbname": dbname,
        "connect_timeout": 5,
        "autocommit": True,
    }
    return {key: value for key, value in params.items() if value is not None}


@contextmanager
def bench_database(url: str) -> Iterator[str]:
    """Create (if missing), migrate and flush the bench database, and use it; yield its version.

    The process's default connection is pointed at it before anything is
    queried, the way Django's test runner points it at the test database,
    so the developer's own database is never touched.
    """
    conf = database_from_url("BENCH_DATABASE_URL", url)
    if not conf["ENGINE"].endswith("postgresql"):
        raise BenchError(f"BENCH_DATABASE_URL must be a postgres:// URL, not {redact(url)}")
    if is_same_database(conf, settings.DATABASES["default"]):
        raise BenchError(
            f"BENCH_DATABASE_URL ({redact(url)}) is the portal's own database: "
            "the benchmark flushes its database, so give it another one"
        )
    try:
        create_database_if_missing(conf)
        lock = psycopg.connect(**connect_params(conf, conf["NAME"]))
    except psycopg.OperationalError as error:
        raise BenchError(f"cannot reach the bench database {redact(url)}: {error}") from error
    with lock:
        if not lock.execute("SELECT pg_try_advisory_lock(%s)", [LOCK_KEY]).fetchone()[0]:
            raise BenchError(f"another ha_bench is running against {redact(url)}")
        version = lock.execute("SHOW server_version").fetchone()[0]
        use_default_database(conf)
        try:
            call_command("migrate", verbosity=0, interactive=False)
            reset_database()
            yield f"PostgreSQL {version.split()[0]}"
        finally:
            connections.close_all()


def is_same_database(a: Mapping[str, Any], b: Mapping[str, Any]) -> bool:
    def key(conf: Mapping[str, Any]) -> tuple[str, str, str, str]:
        host = conf.get("HOST") or "127.0.0.1"
        host = "127.0.0.1" if host == "localhost" else host
        return (conf["ENGINE"], host, str(conf.get("PORT") or "5432"), str(conf["NAME"]))

    return key(a) == key(b)


def create_database_if_missing(conf: Mapping[str, Any]) -> None:
    with psycopg.connect(**connect_params(conf, "postgres")) as admin:
        exists = admin.execute(
            "SELECT 1 FROM pg_database WHERE datname = %s", [conf["NAME"]]
        ).fetchone()
        if not exists:
            logger.info("Creating the bench database %s", conf["NAME"])
            admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(conf["NAME"])))


def use_default_database(conf: Mapping[str, Any]) -> None:
    """Point the default alias at ``conf`` for this process (every thread opens it afresh)."""
    connections.close_all()
    # The handler builds connections from this dict, which also holds the
    # defaults Django filled in (ATOMIC_REQUESTS, TIME_ZONE, ...): update it in place.
    connections.settings["default"].update(conf)
    with suppress(AttributeError):  # this thread never opened it
        del connections["default"]


def reset_database() -> None:
    """Empty every table of the bench database (the processes using it must be stopped)."""
    call_command("flush", verbosity=0, interactive=False)


# --- processes --------------------------------------------------------------------

_prctl: Callable[..., int] | None = None
PR_SET_PDEATHSIG = 1


def _load_prctl() -> Callable[..., int] | None:
    # Loaded before any fork: the child may only call it, not import or load.
    global _prctl
    if _prctl is None and sys.platform == "linux":
        _prctl = ctypes.CDLL("libc.so.6", use_errno=True).prctl
    return _prctl


def _die_with_parent() -> None:
    # Runs in the child before exec: if the benchmark itself is killed
    # (SIGKILL, a crash), the kernel stops the child too instead of orphaning it.
    if _prctl is not None:
        _prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


@dataclass
class BenchProcess:
    """One subprocess the benchmark started, with its output in a log file."""

    label: str
    popen: subprocess.Popen
    log_path: Path
    log_file: IO[bytes]

    @property
    def pid(self) -> int:
        return self.popen.pid

    def cpu_seconds(self) -> float:
        return process_cpu_seconds(self.pid)

    def log_tail(self, lines: int = 15) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def check_running(self) -> None:
        code = self.popen.poll()
        if code is not None:
            raise BenchError(
                f"{self.label} exited with code {code}; the end of {self.log_path}:\n"
                f"{self.log_tail()}"
            )

    def stop(self) -> None:
        """Ask the process to stop (SIGTERM), kill it if it does not within STOP_TIMEOUT_S.

        Then stop what it started and left behind (a qcluster's sentinel and
        workers outlive it): they share the process group the run made for it.
        """
        if self.popen.poll() is None:
            self.popen.terminate()
            try:
                self.popen.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                logger.warning("%s ignored SIGTERM for %gs: killing it", self.label, STOP_TIMEOUT_S)
                self.popen.kill()
                self.popen.wait(STOP_TIMEOUT_S)
        self.stop_leftovers()
        self.log_file.close()

    def stop_leftovers(self) -> None:
        for signum in (signal.SIGTERM, signal.SIGKILL):
            if not group_members(self.pid):
                return
            logger.info("%s left processes behind: sending them %s", self.label, signum.name)
            with suppress(ProcessLookupError):
                os.killpg(self.pid, signum)
            deadline = time.monotonic() + STOP_TIMEOUT_S
            while group_members(self.pid) and time.monotonic() < deadline:
                time.sleep(0.05)


@dataclass
class Context:
    """What a section's ``run(ctx)`` gets: options, its processes, waits with deadlines."""

    database_url: str
    quick: bool = False
    log_dir: Path = LOG_DIR
    progress: Callable[[str], None] = logger.info
    processes: list[BenchProcess] = field(default_factory=list)

    def environment(self) -> dict[str, str]:
        """The environment of every process: the bench database, production-like logging."""
        return os.environ | {
            "DATABASE_URL": self.database_url,
            "HA_DEV": "1",
            # HA_DEV turns DEBUG on, which records every query: not what production pays.
            "DJANGO_DEBUG": "0",
            "PYTHONUNBUFFERED": "1",
        }

    def start(
        self, label: str, *command: str, env: Mapping[str, str] | None = None
    ) -> BenchProcess:
        """Start ``manage.py <command>`` with its output in var/bench/<label>.log."""
        return self.spawn(label, [sys.executable, "manage.py", *command], env)

    def spawn(
        self, label: str, argv: Sequence[str], env: Mapping[str, str] | None = None
    ) -> BenchProcess:
        """Start ``argv`` in the checkout with the run's environment plus ``env``, logged."""
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log_path = self.log_dir / f"{label}.log"
        log_file = log_path.open("wb")
        _load_prctl()
        popen = subprocess.Popen(
            list(argv),
            cwd=BASE_DIR,
            env=self.environment() | dict(env or {}),
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            # Its own process group: Ctrl-C reaches the benchmark only, which
            # then stops its processes in order.
            process_group=0,
            preexec_fn=_die_with_parent,
        )
        process = BenchProcess(label, popen, log_path, log_file)
        self.processes.append(process)
        return process

    def start_simulator(self, label: str, sessions: Sequence[str]) -> tuple[BenchProcess, str]:
        """Start the WAHA simulator on a free port; return it and its URL once it listens."""
        process = self.start(label, "ha_simulator", "--port", "0", "--sessions", ",".join(sessions))
        match = self.wait_for(
            lambda: SIMULATOR_READY.search(process.log_path.read_text(errors="replace")),
            START_TIMEOUT_S,
            f"{label} to listen (see {process.log_path})",
        )
        return process, match.group(1)

    def start_prober(self, label: str) -> BenchProcess:
        return self.start(label, "ha_prober", "--name", label)

    def start_web(self, label: str) -> tuple[BenchProcess, str]:
        """Start one daphne process serving the portal on a free port; return it and its URL."""
        argv = [sys.executable, "-m", "daphne", "-b", "127.0.0.1", "-p", "0"]
        # As the Procfile runs web processes: no persistent connections.
        process = self.spawn(
            label, [*argv, "ha_portal.asgi:application"], env={"CONN_MAX_AGE": "0"}
        )
        match = self.wait_for(
            lambda: WEB_READY.search(process.log_path.read_text(errors="replace")),
            START_TIMEOUT_S,
            f"{label} to listen (see {process.log_path})",
        )
        return process, f"http://{match.group(1)}"

    def check_running(self) -> None:
        for process in self.processes:
            process.check_running()

    def wait_for(
        self, condition: Callable[[], T], timeout: float, what: str, interval: float = 0.05
    ) -> T:
        """Return the condition's first truthy value; raise BenchError after ``timeout`` seconds.

        Fails at once, with the end of its log, if a process the run started has exited.
        """
        deadline = time.monotonic() + timeout
        while True:
            value = condition()
            if value:
                return value
            self.check_running()
            if time.monotonic() >= deadline:
                raise BenchError(f"timed out after {timeout:g} s waiting for {what}")
            time.sleep(interval)

    def sleep(self, seconds: float) -> None:
        """Sleep, checking once a second that the run's processes still live."""
        end = time.monotonic() + seconds
        while (left := end - time.monotonic()) > 0:
            time.sleep(min(left, 1.0))
            self.check_running()

    @contextmanager
    def phase(self) -> Iterator[None]:
        """Stop the processes started inside the block when it ends, however it ends."""
        mark = len(self.processes)
        try:
            yield
        finally:
            self.stop_all(since=mark)

    def stop_all(self, since: int = 0) -> None:
        """Stop processes (the newest first), then forget them."""
        started = self.processes[since:]
        del self.processes[since:]
        for process in reversed(started):
            process.stop()


# --- CPU --------------------------------------------------------------------------


def process_cpu_seconds(pid: int) -> float:
    """Return the user + system CPU seconds of a process (all its threads), from /proc."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError as error:
        raise BenchError(f"cannot read the CPU time of process {pid}: {error}") from error
    # The command name (field 2) is in parentheses and may hold spaces:
    # count from the last ')'. utime and stime are fields 14 and 15.
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def group_members(pgid: int) -> list[int]:
    """Return the live (not zombie) processes in a process group, from /proc."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with suppress(OSError, ValueError, IndexError):
            text = stat.read_text()
            state, _ppid, group = text[text.rindex(")") + 2 :].split()[:3]
            if int(group) == pgid and state != "Z":
                found.append(int(stat.parent.name))
    return found


def process_tree_cpu_seconds(pid: int) -> float:
    """Return the CPU seconds of a process and its live descendants (a qcluster and its workers)."""
    parents: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with suppress(OSError, ValueError, IndexError):
            text = stat.read_text()
            parents[int(stat.parent.name)] = int(text[text.rindex(")") + 2 :].split()[1])
    tree, frontier = {pid}, [pid]
    while frontier:
        parent = frontier.pop()
        children = [child for child, ppid in parents.items() if ppid == parent]
        tree.update(children)
        frontier += children
    total = 0.0
    for member in tree:
        with suppress(BenchError):  # exited since the scan
            total += process_cpu_seconds(member)
    return total


def postgres_cpu_seconds() -> float:
    """Return the CPU seconds PostgreSQL has used: its processes, and backends that exited.

    A backend that exits (its connection closed) is reaped by the server
    process, whose cutime and cstime then hold its seconds: the difference of
    two readings is PostgreSQL's work in between, connection churn included.
    """
    total = 0.0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with suppress(OSError, ValueError, IndexError):
            text = stat.read_text()
            if text[text.index("(") + 1 : text.rindex(")")] == "postgres":
                fields = text[text.rindex(")") + 2 :].split()
                # utime, stime, and cutime, cstime (children reaped): fields 14 to 17.
                total += sum(int(value) for value in fields[11:15]) / CLOCK_TICKS
    return total


def machine_busy_seconds() -> float:
    """Return the CPU seconds every core of the machine spent busy since boot."""
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = values[:8]
    return (user + nice + system + irq + softirq + steal) / CLOCK_TICKS


@dataclass(frozen=True)
class CpuReading:
    wall: float
    processes: dict[str, float]
    machine: float

    @classmethod
    def take(cls, pids: Mapping[str, int]) -> CpuReading:
        processes = {name: process_cpu_seconds(pid) for name, pid in pids.items()}
        return cls(time.monotonic(), processes, machine_busy_seconds())


def cpu_percent(before: CpuReading, after: CpuReading) -> dict[str, float]:
    """Return each process's CPU as % of one core between two readings, and "machine" too."""
    wall = after.wall - before.wall
    shares = {
        name: 100 * (after.processes[name] - before.processes[name]) / wall
        for name in before.processes
    }
    shares["machine"] = 100 * (after.machine - before.machine) / wall
    return shares


# --- statistics and the machine ---------------------------------------------------


def percentile(values: Sequence[float], q: float) -> float:
    """Return the q-th percentile (0-100), interpolating between closest ranks."""
    if not values:
        raise ValueError("percentile of no values")
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def median_interval(values: Sequence[float], confidence: float = 0.95) -> tuple[float, float]:
    """Return a distribution-free interval holding the median with at least ``confidence``.

    The order statistics (k, n + 1 - k) for the largest k whose two binomial
    tails (n, 1/2) together stay within 1 - confidence. Assumes nothing
    about the shape of the noise, only that the values are independent.
    """
    ordered = sorted(values)
    n = len(ordered)
    k, below = 0, 0.0  # below: P(fewer than k + 1 of n values fall under the median)
    while k < n // 2:
        below += math.comb(n, k) / 2**n
        if 2 * below > 1 - confidence:
            break
        k += 1
    if k == 0:
        raise ValueError(f"{n} values cannot bound the median with {confidence:.0%} confidence")
    return ordered[k - 1], ordered[n - k]


def machine() -> str:
    """Describe the machine: cores (as nproc counts them), CPU model, memory, OS."""
    cores = len(os.sched_getaffinity(0))
    model = "unknown CPU"
    cpuinfo = Path("/proc/cpuinfo").read_text(errors="replace")
    if match := re.search(r"^model name\s*:\s*(.+)$", cpuinfo, re.MULTILINE):
        model = match.group(1).strip()
    memory = ""
    meminfo = Path("/proc/meminfo").read_text()
    if match := re.search(r"^MemTotal:\s*(\d+) kB", meminfo, re.MULTILINE):
        memory = f", {int(match.group(1)) / 1024**2:.1f} GiB memory"
    return (
        f"{cores} cores (nproc), {model}{memory}, "
        f"Linux {platform.release()}, Python {platform.python_version()}"
    )


def command_line(argv: Sequence[str]) -> str:
    """Return the command that started this run as Markdown, as a developer would type it."""
    python = Path(sys.executable)
    with suppress(ValueError):  # a Python outside the checkout: keep its full path
        python = python.relative_to(BASE_DIR)
    prefix = "HA_DEV=1 " if os.environ.get("HA_DEV") else ""
    command = f"{prefix}{python} {shlex.join(argv)}"
    return f"`make bench`, which runs `{command}`" if "MAKELEVEL" in os.environ else f"`{command}`"
