"""Browser tests: Debian's chromium, driven by Playwright, against real daphne processes.

Each web process is the product as the Procfile runs it (daphne,
CONN_MAX_AGE=0) on the test database, so what the browser sees went through
the real login, pages, websocket and feed. Tests write to the database from
this process, as the prober and workers do in production.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from monitoring.roles import OPERATOR, VIEWER, grant
from tests.conftest import database_url

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = Path("/usr/bin/chromium")
LISTENING = re.compile(r"Listening on TCP address (127\.0\.0\.1:\d+)")
PASSWORD = "correct horse battery"
NO_CHROMIUM = "chromium is not installed: apt-get install -y chromium (.ci/run does it)"


def pytest_configure(config) -> None:
    config.addinivalue_line("markers", "browser: drives a real browser (needs /usr/bin/chromium)")


def pytest_collection_modifyitems(items) -> None:
    here = Path(__file__).parent
    missing = not CHROMIUM.exists() and shutil.which("chromium") is None
    for item in items:
        if Path(item.fspath).is_relative_to(here):
            item.add_marker(pytest.mark.browser)
            if missing:
                item.add_marker(pytest.mark.skip(reason=NO_CHROMIUM))


# --- the product ---------------------------------------------------------------------


@dataclass
class Web:
    """One daphne process serving the portal."""

    process: subprocess.Popen
    url: str
    log: Path

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1])

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)


def start_web(log: Path, port: int = 0) -> Web:
    """Start daphne on the test database, as the Procfile's web process; wait until it listens."""
    environ = os.environ | {
        "DATABASE_URL": database_url(),
        "CONN_MAX_AGE": "0",
        # The dev switch: DEBUG serves the static files (no collectstatic in tests)
        # and cookies work over plain http.
        "HA_DEV": "1",
        "PYTHONUNBUFFERED": "1",
    }
    command = [sys.executable, "-m", "daphne", "-b", "127.0.0.1", "-p", str(port)]
    with log.open("ab") as out:
        process = subprocess.Popen(
            [*command, "ha_portal.asgi:application"],
            cwd=ROOT,
            env=environ,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if match := LISTENING.search(log.read_text(errors="replace")[-4000:]):
            return Web(process, f"http://{match.group(1)}", log)
        if process.poll() is not None:
            pytest.fail(f"daphne exited with {process.returncode}:\n{log.read_text()[-3000:]}")
        time.sleep(0.05)  # a process's log file: nothing to await
    process.kill()
    pytest.fail(f"daphne did not listen within 30 s:\n{log.read_text()[-3000:]}")


@pytest.fixture(scope="module")
def web(django_db_setup, tmp_path_factory) -> Iterator[Web]:
    server = start_web(tmp_path_factory.mktemp("web") / "daphne.log")
    yield server
    server.stop()


@pytest.fixture
def start_webs(tmp_path) -> Iterator:
    """Start more web processes for one test; stop them after it."""
    started: list[Web] = []

    def start(port: int = 0) -> Web:
        server = start_web(tmp_path / f"daphne-{len(started)}.log", port)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


# --- the browser -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def allow_orm_beside_playwright() -> Iterator[None]:
    # Playwright's sync API keeps an asyncio loop running in this thread, so
    # Django would refuse the tests' plain, synchronous ORM calls. They are
    # not async code: allow them, for these modules only.
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
        yield


@pytest.fixture(scope="module")
def browser(allow_orm_beside_playwright):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(
            executable_path=str(CHROMIUM if CHROMIUM.exists() else shutil.which("chromium")),
            headless=True,
        )
        yield chromium
        chromium.close()


@pytest.fixture
def new_page(browser):
    """Open pages in fresh browser contexts (separate cookies); close them after the test."""
    contexts = []

    def open_page():
        context = browser.new_context()
        context.set_default_timeout(10_000)
        contexts.append(context)
        return context.new_page()

    yield open_page
    for context in contexts:
        context.close()


# --- people ----------------------------------------------------------------------------


def person(username: str, role: str):
    from django.contrib.auth import get_user_model

    user = get_user_model().objects.create_user(username, password=PASSWORD)
    grant(user, role)
    return user


@pytest.fixture
def operator(transactional_db):
    return person("olivia", OPERATOR)


@pytest.fixture
def viewer(transactional_db):
    return person("victor", VIEWER)


def log_in(page, web: Web, user) -> None:
    """Log in through the login form and wait until the dashboard's socket is live."""
    from playwright.sync_api import expect

    page.goto(f"{web.url}/")
    page.fill("#id_username", user.get_username())
    page.fill("#id_password", PASSWORD)
    page.get_by_role("button", name="Log in").click()
    page.wait_for_url(f"{web.url}/")
    expect(page.locator("#live-status")).to_contain_text("Live")
