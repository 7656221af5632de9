"""The worker processes' garbage-collector settings (ha_portal.lib.collector)."""

from __future__ import annotations

import gc
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ha_portal.lib.collector import THRESHOLDS, settle_after_startup
from tests.conftest import database_url

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def collector_restored():
    thresholds = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*thresholds)


def test_settling_freezes_what_start_up_built_and_raises_the_thresholds(collector_restored):
    built_at_startup = len(gc.get_objects())

    frozen = settle_after_startup()

    assert frozen == gc.get_freeze_count() >= built_at_startup // 2
    assert gc.get_threshold() == THRESHOLDS
    # What start-up built no longer takes part in a collection.
    assert len(gc.get_objects()) < built_at_startup // 10


def test_a_cycle_made_after_settling_is_still_collected(collector_restored):
    settle_after_startup()

    class Node:
        pass

    node = Node()
    node.self = node
    gc.collect()  # leave nothing else for the next collection to find
    del node
    assert gc.collect() >= 1


def test_the_dispatcher_process_settles_its_collector_at_start(transactional_db):
    process = subprocess.Popen(
        [sys.executable, "manage.py", "ha_dispatcher", "--name", "settled"],
        cwd=ROOT,
        env=os.environ | {"DATABASE_URL": database_url(), "HA_DEV": "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        first_line = process.stdout.readline()
    finally:
        process.terminate()
        process.wait(20)
    assert first_line.startswith("Dispatcher settled starting (")
    assert "start-up objects kept out of garbage collection" in first_line
