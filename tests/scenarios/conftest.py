"""The product as real processes on the test database, driven as a bot and an operator would.

Each scenario starts the gateway simulator (``manage.py ha_simulator``), a web
process (daphne, as the Procfile runs it), a prober (``ha_prober``),
dispatchers (``ha_dispatcher``) and a django-q2 cluster (``qcluster``, which
runs the failover orchestration), all on the test database and, when
REDIS_URL is set, on Redis. Messages go in through the REST API with a token
from ``create_api_token``; faults go in through the simulator's control API;
what the test asserts is what an operator would see: the rows, the API's
answers and the simulator's delivery log.

Only the plan's timings are shortened, through the same environment variables
production reads (``SCENARIO_ENV``): probes every 500 ms instead of 5 s, a
one-second failover grace instead of thirty, and so on. The code is the
production code.
"""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from itertools import count
from pathlib import Path
from typing import Any

import pytest
from django.core.management import call_command

from masters.choices import HealthStatus, MessageStatus, Role
from masters.models import Master, Message, RuntimeSettings
from tests.browser.conftest import start_web
from tests.conftest import database_url, make_master, sim_control, wait_until

ROOT = Path(__file__).resolve().parents[2]
START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 15.0

# The failover grace period (FAILOVER_TIMEOUT) the scenarios run with.
GRACE_S = 1.0
# The plan's timings, shortened; every other setting keeps its production default.
SCENARIO_ENV = {
    "HEALTH_CHECK_INTERVAL": "500",  # ms; production: 5,000
    "HEALTH_CHECK_TIMEOUT": "400",
    "HEALTH_CONFIRM_INTERVAL": "100",
    "FAILOVER_TIMEOUT": str(int(GRACE_S * 1000)),  # ms; production: 30,000
    "FAILOVER_HOLD_DOWN": "1",  # s; production: 300
    "SEND_EJECTION_SECONDS": "2",  # s; production: 30
    "SLOW_START": "60",  # s; the production default, shortened where a scenario needs it
    "ALERT_EVALUATE_EVERY": "1",  # s; production: 2
    "LOAD_METRICS_INTERVAL": "1",  # s; production: 10
    "SEND_TIMEOUT": "2000",  # ms; production: 10,000
    "DISPATCH_LEASE": "9",  # s; at least SEND_TIMEOUT + 6 s
}

# (session, phone, role, region): the demo's three masters, one per simulator session.
MASTERS = (
    ("a", "+971505760056", Role.PRIMARY, "UAE"),
    ("b", "+971505760057", Role.SECONDARY, "UAE"),
    ("c", "+966501234567", Role.TERTIARY, "KSA"),
)

_recipients = count(1)


@dataclass
class Process:
    """One process of the product, its output in a log file."""

    name: str
    popen: subprocess.Popen
    log: Path

    def running(self) -> bool:
        return self.popen.poll() is None

    def terminate(self) -> None:
        """Ask it to stop: each of the product's commands stops cleanly on SIGTERM."""
        if self.running():
            self.popen.terminate()

    def stop(self, deadline: float | None = None) -> None:
        """SIGTERM it, wait; past the deadline, SIGKILL its process group."""
        self.terminate()
        deadline = deadline or time.monotonic() + STOP_TIMEOUT_S
        try:
            self.popen.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            if os.getpgid(self.popen.pid) == self.popen.pid:
                # Its own process group (start_new_session): django-q2's workers go with it.
                os.killpg(self.popen.pid, signal.SIGKILL)
            else:
                self.popen.kill()
            self.popen.wait(5)

    def tail(self, chars: int = 3000) -> str:
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return text[-chars:]


@dataclass
class Simulator:
    """The simulator process; ``url`` is what sim_control needs."""

    process: Process
    url: str


@dataclass
class Stack:
    """The running product: its processes, its masters, and the bot's API token."""

    simulator: Simulator
    web_url: str
    token: str
    masters: dict[str, Master]
    environ: dict[str, str]
    logs: Path
    processes: list[Process] = field(default_factory=list)

    # --- the processes -----------------------------------------------------------------

    def start(self, name: str, *command: str) -> Process:
        """Start ``manage.py <command>`` on the test database with the scenario's environment."""
        log = self.logs / f"{name}.log"
        with log.open("ab") as out:
            popen = subprocess.Popen(
                [sys.executable, "manage.py", *command],
                cwd=ROOT,
                env=self.environ,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        process = Process(name, popen, log)
        self.processes.append(process)
        return process

    def stop(self) -> None:
        """Stop every process at once (django-q2 takes seconds on its own), then the simulator."""
        for process in self.processes:
            process.terminate()
        deadline = time.monotonic() + STOP_TIMEOUT_S
        for process in self.processes:
            process.stop(deadline)
        self.simulator.process.stop()

    def log_tails(self) -> str:
        return "\n".join(
            f"--- {process.name} (exit {process.popen.poll()}) ---\n{process.tail()}"
            for process in [self.simulator.process, *self.processes]
        )

    def wait(self, condition: Callable[[], Any], timeout: float = 20.0, what: str = "") -> Any:
        """Poll ``condition`` like wait_until, failing at once if a process died meanwhile."""

        def check() -> Any:
            dead = [p.name for p in self.processes if not p.running()]
            assert not dead, f"{', '.join(dead)} exited while waiting for {what}"
            return condition()

        return wait_until(check, timeout=timeout, what=what)

    # --- the bot's side: the REST API ----------------------------------------------------

    def api(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        """Call /api/v1/<path> with the bot's token; return the status and the decoded body."""
        request = urllib.request.Request(
            f"{self.web_url}/api/v1/{path}",
            data=None if body is None else json.dumps(body).encode(),
            headers={"Authorization": f"Bearer {self.token}", "Content-Type": "application/json"},
            method=method,
        )
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as error:
            return error.code, json.loads(error.read())

    def submit(self, prefix: str, n: int) -> list[int]:
        """Queue ``n`` messages to distinct contacts in one batch; return their ids."""
        batch = [
            {
                "to": f"+97150{next(_recipients):07d}",
                "text": f"{prefix} message {i}",
                "idempotency_key": f"{prefix}-{i}",
            }
            for i in range(n)
        ]
        status, body = self.api("POST", "messages/batch", {"messages": batch})
        assert status == 202, body
        assert all(result["created"] for result in body["results"]), body
        return [result["id"] for result in body["results"]]

    def submit_one(self, prefix: str) -> int:
        """Queue one message with POST /messages; return its id."""
        status, body = self.api(
            "POST",
            "messages",
            {"to": f"+97150{next(_recipients):07d}", "text": prefix, "idempotency_key": prefix},
        )
        assert status == 202, body
        return body["id"]

    def master_list(self) -> dict[str, dict]:
        """GET /masters, by master id (the session name here)."""
        status, body = self.api("GET", "masters")
        assert status == 200, body
        return {row["id"]: row for row in body["masters"]}

    def failovers(self) -> list[dict]:
        """GET /failovers, oldest first."""
        status, body = self.api("GET", "failovers")
        assert status == 200, body
        return list(reversed(body["failovers"]))

    # --- the gateway's side: the simulator -------------------------------------------------

    def sim(self, session: str, action: str, **body: Any) -> dict:
        return sim_control(self.simulator, session, action, **body)

    def deliveries(self) -> list[dict]:
        """The simulator's delivery log, oldest first."""
        with urllib.request.urlopen(f"{self.simulator.url}/_sim/messages", timeout=10) as response:
            return json.loads(response.read())


# --- what the scenarios assert -------------------------------------------------------------


def statuses(ids: Iterable[int]) -> Counter:
    return Counter(Message.objects.filter(pk__in=list(ids)).values_list("status", flat=True))


def all_sent(ids: list[int]) -> bool:
    return statuses(ids) == Counter({MessageStatus.SENT: len(ids)})


def health(session: str) -> str:
    return Master.objects.values_list("health_status", flat=True).get(external_id=session)


def delivered_exactly_once(stack: Stack, ids: list[int]) -> dict[int, str]:
    """Reconcile the accepted messages with the delivery log; return the session of each.

    Every message is sent, the simulator received each exactly once, through
    the session of the master its row names, under the id the row recorded,
    and it received nothing else.
    """
    rows = {row.pk: row for row in Message.objects.filter(pk__in=ids).select_related("master")}
    assert len(rows) == len(ids), "every accepted message has its row"
    not_sent = {pk: row.status for pk, row in rows.items() if row.status != MessageStatus.SENT}
    assert not not_sent, f"not sent: {not_sent}"
    log = stack.deliveries()
    counts = Counter(d["idempotency_key"] for d in log)
    twice = {key: n for key, n in counts.items() if n > 1}
    assert not twice, f"delivered more than once: {twice}"
    expected = {row.idempotency_key for row in rows.values()}
    assert set(counts) == expected, (
        f"lost: {sorted(expected - set(counts))}, unexpected: {sorted(set(counts) - expected)}"
    )
    by_key = {d["idempotency_key"]: d for d in log}
    sessions = {}
    for pk, row in rows.items():
        delivery = by_key[row.idempotency_key]
        assert delivery["id"] == row.gateway_message_id, f"message {pk}: gateway id"
        assert delivery["session"] == row.master.gateway_session, f"message {pk}: sender"
        sessions[pk] = delivery["session"]
    return sessions


# --- the fixture ---------------------------------------------------------------------------


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item, call):
    """Attach the processes' logs to a failed scenario's report."""
    report = yield
    stack = getattr(item, "scenario_stack", None)
    if report.failed and stack is not None:
        report.sections.append(("logs of the product's processes", stack.log_tails()))
    return report


def start_simulator(logs: Path, environ: dict[str, str]) -> Simulator:
    log = logs / "simulator.log"
    with log.open("ab") as out:
        popen = subprocess.Popen(
            [sys.executable, "manage.py", "ha_simulator", "--port", "0", "--sessions", "a,b,c"],
            cwd=ROOT,
            env=environ,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    process = Process("simulator", popen, log)

    def listening() -> str | None:
        assert process.running(), process.tail()
        for word in process.tail().split():
            if word.startswith("http://127.0.0.1:"):
                return word
        return None

    return Simulator(process, wait_until(listening, START_TIMEOUT_S, "the simulator"))


@pytest.fixture
def product(transactional_db, tmp_path, request) -> Iterator[Callable[..., Stack]]:
    """Start the product: ``product(sessions=("a", "b"), dispatchers=2, rate=50, SLOW_START="6")``.

    Returns once every master has been probed healthy. Every process is
    stopped after the test, before the test database is flushed.
    """
    stacks: list[Stack] = []
    simulators: list[Simulator] = []

    def start(
        sessions: Iterable[str] = ("a", "b", "c"),
        dispatchers: int = 1,
        rate: int = 1000,
        **env: str,
    ) -> Stack:
        environ = os.environ | {
            "DATABASE_URL": database_url(),
            "HA_DEV": "1",
            # HA_DEV turns DEBUG on, which keeps every query in memory: not production's.
            "DJANGO_DEBUG": "0",
            "PYTHONUNBUFFERED": "1",
            "Q_WORKERS": "1",
        }
        environ |= SCENARIO_ENV | env
        simulator = start_simulator(tmp_path, environ)
        simulators.append(simulator)
        masters = add_masters(simulator, sessions, rate)
        seed_runtime_settings(environ)
        out = io.StringIO()
        call_command("create_api_token", "scenario-bot", stdout=out)
        stack = Stack(simulator, "", out.getvalue().strip(), masters, environ, tmp_path)
        stacks.append(stack)
        request.node.scenario_stack = stack
        stack.start("prober", "ha_prober", "--name", "prober")
        for n in range(1, dispatchers + 1):
            stack.start(f"dispatcher-{n}", "ha_dispatcher", "--name", f"dispatcher-{n}")
        stack.start("worker", "qcluster")
        web = start_web(tmp_path / "web.log")
        stack.web_url = web.url
        stack.processes.append(Process("web", web.process, web.log))
        for session in masters:
            stack.wait(
                lambda s=session: health(s) == HealthStatus.HEALTHY,
                START_TIMEOUT_S,
                f"master {session} to be probed healthy",
            )
        return stack

    yield start
    for stack in stacks:
        stack.stop()
    for simulator in simulators:
        simulator.process.stop()  # one whose start failed before its stack existed


def add_masters(simulator: Simulator, sessions: Iterable[str], rate: int) -> dict[str, Master]:
    """One master per simulator session, unprobed, sending ``rate`` messages/s at most.

    Their sessions refuse restarts.

    The prober restarts a failed WAHA session (masters.recovery), which would
    heal the faults the scenarios inject on purpose: these gateways are down
    the way a phone without network is, where a restart does not help.
    """
    masters = {}
    for index, (session, phone, role, region) in enumerate(MASTERS):
        if session not in sessions:
            continue
        masters[session] = make_master(
            session,
            phone,
            role=role,
            priority=index + 1,
            failover_priority=index + 1,
            region=region,
            gateway_url=simulator.url,
            gateway_session=session,
            health_status=HealthStatus.UNKNOWN,
            max_messages_per_second=rate,
        )
        sim_control(simulator, session, "unrestartable")
    return masters


def seed_runtime_settings(environ: dict[str, str]) -> None:
    """Write the run-time settings row from the environment, as the first process would."""
    RuntimeSettings.objects.update_or_create(
        pk=1,
        defaults={
            "health_check_interval_ms": int(environ["HEALTH_CHECK_INTERVAL"]),
            "failover_timeout_ms": int(environ["FAILOVER_TIMEOUT"]),
        },
    )
