"""The loop threads' connection handling (ha_portal.lib.db)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

from django.db import connections

from ha_portal.lib.db import IDLE_CHECK_S, with_fresh_connection
from masters.models import Master


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_only_a_connection_left_idle_is_health_checked_before_a_step(transactional_db):
    clock = Clock()
    checked_at: list[float] = []

    def steps() -> list[int]:
        # A loop thread of its own, with its own connection, as the dispatcher's.
        conn = connections["default"]
        conn.ensure_connection()
        # A persistent connection with CONN_HEALTH_CHECKS, as on PostgreSQL.
        conn.health_check_enabled, conn.close_at = True, None
        is_usable = conn.is_usable

        def counted() -> bool:
            checked_at.append(clock.now)
            return is_usable()

        conn.is_usable = counted
        counts = [with_fresh_connection(Master.objects.count, clock=clock)]
        clock.now += IDLE_CHECK_S / 2  # busy: the next step follows at once
        counts.append(with_fresh_connection(Master.objects.count, clock=clock))
        clock.now += IDLE_CHECK_S * 5  # idle: the database may have restarted meanwhile
        counts.append(with_fresh_connection(Master.objects.count, clock=clock))
        conn.close()
        return counts

    with ThreadPoolExecutor(1) as thread:
        counts = thread.submit(steps).result()

    assert counts == [0, 0, 0]
    assert checked_at == [100.0, 100.0 + IDLE_CHECK_S * 5.5]
