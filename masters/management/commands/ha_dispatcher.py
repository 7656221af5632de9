"""Run a dispatcher in the foreground until SIGTERM or SIGINT (see masters.dispatcher)."""

from __future__ import annotations

import asyncio
import signal
from typing import Any

from django.core.management.base import BaseCommand

from ha_portal.lib.collector import settle_after_startup
from masters.dispatcher import Dispatcher


class Command(BaseCommand):
    help = "Send queued messages through the masters' gateways (run any number)."

    def add_arguments(self, parser) -> None:
        parser.add_argument("--name", default=None, help="this dispatcher's name in claims")

    def handle(self, *args: Any, name: str | None, **options: Any) -> None:
        dispatcher = Dispatcher(name)
        frozen = settle_after_startup()
        self.stdout.write(
            f"Dispatcher {dispatcher.name} starting "
            f"({frozen:,} start-up objects kept out of garbage collection)"
        )
        self.stdout.flush()
        asyncio.run(self.run(dispatcher))
        self.stdout.write(f"Dispatcher {dispatcher.name} stopped after sending {dispatcher.sent}")

    async def run(self, dispatcher: Dispatcher) -> None:
        stopping = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stopping.set)
        await dispatcher.run(stopping)
