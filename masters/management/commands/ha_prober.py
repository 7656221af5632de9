"""Run a prober in the foreground until SIGTERM or SIGINT (see masters.prober)."""

from __future__ import annotations

import asyncio
import signal
from typing import Any

from django.core.management.base import BaseCommand

from masters.prober import Prober


class Command(BaseCommand):
    help = "Probe every active master every HEALTH_CHECK_INTERVAL (one prober acts at a time)."

    def add_arguments(self, parser) -> None:
        parser.add_argument("--name", default=None, help="this prober's name in the lease")

    def handle(self, *args: Any, name: str | None, **options: Any) -> None:
        prober = Prober(name)
        self.stdout.write(f"Prober {prober.name} starting")
        self.stdout.flush()
        asyncio.run(self.run(prober))
        self.stdout.write(f"Prober {prober.name} stopped")

    async def run(self, prober: Prober) -> None:
        stopping = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stopping.set)
        await prober.run(stopping)
