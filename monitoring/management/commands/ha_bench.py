"""Run the benchmark (``make bench``): print its figures and write them to docs/BENCHMARKS.md."""

from __future__ import annotations

import signal
import sys
import time
from datetime import UTC, datetime
from importlib import import_module
from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from monitoring.bench import SECTIONS
from monitoring.bench.harness import (
    BASE_DIR,
    BenchError,
    Context,
    bench_database,
    bench_database_url,
    command_line,
    machine,
    redact,
)
from monitoring.bench.report import RunInfo, render_section, write_section

REPORT_PATH = BASE_DIR / "docs" / "BENCHMARKS.md"


class Command(BaseCommand):
    help = (
        "Measure the product against the gateway simulator on a database of its own "
        "(BENCH_DATABASE_URL, default postgres://postgres@127.0.0.1:5432/ha_bench, "
        "flushed at the start) and write the figures to docs/BENCHMARKS.md."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--only",
            nargs="+",
            choices=list(SECTIONS),
            metavar="SECTION",
            help=f"run only these sections ({', '.join(SECTIONS)}); the others stay as they are",
        )
        parser.add_argument(
            "--quick",
            action="store_true",
            help="fewer trials and shorter windows, to check the benchmark runs; "
            "prints only, unless --report is given",
        )
        parser.add_argument(
            "--report", type=Path, default=None, help=f"report file (default {REPORT_PATH})"
        )

    def handle(self, *args: Any, only: list[str] | None, quick: bool, **options: Any) -> None:
        report = options["report"] or (None if quick else REPORT_PATH)
        url = bench_database_url()
        ctx = Context(url, quick=quick, progress=self.progress)
        # SIGTERM stops the run like Ctrl-C does: through the finally that stops processes.
        previous = signal.signal(signal.SIGTERM, signal.default_int_handler)
        try:
            with bench_database(url) as server:
                database = f"`{redact(url)}` ({server})"
                for name in only or list(SECTIONS):
                    self.run_section(ctx, name, database, report)
        except BenchError as error:
            raise CommandError(str(error)) from error
        except KeyboardInterrupt:
            raise CommandError(
                "interrupted; every process the benchmark started is stopped"
            ) from None
        finally:
            ctx.stop_all()
            signal.signal(signal.SIGTERM, previous)

    def run_section(self, ctx: Context, name: str, database: str, report: Path | None) -> None:
        started = time.monotonic()
        date = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
        section = import_module(SECTIONS[name]).run(ctx)
        elapsed = time.monotonic() - started
        info = RunInfo(
            date=date + (" (--quick)" if ctx.quick else ""),
            machine=machine(),
            command=command_line(sys.argv),
            database=database,
            duration=f"{elapsed // 60:.0f} min {elapsed % 60:.0f} s",
        )
        self.stdout.write("\n" + render_section(section, info))
        for warning in section.warnings:
            self.stderr.write(f"warning: {warning}")
        if report is not None:
            write_section(report, name, render_section(section, info))
            self.stdout.write(f"Wrote section {name!r} to {report}")

    def progress(self, message: str) -> None:
        self.stdout.write(f"[{time.strftime('%H:%M:%S')}] {message}")
        self.stdout.flush()
