"""Put a master in maintenance (no new traffic) or hand it back to the probes."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand

from masters import failover
from masters.management.commands.ha_failover import master_by_id


class Command(BaseCommand):
    help = "Start or end maintenance of a master (drain it for updates)."

    def add_arguments(self, parser) -> None:
        parser.add_argument("master", help="the master's id")
        parser.add_argument("state", choices=["on", "off"])
        parser.add_argument("--reason", default="")
        parser.add_argument(
            "--drain",
            action="store_true",
            help="with on: wait for in-flight sends, then move the master's work to a backup",
        )

    def handle(
        self, *args: Any, master: str, state: str, reason: str, drain: bool, **options: Any
    ) -> None:
        target = master_by_id(master)
        if state == "on" and drain:
            event = failover.drain(target.pk)
            moved = f"{event.moved_messages} messages moved" if event else "nothing moved"
            self.stdout.write(f"{target.external_id} drained: {moved}")
        elif state == "on":
            target.start_maintenance(reason=reason)
        else:
            target.end_maintenance(reason=reason)
        self.stdout.write(f"{target.external_id} is now {target.health_status}")
