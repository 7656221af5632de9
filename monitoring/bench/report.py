"""The benchmark report: docs/BENCHMARKS.md, one marked block per section.

Each section sits between ``<!-- bench:NAME -->`` and ``<!-- /bench:NAME -->``,
so re-running one section (``ha_bench --only NAME``) replaces its block and
keeps every other one. Pure functions over strings, except ``write_section``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

HEADER = """\
# Benchmarks

Figures measured by `make bench` (`manage.py ha_bench`) on a real PostgreSQL
database of its own and real processes (the gateway simulator, probers) talking
over loopback HTTP. Each section says when, where and how it was measured; a
section is replaced whenever it is re-run (`ha_bench --only SECTION`), so
sections may come from different runs. Do not edit between the markers: the
next run overwrites it.
"""


@dataclass
class Section:
    """What a benchmark section returns: its figures as Markdown, and anything that looks off."""

    name: str
    title: str
    body: str
    warnings: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class RunInfo:
    """Where and how the figures were measured, printed above each section."""

    date: str
    machine: str
    command: str  # Markdown
    database: str  # Markdown
    duration: str = ""


def start_marker(name: str) -> str:
    return f"<!-- bench:{name} -->"


def end_marker(name: str) -> str:
    return f"<!-- /bench:{name} -->"


def render_section(section: Section, info: RunInfo) -> str:
    """Return the section's Markdown: heading, how it was measured, figures, warnings."""
    lines = [
        f"## {section.title}",
        "",
        f"- Measured: {info.date}" + (f", in {info.duration}" if info.duration else ""),
        f"- Machine: {info.machine}",
        f"- Command: {info.command}",
        f"- Database: {info.database}",
        "",
        section.body.strip("\n"),
    ]
    if section.warnings:
        lines += ["", "**Warnings** (figures may be disturbed):", ""]
        lines += [f"- {warning}" for warning in section.warnings]
    return "\n".join(lines) + "\n"


def replace_section(document: str, name: str, content: str) -> str:
    """Return ``document`` with section ``name``'s block set to ``content``; keep the rest.

    A section not yet in the document is appended; an empty document gets the header first.
    """
    start, end = start_marker(name), end_marker(name)
    block = f"{start}\n{content.strip(chr(10))}\n{end}"
    starts, ends = document.count(start), document.count(end)
    if starts == ends == 0:
        head = document.rstrip("\n") if document.strip() else HEADER.rstrip("\n")
        return f"{head}\n\n{block}\n"
    begin, finish = document.find(start), document.find(end)
    if starts != 1 or ends != 1 or finish < begin:
        raise ValueError(
            f"the markers of section {name!r} are broken ({starts} {start}, {ends} {end}): "
            "fix the file by hand"
        )
    return document[:begin] + block + document[finish + len(end) :]


def write_section(path: Path, name: str, content: str) -> None:
    """Replace section ``name`` in the report file, creating the file if needed."""
    document = path.read_text() if path.exists() else ""
    path.write_text(replace_section(document, name, content))


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Return a Markdown table padded to align, so it reads as well in a terminal."""
    widths = [max(len(str(cell)) for cell in column) for column in zip(headers, *rows, strict=True)]

    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(str(c).ljust(w) for c, w in zip(cells, widths, strict=True)) + " |"

    rule = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(headers), rule, *(line(row) for row in rows)])


def verdict(met: bool) -> str:
    return "met" if met else "**not met**"
