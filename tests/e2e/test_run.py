"""`make run`'s command starts the whole product on the embedded default and stops it all."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for(url: str, process: subprocess.Popen, deadline_s: float = 60) -> bytes:
    """Return the body of URL once it answers 200; fail if the process dies first."""
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        assert process.poll() is None, process.stdout.read()
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                return response.read()
        except (urllib.error.URLError, ConnectionError):
            time.sleep(0.2)  # polling a port that is not open yet: nothing to await
    pytest.fail(f"{url} did not answer within {deadline_s}s")


def children_of(pid: int) -> list[int]:
    result = subprocess.run(
        ["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True
    )
    return [int(line) for line in result.stdout.split()]


def start_run(tmp_path: Path, **env: str) -> tuple[subprocess.Popen, int, int]:
    port, simulator_port = free_port(), free_port()
    environ = (
        os.environ
        | {
            "HA_DEV": "1",
            "DATABASE_URL": f"sqlite:///{tmp_path / 'run.sqlite3'}",
            "PORT": str(port),
            "SIMULATOR_PORT": str(simulator_port),
        }
        | env
    )
    environ.pop("REDIS_URL", None)
    process = subprocess.Popen(
        [sys.executable, "manage.py", "ha_run"],
        cwd=ROOT,
        env=environ,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    return process, port, simulator_port


def stop(process: subprocess.Popen) -> None:
    children = children_of(process.pid)
    process.send_signal(signal.SIGINT)
    process.wait(timeout=30)
    for pid in children:
        assert (
            not Path(f"/proc/{pid}").exists() or "zombie" in Path(f"/proc/{pid}/status").read_text()
        )


def test_it_serves_the_login_page_with_the_demo_and_stops_everything_on_ctrl_c(tmp_path):
    process, port, simulator_port = start_run(tmp_path)
    try:
        page = wait_for(f"http://127.0.0.1:{port}/login/", process)
        assert b"Log in" in page
        htmx = wait_for(f"http://127.0.0.1:{port}/static/vendor/htmx-2.0.11.min.js", process)
        assert b"htmx" in htmx
        sessions = json.loads(wait_for(f"http://127.0.0.1:{simulator_port}/_sim/sessions", process))
        assert sorted(session["name"] for session in sessions) == ["a", "b", "c"]
    finally:
        stop(process)
    output = process.stdout.read()
    assert "Log in as admin / " in output
    assert "linda-master, omar-master, sara-master" in output


def api(port: int, token: str, path: str, body: dict | None = None) -> dict:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/api/v1/{path}",
        data=json.dumps(body).encode() if body is not None else None,
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
        method="POST" if body is not None else "GET",
    )
    with urllib.request.urlopen(request, timeout=5) as response:
        return json.loads(response.read())


def test_a_message_posted_to_the_api_reaches_the_simulator(tmp_path):
    process, port, simulator_port = start_run(tmp_path)
    try:
        wait_for(f"http://127.0.0.1:{port}/login/", process)
        token = subprocess.run(
            [sys.executable, "manage.py", "create_api_token", "e2e"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
            env=os.environ
            | {"HA_DEV": "1", "DATABASE_URL": f"sqlite:///{tmp_path / 'run.sqlite3'}"},
        ).stdout.strip()
        accepted = api(
            port,
            token,
            "messages",
            {"to": "+971501234567", "text": "end to end", "idempotency_key": "e2e-1"},
        )
        assert accepted["status"] == "queued"

        def sent() -> dict | None:
            message = api(port, token, f"messages/{accepted['id']}")
            return message if message["status"] == "sent" else None

        deadline = time.monotonic() + 30
        message = None
        while message is None and time.monotonic() < deadline:
            message = sent()
            time.sleep(0.2)  # the prober must first find a master healthy
        assert message is not None, "the message was not sent within 30 s"
        log = json.loads(wait_for(f"http://127.0.0.1:{simulator_port}/_sim/messages", process))
        assert [(m["text"], m["id"]) for m in log] == [
            ("end to end", message["gateway_message_id"])
        ]
    finally:
        stop(process)


def test_bots_config_imports_that_file_and_starts_no_simulator(tmp_path):
    config = tmp_path / "bots-config.json"
    config.write_text(
        json.dumps(
            {
                "version": "4.0",
                "masters": [
                    {"id": "only-master", "phoneNumber": "+971505760056", "displayName": "Only"}
                ],
            }
        )
    )
    process, port, simulator_port = start_run(tmp_path, BOTS_CONFIG=str(config))
    try:
        wait_for(f"http://127.0.0.1:{port}/login/", process)
        with pytest.raises(urllib.error.URLError):
            urllib.request.urlopen(f"http://127.0.0.1:{simulator_port}/_sim/health", timeout=2)
    finally:
        stop(process)
    assert "1 masters created" in process.stdout.read()
