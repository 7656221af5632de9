from __future__ import annotations

import json
from typing import Any

from django.core.management.base import BaseCommand, CommandError

from masters.api.validation import reject_constant, unique_keys
from masters.config import ConfigError, import_bots_config

# A bots-config.json is a few kilobytes; a thousand masters fit in well under a megabyte.
MAX_FILE_BYTES = 10 * 1024 * 1024
# Problems listed in full; past these the rest are counted, not printed.
MAX_LISTED = 50


def read_config(path: str) -> Any:
    """Return the file's JSON, or raise CommandError saying what is wrong with the file.

    Strict JSON, as the API reads it: UTF-8, no NaN or Infinity (not JSON, and
    NaN passes every range check), no key twice in one object (which of the two
    would count?). Never reads more than MAX_FILE_BYTES + 1 bytes.
    """
    try:
        with open(path, "rb") as file:
            raw = file.read(MAX_FILE_BYTES + 1)
    except OSError as exc:
        raise CommandError(f"{path}: cannot read: {exc.strerror}") from None
    if len(raw) > MAX_FILE_BYTES:
        raise CommandError(f"{path}: over {MAX_FILE_BYTES} bytes: not a bots-config.json")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise CommandError(
            f"{path}: not UTF-8: byte 0x{raw[exc.start]:02x} at offset {exc.start} "
            "(save the file as UTF-8)"
        ) from None
    try:
        return json.loads(text, parse_constant=reject_constant, object_pairs_hook=unique_keys)
    except RecursionError:
        raise CommandError(f"{path}: not valid JSON: nested too deeply") from None
    except ValueError as exc:
        # JSONDecodeError, our two hooks, and integers too long to convert.
        raise CommandError(f"{path}: not valid JSON: {exc}") from None


def listed(lines: list[str]) -> list[str]:
    """Return at most MAX_LISTED lines, with a count of the ones left out."""
    if len(lines) <= MAX_LISTED:
        return lines
    return [*lines[:MAX_LISTED], f"... and {len(lines) - MAX_LISTED} more"]


class Command(BaseCommand):
    help = "Import masters, failover settings and alert recipients from a bots-config.json."

    def add_arguments(self, parser) -> None:
        parser.add_argument("path", help="Path to bots-config.json (v4.0 or the v3 shape).")

    def handle(self, *args, path: str, **options) -> None:
        data = read_config(path)
        try:
            result = import_bots_config(data)
        except ConfigError as exc:
            lines = "\n".join(f"  {error}" for error in listed(exc.errors))
            raise CommandError(f"{path}: nothing imported:\n{lines}") from None
        for warning in listed(result.warnings):
            self.stderr.write(f"warning: {warning}")
        self.stdout.write(
            f"Imported {path}: {len(result.created)} masters created, "
            f"{len(result.updated)} updated, {result.recipients} alert recipients."
        )
        if result.untouched:
            self.stdout.write(
                f"Masters not in the file, left as they are: {', '.join(result.untouched)}"
            )
