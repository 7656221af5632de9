"""Read the small subset of YAML the rules file is written in (PyYAML is not a dependency).

Block mappings and sequences, plain, 'single' and "double" quoted scalars,
full-line comments. Anything else (flow collections, anchors, block
scalars, inline comments, tabs) is refused rather than guessed at, so the
file stays in a shape that any YAML parser reads the same way.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

KEY = re.compile(r"^([A-Za-z_][A-Za-z0-9_-]*):(?: (.*))?$")
PLAIN_FORBIDDEN_START = tuple("[]{}&*!|>%@`'\"#,?")


class YamlSubsetError(ValueError):
    pass


@dataclass(frozen=True)
class Line:
    number: int
    indent: int
    text: str


def load(source: str):
    lines = []
    for number, raw in enumerate(source.splitlines(), 1):
        if "\t" in raw:
            raise YamlSubsetError(f"line {number}: tab")
        stripped = raw.strip()
        if not stripped or stripped.startswith("#"):
            continue
        lines.append(Line(number, len(raw) - len(raw.lstrip(" ")), stripped))
    if not lines:
        return None
    value, end = _block(lines, 0, lines[0].indent)
    if end != len(lines):
        raise YamlSubsetError(f"line {lines[end].number}: unexpected indentation")
    return value


def _block(lines: list[Line], i: int, indent: int):
    if lines[i].text == "-" or lines[i].text.startswith("- "):
        return _sequence(lines, i, indent)
    return _mapping(lines, i, indent)


def _sequence(lines: list[Line], i: int, indent: int):
    items = []
    while i < len(lines) and lines[i].indent == indent and lines[i].text.startswith("- "):
        rest = lines[i].text[2:].lstrip(" ")
        inner = indent + len(lines[i].text) - len(rest)
        if KEY.match(rest):
            lines[i] = Line(lines[i].number, inner, rest)
            item, i = _mapping(lines, i, inner)
        else:
            item, i = _scalar(rest, lines[i].number), i + 1
        items.append(item)
    return items, i


def _mapping(lines: list[Line], i: int, indent: int):
    mapping: dict = {}
    while i < len(lines) and lines[i].indent == indent:
        line = lines[i]
        match = KEY.match(line.text)
        if not match:
            raise YamlSubsetError(f"line {line.number}: expected 'key: value', got {line.text!r}")
        key, rest = match.group(1), match.group(2)
        if key in mapping:
            raise YamlSubsetError(f"line {line.number}: duplicate key {key!r}")
        if rest is None or rest == "":
            if i + 1 >= len(lines) or lines[i + 1].indent <= indent:
                raise YamlSubsetError(f"line {line.number}: {key!r} has no value")
            mapping[key], i = _block(lines, i + 1, lines[i + 1].indent)
        else:
            mapping[key], i = _scalar(rest, line.number), i + 1
    return mapping, i


def _scalar(text: str, number: int) -> str:
    if text.startswith('"'):
        if not text.endswith('"') or len(text) < 2:
            raise YamlSubsetError(f"line {number}: unterminated double-quoted string")
        return json.loads(text)
    if text.startswith("'"):
        inner = text[1:-1]
        if not text.endswith("'") or len(text) < 2 or re.search(r"(?<!')'(?!')", inner):
            raise YamlSubsetError(f"line {number}: bad single-quoted string")
        return inner.replace("''", "'")
    if text.startswith(PLAIN_FORBIDDEN_START) or ": " in text or " #" in text:
        raise YamlSubsetError(f"line {number}: plain scalar needs quoting: {text!r}")
    return text
