"""Database connections for the worker loops' own threads (dispatcher, prober)."""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from typing import Any

from django.db import close_old_connections, connection

# A connection used within this many seconds is not health-checked again.
IDLE_CHECK_S = 1.0

_last_step = threading.local()


def with_fresh_connection(
    function: Callable, *args: Any, clock: Callable[[], float] = time.monotonic
) -> Any:
    """Run ``function(*args)`` on this thread's connection, dropping a broken or old one first.

    Django health-checks a reused connection (CONN_HEALTH_CHECKS) with a
    ``SELECT 1`` round trip at the start of every request. A loop thread runs
    a step every few milliseconds under load, and each round trip then also
    waits for the GIL: the check made every claim and record one round trip
    longer. So it runs only on a connection idle for ``IDLE_CHECK_S`` (a
    database restarted while the loop slept is found before a step fails).
    A connection that broke while busy fails one step, which the loops
    retry; Django tests it before its next use (``errors_occurred``).
    """
    close_old_connections()  # max age, and the test after a failed step
    if clock() - getattr(_last_step, "ended", -math.inf) < IDLE_CHECK_S:
        connection.health_check_done = True
    try:
        return function(*args)
    finally:
        _last_step.ended = clock()
