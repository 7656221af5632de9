"""Shared fixtures: personas and tiny factories."""

from __future__ import annotations

from pathlib import Path

import pytest
from django.contrib.auth import get_user_model

from masters.choices import GatewayKind, HealthStatus, Role
from masters.models import Master


@pytest.fixture
def admin_user(db):
    return get_user_model().objects.create_superuser("root", password="correct horse battery")


@pytest.fixture
def viewer(db):
    from monitoring.roles import VIEWER, grant

    user = get_user_model().objects.create_user("viewer", password="correct horse battery")
    grant(user, VIEWER)
    return user


@pytest.fixture
def operator(db):
    from monitoring.roles import OPERATOR, grant

    user = get_user_model().objects.create_user("operator", password="correct horse battery")
    grant(user, OPERATOR)
    return user


@pytest.fixture(autouse=True)
def _fresh_cache():
    """The cache (login attempt counters) outlives a test; start each one empty."""
    from django.core.cache import cache

    cache.clear()
    yield


@pytest.fixture
def trio():
    """A failed primary and two healthy backups, on different gateway hosts."""
    from datetime import timedelta

    from django.utils import timezone

    a = make_master(
        "a",
        "+971505760056",
        role=Role.PRIMARY,
        failover_priority=1,
        health_status=HealthStatus.FAILED,
        gateway_url="http://127.0.0.1:3001",
        region="UAE",
    )
    b = make_master(
        "b",
        "+971505760057",
        role=Role.SECONDARY,
        failover_priority=2,
        gateway_url="http://127.0.0.1:3002",
        region="UAE",
    )
    c = make_master(
        "c",
        "+966501234567",
        role=Role.TERTIARY,
        failover_priority=3,
        gateway_url="http://127.0.0.1:3003",
        region="KSA",
    )
    Master.objects.filter(pk=a.pk).update(health_changed_at=timezone.now() - timedelta(minutes=1))
    return a, b, c


def database_url() -> str:
    """The test database as a DATABASE_URL, for the processes a test starts."""
    from django.db import connection

    db = connection.settings_dict
    if db["ENGINE"].endswith("sqlite3"):
        return f"sqlite:///{Path(db['NAME']).resolve()}"
    auth = (db["USER"] or "postgres") + (f":{db['PASSWORD']}" if db["PASSWORD"] else "")
    return f"postgres://{auth}@{db['HOST'] or '127.0.0.1'}:{db['PORT'] or 5432}/{db['NAME']}"


def make_master(external_id: str = "m1", phone: str = "+971505760056", **fields) -> Master:
    """Create a master with sensible defaults; override any field by keyword."""
    values = {
        "display_name": external_id.title(),
        "role": Role.PRIMARY,
        "gateway_kind": GatewayKind.WAHA,
        "gateway_url": "http://127.0.0.1:3000",
        "gateway_session": external_id,
        "health_status": HealthStatus.HEALTHY,
    } | fields
    return Master.objects.create(external_id=external_id, phone_number=phone, **values)


# --- real parts: the gateway simulator and a prober, each on its own thread ----

import asyncio  # noqa: E402
import json  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
import urllib.request  # noqa: E402
from collections.abc import Callable  # noqa: E402

from masters.gateways.simulator import SimulatorServer  # noqa: E402
from masters.prober import Prober  # noqa: E402


@pytest.fixture
def simulator():
    with SimulatorServer(["a", "b", "c"]) as server:
        yield server


def sim_control(simulator: SimulatorServer, session: str, action: str, **body) -> dict:
    """Drive the simulator over HTTP, as the demo panel and the benchmarks do."""
    request = urllib.request.Request(
        f"{simulator.url}/_sim/sessions/{session}/{action}",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=5) as response:
        return json.loads(response.read())


def wait_until(condition: Callable[[], object], timeout: float = 15.0, what: str = "") -> object:
    """Return the condition's first truthy value; fail after ``timeout`` seconds.

    For state another thread or process writes to the database: there is no
    event to await across that boundary, so this polls at a short interval.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.02)
    pytest.fail(f"timed out after {timeout}s waiting for {what or condition}")


class LoopThread:
    """Run a real Prober or Dispatcher (anything with ``run(stopping)``) on its own thread."""

    def __init__(self, runner) -> None:
        self.runner = runner
        self.loop: asyncio.AbstractEventLoop | None = None
        self.stopping: asyncio.Event | None = None
        self.started = threading.Event()
        self.thread = threading.Thread(target=self._run, name=runner.name, daemon=True)

    def _run(self) -> None:
        asyncio.run(self._main())

    async def _main(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.stopping = asyncio.Event()
        self.started.set()
        await self.runner.run(self.stopping)

    def start(self) -> LoopThread:
        self.thread.start()
        self.started.wait(5)
        return self

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.stopping.set)
        self.thread.join(20)
        assert not self.thread.is_alive(), f"{self.runner.name} did not stop"

    @property
    def prober(self):
        return self.runner

    @property
    def dispatcher(self):
        return self.runner


@pytest.fixture
def fast_probes(settings, transactional_db):
    """Probe every 500 ms (the minimum) with a 300 ms timeout and 100 ms confirmation."""
    from masters.models import RuntimeSettings

    settings.HEALTH = settings.HEALTH | {"timeout_ms": 300, "confirm_interval_ms": 100}
    runtime = RuntimeSettings.current()
    runtime.health_check_interval_ms = 500
    runtime.save()
    return runtime


def _loop_threads(make_runner, default_name: str):
    """Yield a starter of LoopThreads built by ``make_runner(name)``; stop them at teardown."""
    started: list[LoopThread] = []

    def start(name: str = default_name) -> LoopThread:
        thread = LoopThread(make_runner(name)).start()
        started.append(thread)
        return thread

    yield start
    for thread in started:
        if thread.thread.is_alive():
            thread.stop()


@pytest.fixture
def start_prober(fast_probes):
    yield from _loop_threads(Prober, "test-prober")


@pytest.fixture
def start_dispatcher(transactional_db, settings):
    from masters.dispatcher import Dispatcher

    settings.QUEUE = settings.QUEUE | {"retry_base_ms": 50, "retry_max_ms": 200}
    yield from _loop_threads(Dispatcher, "test-dispatcher")
