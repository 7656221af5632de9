"""A tiny chaos run end to end: real processes on PostgreSQL and Redis, nothing lost.

Skipped unless DATABASE_URL names PostgreSQL and REDIS_URL is set (as in
.ci/run). The run gets databases of its own on those servers, and leaves
out the server restarts: the rest of the suite uses the same servers.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest

ROOT = Path(__file__).resolve().parents[2]
DATABASE_URL = os.environ.get("DATABASE_URL", "")
REDIS_URL = os.environ.get("REDIS_URL", "")

pytestmark = [
    pytest.mark.postgres,
    pytest.mark.skipif(
        not DATABASE_URL.startswith(("postgres://", "postgresql://")) or not REDIS_URL,
        reason="needs DATABASE_URL on PostgreSQL and REDIS_URL",
    ),
]


def with_path(url: str, path: str) -> str:
    return urlunsplit(urlsplit(url)._replace(path=path, query=""))


def test_a_tiny_chaos_run_loses_nothing_and_delivers_nothing_twice():
    env = os.environ | {
        "HA_DEV": "1",
        "CHAOS_DATABASE_URL": with_path(DATABASE_URL, "/ha_chaos_test"),
        "CHAOS_REDIS_URL": with_path(REDIS_URL, "/5"),
    }
    argv = [sys.executable, "manage.py", "ha_chaos", "--short", "--seed", "7"]
    argv += ["--minutes", "0.4", "--messages", "240", "--faults", "4", "--no-report"]
    argv += ["--skip", "restart-postgres", "restart-redis"]

    result = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)

    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "**Verdict: passed**" in result.stdout
    assert "| submitted (accepted by the API)                        | 240   |" in result.stdout
    assert "| **lost** (neither delivered nor expired or dead)       | **0** |" in result.stdout
