"""Operator actions from the command line, and a worker killed in the middle of a failover."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from io import StringIO
from pathlib import Path

import pytest
from django.core.management import CommandError, call_command
from django.db import connection

from masters.choices import FailoverStatus, HealthStatus, MessageStatus
from masters.models import FailoverEvent, Master, Message
from tests.conftest import database_url, wait_until
from tests.test_failover import add, snapshot

pytestmark = pytest.mark.django_db(transaction=True)
ROOT = Path(__file__).resolve().parent.parent


def run(*args: str) -> str:
    out = StringIO()
    call_command(*args, stdout=out)
    return out.getvalue()


def test_the_dry_run_previews_and_the_failover_moves(trio):
    a, b, _ = trio
    add(a, MessageStatus.QUEUED, 3)
    before = snapshot()
    assert "Would move 3 messages and 0 conversations from a to b" in run(
        "ha_failover", "a", "--dry-run"
    )
    assert snapshot() == before
    assert "3 messages and 0 conversations moved to b" in run("ha_failover", "a")
    assert set(Message.objects.values_list("master_id", flat=True)) == {b.pk}


def test_a_chosen_backup_is_used_and_rollback_undoes_it(trio):
    a, _, c = trio
    add(a, MessageStatus.QUEUED, 2)
    run("ha_failover", "a", "--backup", "c")
    event = FailoverEvent.objects.get()
    assert event.backup_master_id == c.pk
    assert "2 messages and 0 conversations back on a" in run("ha_rollback", str(event.pk))
    with pytest.raises(CommandError, match="nothing to roll back"):
        run("ha_rollback", str(event.pk))
    with pytest.raises(CommandError, match="no master with id 'zz'"):
        run("ha_failover", "zz")


def test_maintenance_and_breaker_reset_from_the_command_line(trio):
    _, b, _ = trio
    assert "b is now maintenance" in run("ha_maintenance", "b", "on")
    assert Master.objects.get(pk=b.pk).health_status == HealthStatus.MAINTENANCE
    assert "b is now unknown" in run("ha_maintenance", "b", "off")
    Master.objects.filter(pk=b.pk).update(breaker_tripped_at="2026-01-01T00:00:00Z")
    run("ha_reset_breaker", "b")
    assert Master.objects.get(pk=b.pk).breaker_tripped_at is None


@pytest.mark.skipif("connection.vendor != 'postgresql'")
def test_a_worker_killed_mid_failover_leaves_nothing_half_moved(trio):
    a, b, _ = trio
    messages = add(a, MessageStatus.QUEUED, 20)
    before = snapshot()
    with connection.cursor() as cursor:
        # Stall the transfer on one row, so the kill lands mid-transaction.
        cursor.execute(
            "CREATE FUNCTION stall() RETURNS trigger AS $$ BEGIN PERFORM pg_sleep(8); "
            "RETURN NEW; END $$ LANGUAGE plpgsql"
        )
        cursor.execute(
            "CREATE TRIGGER stall_one BEFORE UPDATE ON masters_message FOR EACH ROW "
            f"WHEN (OLD.id = {messages[10].pk}) EXECUTE FUNCTION stall()"
        )
    worker = subprocess.Popen(
        [sys.executable, "manage.py", "ha_failover", "a"],
        cwd=ROOT,
        env=os.environ | {"DATABASE_URL": database_url(), "HA_DEV": "1"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:

        def stalled() -> bool:
            with connection.cursor() as cursor:
                cursor.execute(
                    "SELECT count(*) FROM pg_stat_activity "
                    "WHERE query LIKE 'UPDATE \"masters_message\"%%' "
                    "AND wait_event = 'PgSleep'"
                )
                return cursor.fetchone()[0] > 0

        wait_until(stalled, timeout=30, what="the failover to be mid-transfer")
        worker.send_signal(signal.SIGKILL)
        worker.wait(10)
    finally:
        with connection.cursor() as cursor:
            cursor.execute("DROP TRIGGER stall_one ON masters_message; DROP FUNCTION stall()")

    wait_until(lambda: snapshot() == before, timeout=30, what="the killed transaction to vanish")
    assert not FailoverEvent.objects.exists()
    # Its lock died with it: the next failover runs at once.
    assert "20 messages" in run("ha_failover", "a")
    assert FailoverEvent.objects.get().status == FailoverStatus.COMPLETED
    assert set(Message.objects.values_list("master_id", flat=True)) == {b.pk}
