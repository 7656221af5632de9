"""A real daphne process on the test database, for tests that meet the product over HTTP."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import database_url

ROOT = Path(__file__).resolve().parents[2]
API_BATCH_LIMIT = 10
LISTENING = re.compile(r"Listening on TCP address (127\.0\.0\.1:\d+)")


@dataclass
class Web:
    process: subprocess.Popen
    url: str
    log: Path

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)


def start_daphne(log: Path, environ: dict[str, str]) -> Web:
    """Start daphne as the Procfile's web process does (DEBUG off); wait until it listens."""
    command = [sys.executable, "-m", "daphne", "-b", "127.0.0.1", "-p", "0"]
    with log.open("ab") as out:
        process = subprocess.Popen(
            [*command, "ha_portal.asgi:application"],
            cwd=ROOT,
            env=os.environ | environ,
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


@pytest.fixture(scope="session")
def web(django_db_setup, tmp_path_factory) -> Iterator[Web]:
    """The product's web process, as the Procfile runs it, on the test database."""
    server = start_daphne(
        tmp_path_factory.mktemp("web") / "daphne.log",
        {
            "DATABASE_URL": database_url(),
            "CONN_MAX_AGE": "0",
            "SECRET_KEY": "hostile-input-tests-" + "k" * 40,
            # Small, so that fuzzed batches over the limit are cheap to build and send.
            "API_BATCH_LIMIT": str(API_BATCH_LIMIT),
        },
    )
    yield server
    server.stop()
