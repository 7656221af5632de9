"""Run the WAHA gateway simulator in the foreground until SIGTERM or SIGINT."""

from __future__ import annotations

import asyncio
import os
import signal
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from ha_portal.lib.collector import settle_after_startup
from masters.gateways.simulator import build_app, serve


class Command(BaseCommand):
    help = (
        "Run the WAHA gateway simulator used by the demo, the tests and the benchmarks. "
        "Its /_sim/ controls are unauthenticated: keep it on 127.0.0.1."
    )
    # The simulator uses nothing Django checks; skipping them starts it faster.
    requires_system_checks: list[str] = []

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--host", default="127.0.0.1", help="address to bind (127.0.0.1)")
        parser.add_argument("--port", type=int, default=3000, help="port, 0 for a free one (3000)")
        parser.add_argument(
            "--sessions", default="default", help="comma-separated session names (default)"
        )
        parser.add_argument(
            "--api-key",
            default=os.environ.get("HA_SIMULATOR_API_KEY", ""),
            help="require this X-Api-Key on /api/ (default: $HA_SIMULATOR_API_KEY, else none)",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        port = options["port"]
        if not 0 <= port <= 65535:
            raise CommandError(f"--port: must be from 0 to 65535, not {port}")
        names = [name.strip() for name in options["sessions"].split(",") if name.strip()]
        try:
            app = build_app(names, options["api_key"])
        except ValueError as exc:
            raise CommandError(f"--sessions: {exc}") from exc
        settle_after_startup()  # it stands in for WhatsApp in benchmarks: no collector pauses
        try:
            asyncio.run(self.run(app, options["host"], port, names))
        except OSError as exc:
            raise CommandError(f"Cannot listen on {options['host']}:{port}: {exc}") from exc
        self.stdout.write("Gateway simulator stopped")

    async def run(self, app: Any, host: str, port: int, names: list[str]) -> None:
        """Serve until SIGTERM or SIGINT asks to stop."""
        stopping = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stopping.set)

        def announce(url: str) -> None:
            sessions = ", ".join(names) or "none"
            self.stdout.write(f"Gateway simulator listening on {url} (sessions: {sessions})")
            # Whoever started us (ha_run, a test) may be reading a pipe.
            self.stdout.flush()

        await serve(app, host, port, stopping=stopping, on_ready=announce)
