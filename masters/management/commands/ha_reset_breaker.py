"""Close a master's tripped circuit breaker so automatic failover resumes."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand

from masters.failover import reset_breaker
from masters.management.commands.ha_failover import master_by_id


class Command(BaseCommand):
    help = "Reset a master's failover circuit breaker (after an operator has looked)."

    def add_arguments(self, parser) -> None:
        parser.add_argument("master", help="the master's id")

    def handle(self, *args: Any, master: str, **options: Any) -> None:
        target = master_by_id(master)
        reset_breaker(target.pk)
        self.stdout.write(f"Circuit breaker of {target.external_id} is closed")
