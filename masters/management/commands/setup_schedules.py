"""Register the project's django-q2 schedules; run it at every deploy.

Idempotent: schedules are matched by name and brought in line with
``SCHEDULES``; recurring schedules of this project's task modules that are
no longer listed are deleted. Schedules are never created in
``AppConfig.ready()`` or a migration (see STYLE.md, "Background work").
"""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand
from django.db import transaction
from django.db.models import Q
from django.utils import timezone
from django_q.models import Schedule

# Every recurring schedule the project owns, by name. Add new ones here.
SCHEDULES: dict[str, dict[str, Any]] = {
    "health-rollup": {
        "func": "masters.tasks.roll_up_health_checks",
        "schedule_type": Schedule.HOURLY,
    },
    "prober-watchdog": {
        "func": "masters.tasks.check_prober",
        "schedule_type": Schedule.MINUTES,
        "minutes": 1,
    },
}

# Task modules whose recurring schedules this command owns: an unlisted one is an orphan.
OWNED_FUNC_PREFIXES = ("masters.tasks.", "monitoring.tasks.")

# Fields a listed schedule is reset to unless its entry says otherwise.
BASELINE: dict[str, Any] = {
    "minutes": None,
    "cron": None,
    "args": None,
    "kwargs": None,
    "hook": None,
    "repeats": -1,
}


class Command(BaseCommand):
    help = "Create, update and prune the project's django-q2 schedules (idempotent)."

    def handle(self, *args: Any, **options: Any) -> None:
        with transaction.atomic():
            for schedule in self.orphans():
                schedule.delete()
                self.stdout.write(f"deleted {schedule.name or '(unnamed)'} ({schedule.func})")
            for name, entry in SCHEDULES.items():
                outcome = self.register(name, BASELINE | entry)
                self.stdout.write(f"{outcome} {name} ({entry['func']})")

    def orphans(self) -> list[Schedule]:
        """Return recurring schedules of our task modules that SCHEDULES does not list.

        Duplicates of a listed name go too (only the oldest is kept). One-off
        schedules are left alone: code may schedule those at run time.
        """
        owned = Q()
        for prefix in OWNED_FUNC_PREFIXES:
            owned |= Q(func__startswith=prefix)
        recurring = owned & ~Q(schedule_type=Schedule.ONCE)
        candidates = Schedule.objects.filter(recurring | Q(name__in=SCHEDULES))
        seen: set[str] = set()
        orphans = []
        for schedule in candidates.order_by("pk"):
            if schedule.name in SCHEDULES and schedule.name not in seen:
                seen.add(schedule.name)
            else:
                orphans.append(schedule)
        return orphans

    def register(self, name: str, spec: dict[str, Any]) -> str:
        """Create or update the schedule called ``name``; return what happened."""
        before = Schedule.objects.filter(name=name).values(*spec).first()
        Schedule.objects.update_or_create(
            name=name, defaults=spec, create_defaults=spec | {"next_run": timezone.now()}
        )
        if before is None:
            return "created"
        return "unchanged" if before == spec else "updated"
