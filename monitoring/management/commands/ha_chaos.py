"""Run the chaos test (``make chaos``): print its verdict and write it to docs/RELIABILITY.md."""

from __future__ import annotations

import os
import secrets
import signal
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser

from monitoring.bench.harness import BenchError
from monitoring.chaos.run import (
    DEFAULT_DATABASE_URL,
    DEFAULT_REDIS_URL,
    FULL,
    SHORT,
    Options,
    run,
)
from monitoring.chaos.schedule import FaultKind
from monitoring.chaos.verdict import render, write_report

REPORT_PATH = settings.BASE_DIR / "docs" / "RELIABILITY.md"


class Command(BaseCommand):
    help = (
        "Start the product on PostgreSQL and Redis of its own (CHAOS_DATABASE_URL, default "
        f"{DEFAULT_DATABASE_URL}, flushed; CHAOS_REDIS_URL, default {DEFAULT_REDIS_URL}, "
        "flushed), load it through the API, inject faults from a seed (this restarts "
        "the PostgreSQL and Redis servers on those ports), and reconcile what was "
        "accepted with what the gateway received. Exits 1 if a message was lost or "
        "delivered twice."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--short",
            action="store_true",
            help=f"the CI size: {SHORT.messages:,} messages, {SHORT.faults} faults, "
            f"{SHORT.load_s:g} s of load (default: the full run, {FULL.messages:,} messages, "
            f"{FULL.faults} faults, {FULL.load_s / 60:g} min)",
        )
        parser.add_argument("--seed", type=int, default=None, help="replay this run's faults")
        parser.add_argument("--messages", type=int, default=None, help="override the size's")
        parser.add_argument("--faults", type=int, default=None, help="override the size's")
        parser.add_argument(
            "--minutes", type=float, default=None, help="minutes of load (override the size's)"
        )
        parser.add_argument("--dispatchers", type=int, default=3, help="dispatchers (3)")
        parser.add_argument(
            "--skip",
            nargs="+",
            default=[],
            choices=[str(kind) for kind in FaultKind],
            metavar="KIND",
            help="leave these fault kinds out (e.g. restart-postgres restart-redis when "
            "the servers are shared)",
        )
        parser.add_argument(
            "--report", type=Path, default=REPORT_PATH, help=f"report file ({REPORT_PATH})"
        )
        parser.add_argument("--no-report", action="store_true", help="print the verdict only")

    def handle(self, *args: Any, **options: Any) -> None:
        size = SHORT if options["short"] else FULL
        size = replace(
            size,
            messages=options["messages"] or size.messages,
            faults=options["faults"] if options["faults"] is not None else size.faults,
            load_s=options["minutes"] * 60 if options["minutes"] else size.load_s,
        )
        if size.messages < 1 or size.load_s <= 0 or size.faults < 0 or options["dispatchers"] < 1:
            raise CommandError("--messages, --minutes and --dispatchers must be positive")
        seed = options["seed"] if options["seed"] is not None else secrets.randbelow(10**6)
        self.progress(f"chaos run ({size.name}), seed {seed}")
        chosen = Options(
            size=size,
            seed=seed,
            dispatchers=options["dispatchers"],
            skip=frozenset(FaultKind(kind) for kind in options["skip"]),
            database_url=os.environ.get("CHAOS_DATABASE_URL") or DEFAULT_DATABASE_URL,
            redis_url=os.environ.get("CHAOS_REDIS_URL") or DEFAULT_REDIS_URL,
        )
        # SIGTERM stops the run like Ctrl-C: through the finally that stops its processes.
        previous = signal.signal(signal.SIGTERM, signal.default_int_handler)
        try:
            verdict = run(chosen, self.progress)
        except BenchError as error:
            raise CommandError(str(error)) from error
        except KeyboardInterrupt:
            raise CommandError("interrupted; every process the run started is stopped") from None
        finally:
            signal.signal(signal.SIGTERM, previous)
        text = render(verdict)
        self.stdout.write("\n" + text)
        if not options["no_report"]:
            write_report(options["report"], f"chaos-{size.name}", text)
            self.stdout.write(f"Wrote the verdict to {options['report']}")
        if not verdict.passed:
            raise CommandError(
                f"{len(verdict.tally.lost)} messages lost, "
                f"{len(verdict.tally.duplicates)} delivered twice (seed {seed})"
            )

    def progress(self, message: str) -> None:
        self.stdout.write(f"[{time.strftime('%H:%M:%S')}] {message}")
        self.stdout.flush()
