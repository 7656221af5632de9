"""Settings come from the environment and a bad value stops start-up, naming the variable."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from django.core.exceptions import ImproperlyConfigured

from ha_portal.lib.env import database_from_url, env_bool, env_choice, env_int, env_secret

ROOT = Path(__file__).resolve().parent.parent


def start_django(**env: str) -> subprocess.CompletedProcess:
    """Run `manage.py check` in a fresh process with the given environment."""
    environ = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
    environ |= {"HA_DEV": "1"} | env
    return subprocess.run(
        [sys.executable, "manage.py", "check"],
        cwd=ROOT,
        env=environ,
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize(
    ("variable", "value", "expected"),
    [
        ("HEALTH_CHECK_INTERVAL", "fast", "HEALTH_CHECK_INTERVAL: expected a whole number"),
        ("HEALTH_CHECK_INTERVAL", "10", "HEALTH_CHECK_INTERVAL: must be at least 500"),
        ("FAILOVER_TIMEOUT", "-1", "FAILOVER_TIMEOUT: must be at least 0"),
        ("MAX_RECOVERY_ATTEMPTS", "five", "MAX_RECOVERY_ATTEMPTS: expected a whole number"),
        ("FAILOVER_ENABLED", "maybe", "FAILOVER_ENABLED: expected true or false"),
        ("ALERT_CRITICAL_ENABLED", "2", "ALERT_CRITICAL_ENABLED: expected true or false"),
        ("LOAD_BALANCING_STRATEGY", "random", "LOAD_BALANCING_STRATEGY: expected one of"),
        ("DATABASE_URL", "mysql://db/x", "DATABASE_URL: expected sqlite:///path"),
    ],
)
def test_it_refuses_to_start_with_a_bad_value_and_names_the_variable(variable, value, expected):
    result = start_django(**{variable: value})
    assert result.returncode != 0
    assert expected in result.stderr


def test_it_refuses_to_start_outside_dev_without_a_secret_key():
    environ = {k: v for k, v in os.environ.items() if k not in {"SECRET_KEY", "HA_DEV"}}
    result = subprocess.run(
        [sys.executable, "manage.py", "check"],
        cwd=ROOT,
        env=environ | {"HA_DEV": "0"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert "SECRET_KEY: must be set" in result.stderr


def test_it_starts_with_good_values():
    result = start_django(
        HEALTH_CHECK_INTERVAL="2000", LOAD_BALANCING_STRATEGY="geo", FAILOVER_ENABLED="false"
    )
    assert result.returncode == 0, result.stderr


def test_debug_is_off_unless_the_dev_run_turns_it_on():
    from django.conf import settings

    assert settings.DEBUG is False


def test_the_plan_defaults_apply_when_nothing_is_set():
    from django.conf import settings

    if any(name in os.environ for name in ("HEALTH_CHECK_INTERVAL", "FAILOVER_TIMEOUT")):
        pytest.skip("the environment overrides the defaults")
    assert settings.HA_DEFAULTS["health_check_interval_ms"] == 5000
    assert settings.HA_DEFAULTS["failover_timeout_ms"] == 30000
    assert settings.HA_DEFAULTS["max_recovery_attempts"] == 5
    assert settings.HA_DEFAULTS["load_balancing_strategy"] == "round-robin"


def test_env_helpers_read_typed_values():
    environ = {"A": "yes", "B": " 42 ", "C": "geo", "D": ""}
    assert env_bool("A", False, environ=environ) is True
    assert env_int("B", 0, environ=environ) == 42
    assert env_choice("C", "x", ["geo", "x"], environ=environ) == "geo"
    assert env_int("D", 7, environ=environ) == 7
    assert env_bool("MISSING", True, environ=environ) is True


def test_env_secret_reads_a_file_named_by_the_file_variable(tmp_path):
    secret = tmp_path / "key"
    secret.write_text("s3cret\n")
    assert env_secret("KEY", environ={"KEY_FILE": str(secret)}) == "s3cret"
    with pytest.raises(ImproperlyConfigured, match="KEY_FILE: cannot read"):
        env_secret("KEY", environ={"KEY_FILE": str(tmp_path / "missing")})


def test_database_url_selects_sqlite_or_postgres():
    sqlite = database_from_url("DATABASE_URL", "sqlite:////tmp/x.sqlite3")
    assert sqlite["ENGINE"] == "django.db.backends.sqlite3"
    assert sqlite["NAME"] == "/tmp/x.sqlite3"
    pg = database_from_url("DATABASE_URL", "postgres://ops:p%40ss@db.local:5433/ha?sslmode=require")
    assert pg["ENGINE"] == "django.db.backends.postgresql"
    assert (pg["NAME"], pg["USER"], pg["PASSWORD"], pg["HOST"], pg["PORT"]) == (
        "ha",
        "ops",
        "p@ss",
        "db.local",
        "5433",
    )
    assert pg["OPTIONS"] == {"sslmode": "require"}
