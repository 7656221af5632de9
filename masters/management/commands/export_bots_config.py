from __future__ import annotations

import json
import os
from pathlib import Path

from django.core.management.base import BaseCommand, CommandError

from masters.config import export_bots_config


class Command(BaseCommand):
    help = "Export the configuration as bots-config.json v4.0 (to PATH, or standard output)."

    def add_arguments(self, parser) -> None:
        parser.add_argument("path", nargs="?", help="Where to write; omit for standard output.")
        parser.add_argument(
            "--include-secrets",
            action="store_true",
            help="Also write gateway API keys and webhook secrets (the file is then mode 600).",
        )

    def handle(self, *args, path: str | None, include_secrets: bool, **options) -> None:
        text = json.dumps(export_bots_config(include_secrets=include_secrets), indent=2) + "\n"
        if path is None:
            self.stdout.write(text, ending="")
            return
        target = Path(path)
        try:
            # Created owner-only before anything is written, in case it holds secrets.
            fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                handle.write(text)
        except OSError as exc:
            raise CommandError(f"{path}: cannot write: {exc.strerror}") from None
        self.stdout.write(f"Exported to {path}" + (" (with secrets)" if include_secrets else ""))
