"""Fail a master over by hand, or preview what would move (--dry-run)."""

from __future__ import annotations

import json
from typing import Any

from django.core.management.base import BaseCommand, CommandError

from masters.failover import FailoverRefused, execute_failover, plan_failover
from masters.models import Master


def master_by_id(external_id: str) -> Master:
    try:
        return Master.objects.get(external_id=external_id)
    except Master.DoesNotExist:
        raise CommandError(f"no master with id {external_id!r}") from None


class Command(BaseCommand):
    help = "Move a master's pending messages and conversations to a backup, atomically."

    def add_arguments(self, parser) -> None:
        parser.add_argument("master", help="the master's id (as in bots-config.json)")
        parser.add_argument("--backup", help="the backup's id (default: chosen automatically)")
        parser.add_argument("--dry-run", action="store_true", help="show what would move")
        parser.add_argument("--reason", default="manual failover from the command line")

    def handle(
        self,
        *args: Any,
        master: str,
        backup: str | None,
        dry_run: bool,
        reason: str,
        **options: Any,
    ) -> None:
        failed = master_by_id(master)
        backup_id = master_by_id(backup).pk if backup else None
        if dry_run:
            plan = plan_failover(failed, backup_id)
            target = Master.objects.filter(pk=plan.backup_id).first()
            self.stdout.write(
                f"Would move {len(plan.messages)} messages and {len(plan.affinities)} "
                f"conversations from {failed.external_id} to "
                f"{target.external_id if target else 'the queue (no backup is healthy)'}"
            )
            self.stdout.write(json.dumps(plan.reasons, indent=2))
            return
        try:
            event = execute_failover(failed.pk, reason=reason, backup_id=backup_id)
        except FailoverRefused as refused:
            raise CommandError(str(refused)) from None
        self.stdout.write(
            f"Failover {event.pk} {event.status}: {event.moved_messages} messages and "
            f"{event.moved_affinities} conversations moved to "
            f"{event.backup_master.external_id if event.backup_master else 'the queue'}"
        )
