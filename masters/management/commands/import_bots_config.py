from __future__ import annotations

import json
from pathlib import Path

from django.core.management.base import BaseCommand, CommandError

from masters.config import ConfigError, import_bots_config


class Command(BaseCommand):
    help = "Import masters, failover settings and alert recipients from a bots-config.json."

    def add_arguments(self, parser) -> None:
        parser.add_argument("path", help="Path to bots-config.json (v4.0 or the v3 shape).")

    def handle(self, *args, path: str, **options) -> None:
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
        except OSError as exc:
            raise CommandError(f"{path}: cannot read: {exc.strerror}") from None
        except json.JSONDecodeError as exc:
            raise CommandError(f"{path}: not valid JSON: {exc}") from None
        try:
            result = import_bots_config(data)
        except ConfigError as exc:
            lines = "\n".join(f"  {error}" for error in exc.errors)
            raise CommandError(f"{path}: nothing imported:\n{lines}") from None
        for warning in result.warnings:
            self.stderr.write(f"warning: {warning}")
        self.stdout.write(
            f"Imported {path}: {len(result.created)} masters created, "
            f"{len(result.updated)} updated, {result.recipients} alert recipients."
        )
        if result.untouched:
            self.stdout.write(
                f"Masters not in the file, left as they are: {', '.join(result.untouched)}"
            )
