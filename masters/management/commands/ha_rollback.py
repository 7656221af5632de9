"""Roll a failover back: what it moved and is still pending returns to the original master."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError

from masters.failover import FailoverRefused, rollback_failover
from masters.models import FailoverEvent


class Command(BaseCommand):
    help = "Roll back a completed failover (by its id, see the failover log)."

    def add_arguments(self, parser) -> None:
        parser.add_argument("failover", type=int, help="the failover event's id")

    def handle(self, *args: Any, failover: int, **options: Any) -> None:
        try:
            event = rollback_failover(failover)
        except FailoverEvent.DoesNotExist:
            raise CommandError(f"no failover with id {failover}") from None
        except FailoverRefused as refused:
            raise CommandError(str(refused)) from None
        back = event.detail["rolled_back"]
        self.stdout.write(
            f"Failover {failover} rolled back: {back['messages']} messages and "
            f"{back['affinities']} conversations back on {event.failed_master.external_id}"
        )
