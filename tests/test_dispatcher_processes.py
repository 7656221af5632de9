"""Several dispatcher processes at once, one killed mid-run: no message sent twice,
none left behind."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from masters.choices import MessageStatus
from masters.models import Message
from masters.queue import NewMessage, enqueue_batch
from tests.conftest import database_url, make_master, wait_until

ROOT = Path(__file__).resolve().parent.parent
COUNT = 1500


@pytest.fixture
def dispatchers(simulator, transactional_db):
    for session, phone in (("a", "+971505760056"), ("b", "+971505760057"), ("c", "+966501234567")):
        make_master(
            session,
            phone,
            gateway_url=simulator.url,
            gateway_session=session,
            max_messages_per_second=2000,
        )
    environ = os.environ | {
        "DATABASE_URL": database_url(),
        "HA_DEV": "1",
        "DISPATCH_LEASE": "9",
        "SEND_TIMEOUT": "2000",
        "DISPATCH_BATCH": "50",
    }
    started: list[subprocess.Popen] = []

    def start(name: str) -> subprocess.Popen:
        process = subprocess.Popen(
            [sys.executable, "manage.py", "ha_dispatcher", "--name", name],
            cwd=ROOT,
            env=environ,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        started.append(process)
        return process

    yield start
    for process in started:
        if process.poll() is None:
            process.terminate()
        process.wait(20)


def test_three_dispatchers_one_killed_send_every_message_exactly_once(dispatchers, simulator):
    batch = [
        NewMessage(f"+97150{i:07d}", f"message {i}", idempotency_key=f"key-{i}")
        for i in range(COUNT)
    ]
    enqueue_batch(batch)
    victim = dispatchers("d1")
    dispatchers("d2")
    dispatchers("d3")

    wait_until(
        lambda: len(simulator.state.messages()) >= COUNT // 5,
        timeout=60,
        what="sending to be under way",
    )
    victim.send_signal(signal.SIGKILL)

    wait_until(
        lambda: Message.objects.filter(status=MessageStatus.SENT).count() == COUNT,
        timeout=90,
        what="every message sent",
    )
    delivered = Counter(d.idempotency_key for d in simulator.state.messages())
    assert len(delivered) == COUNT, "none left behind"
    assert max(delivered.values()) == 1, "none delivered twice"
    assert set(Message.objects.values_list("status", flat=True)) == {MessageStatus.SENT}
