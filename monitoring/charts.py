"""Server-rendered SVG charts: pure functions from numbers to an SVG string.

The master page and the health report embed these inline; the dashboard
rows call ``sparkline`` for each master's uptime. No JavaScript and no
inline styles: colours and fonts are SVG presentation attributes, so the
Content-Security-Policy stays strict. Every text that reaches the SVG
(titles, labels, series names) is escaped, and the output parses as XML.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from datetime import datetime
from html import escape

Number = float | int
Point = tuple[datetime | Number, Number | None]

# The portal's status colours (ha_portal/static/css/portal.css), then a few more.
PALETTE = ("#0969da", "#cf222e", "#1a7f37", "#9a6700", "#8250df", "#6e7781")
AXIS, GRID, INK = "#8c959f", "#eaeef2", "#57606a"
FONT = 'font-family="system-ui, sans-serif" font-size="11"'
MARGIN = {"left": 52, "right": 12, "top": 26, "bottom": 30}


def sparkline(
    values: Sequence[Number | None],
    width: int = 120,
    height: int = 24,
    *,
    low: Number | None = None,
    high: Number | None = None,
    label: str = "",
    colour: str = PALETTE[0],
) -> str:
    """Draw ``values`` as a small line without axes; ``None`` leaves a gap.

    ``low``/``high`` fix the scale (e.g. 0 and 100 for uptime %) so rows
    compare at a glance; by default the scale follows the data. The last
    value gets a dot. ``label`` becomes the SVG's accessible name.
    """
    title = label or "trend"
    known = [v for v in values if v is not None]
    if not known:
        return _svg(width, height, title, _text(width / 2, height / 2 + 4, "no data", "middle"))
    bottom = min(known) if low is None else low
    top = max(known) if high is None else high
    pad = 2.0
    x = _scale(0, max(len(values) - 1, 1), pad, width - pad)
    y = _scale(bottom, top, height - pad, pad)
    points = [(x(i), y(v)) if v is not None else None for i, v in enumerate(values)]
    body = [_polyline(segment, colour, 1.5) for segment in _segments(points)]
    last = next((p for p in reversed(points) if p is not None), None)
    if last is not None:
        body.append(f'<circle cx="{last[0]:.1f}" cy="{last[1]:.1f}" r="2" fill="{colour}"/>')
    return _svg(width, height, title, *body)


def line_chart(
    series: Mapping[str, Sequence[Point]] | Sequence[Point],
    *,
    width: int = 640,
    height: int = 220,
    title: str = "",
    y_label: str = "",
    x_format: str = "%H:%M",
    y_min: Number | None = None,
    y_max: Number | None = None,
    colours: Sequence[str] = PALETTE,
) -> str:
    """Draw one or more series of (x, y) points with axes, grid lines and a legend.

    x is a datetime (labelled with ``x_format``) or a number; a ``None`` y
    leaves a gap. The y axis starts at 0 for non-negative data unless
    ``y_min`` says otherwise.
    """
    named = dict(series) if isinstance(series, Mapping) else {"": list(series)}
    numeric = {
        name: [(_x_value(x), y) for x, y in points] for name, points in named.items() if points
    }
    xs = [x for points in numeric.values() for x, _ in points]
    ys = [y for points in numeric.values() for _, y in points if y is not None]
    frame = _Frame(width, height)
    if not ys:
        return _svg(width, height, title, *frame.empty(title))
    ticks = nice_ticks(
        min([*ys, 0]) if y_min is None else y_min, max(ys) if y_max is None else y_max
    )
    x = _scale(min(xs), max(xs) if max(xs) > min(xs) else min(xs) + 1, frame.left, frame.right)
    y = _scale(ticks[0], ticks[-1], frame.bottom, frame.top)
    body = [*frame.y_axis(ticks, y, y_label), *frame.x_axis(_x_ticks(named, x_format), x)]
    for index, points in enumerate(numeric.values()):
        colour = colours[index % len(colours)]
        plotted = [(x(px), y(py)) if py is not None else None for px, py in points]
        for segment in _segments(plotted):
            body.append(_polyline(segment, colour, 1.8))
            if len(segment) == 1:
                px, py = segment[0]
                body.append(f'<circle cx="{px:.1f}" cy="{py:.1f}" r="2.5" fill="{colour}"/>')
    body.extend(frame.heading(title, [n for n in numeric if n], colours))
    return _svg(width, height, title, *body)


def bar_chart(
    labels: Sequence[str],
    series: Mapping[str, Sequence[Number]],
    *,
    width: int = 640,
    height: int = 220,
    title: str = "",
    y_label: str = "",
    colours: Sequence[str] = PALETTE,
    integer: bool = False,
) -> str:
    """Draw grouped bars: one group per label, one bar per series in each group.

    Labels that would overlap are thinned out (every n-th is shown); each bar
    carries a tooltip with its exact value. ``integer`` keeps the y ticks
    whole (for counts).
    """
    frame = _Frame(width, height)
    values = [v for column in series.values() for v in column]
    if not labels or not values:
        return _svg(width, height, title, *frame.empty(title))
    ticks = nice_ticks(0, max([*values, 0]) or 1, integer=integer)
    y = _scale(ticks[0], ticks[-1], frame.bottom, frame.top)
    group = (frame.right - frame.left) / len(labels)
    bar = min(max(group * 0.8 / max(len(series), 1), 1.0), 40.0)
    inset = (group - bar * len(series)) / 2  # centre each group's bars on its label
    body = frame.y_axis(ticks, y, y_label)
    longest = max(len(label) for label in labels) * 6.2 + 6
    every = max(1, math.ceil(longest / group))
    for i, label in enumerate(labels):
        left = frame.left + i * group + inset
        for j, (name, column) in enumerate(series.items()):
            value = column[i] if i < len(column) else 0
            top = y(value)
            tip = f"{label}: {name + ' ' if name else ''}{_number(value)}"
            body.append(
                f'<rect x="{left + j * bar:.1f}" y="{top:.1f}" width="{bar:.1f}" '
                f'height="{max(frame.bottom - top, 0):.1f}" fill="{colours[j % len(colours)]}">'
                f"<title>{escape(tip)}</title></rect>"
            )
        if i % every == 0:
            body.append(_text(frame.left + (i + 0.5) * group, frame.bottom + 16, label, "middle"))
    body.append(_line(frame.left, frame.bottom, frame.right, frame.bottom, AXIS))
    body.extend(frame.heading(title, [n for n in series if n], colours))
    return _svg(width, height, title, *body)


def nice_ticks(low: Number, high: Number, count: int = 5, *, integer: bool = False) -> list[float]:
    """Return round tick values from at or below ``low`` to at or above ``high``."""
    if high <= low:
        high = low + 1
    raw = (high - low) / max(count - 1, 1)
    magnitude = 10 ** math.floor(math.log10(raw))
    steps = (1, 2, 5, 10) if integer else (1, 2, 2.5, 5, 10)
    step = next(m * magnitude for m in steps if m * magnitude >= raw)
    if integer:
        step = max(step, 1)
    start = math.floor(low / step) * step
    ticks = [start]
    while ticks[-1] < high - step * 1e-9:
        ticks.append(start + len(ticks) * step)
    return [round(t, 10) for t in ticks]


class _Frame:
    """The plot area inside the margins, and the pieces drawn around it."""

    def __init__(self, width: int, height: int) -> None:
        self.width, self.height = width, height
        self.left, self.right = MARGIN["left"], width - MARGIN["right"]
        self.top, self.bottom = MARGIN["top"], height - MARGIN["bottom"]

    def empty(self, title: str) -> list[str]:
        middle = (self.top + self.bottom) / 2
        return [
            _line(self.left, self.bottom, self.right, self.bottom, AXIS),
            _text((self.left + self.right) / 2, middle, "No data in this period", "middle"),
            *self.heading(title, [], PALETTE),
        ]

    def y_axis(self, ticks: list[float], y, label: str) -> list[str]:
        parts = []
        for tick in ticks:
            parts.append(_line(self.left, y(tick), self.right, y(tick), GRID))
            parts.append(_text(self.left - 6, y(tick) + 4, _number(tick), "end"))
        parts.append(_line(self.left, self.top, self.left, self.bottom, AXIS))
        if label:
            middle = (self.top + self.bottom) / 2
            parts.append(
                f'<text x="12" y="{middle:.1f}" {FONT} fill="{INK}" text-anchor="middle" '
                f'transform="rotate(-90 12 {middle:.1f})">{escape(label)}</text>'
            )
        return parts

    def x_axis(self, ticks: list[tuple[float, str]], x) -> list[str]:
        parts = [_line(self.left, self.bottom, self.right, self.bottom, AXIS)]
        for index, (value, label) in enumerate(ticks):
            px = x(value)
            # The last label ends at its tick, so it stays inside the picture.
            anchor = "end" if index == len(ticks) - 1 and len(ticks) > 1 else "middle"
            parts.append(_line(px, self.bottom, px, self.bottom + 4, AXIS))
            parts.append(_text(px, self.bottom + 16, label, anchor))
        return parts

    def heading(self, title: str, names: list[str], colours: Sequence[str]) -> list[str]:
        parts = []
        if title:
            parts.append(
                f'<text x="{self.left}" y="15" {FONT} font-weight="600" fill="#1f2328">'
                f"{escape(title)}</text>"
            )
        right = self.right
        for index in reversed(range(len(names))):
            name = names[index]
            right -= len(name) * 6.2 + 4
            parts.append(_text(right, 15, name, "start"))
            right -= 14
            colour = colours[index % len(colours)]
            parts.append(f'<rect x="{right:.1f}" y="7" width="10" height="10" fill="{colour}"/>')
            right -= 10
        return parts


def _svg(width: int, height: int, title: str, *body: str) -> str:
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" role="img" aria-label="{escape(title)}">'
        f"<title>{escape(title)}</title>{''.join(body)}</svg>"
    )


def _scale(d0: float, d1: float, r0: float, r1: float):
    span = (d1 - d0) or 1.0
    return lambda v: r0 + (v - d0) * (r1 - r0) / span


def _segments(points: list[tuple[float, float] | None]) -> list[list[tuple[float, float]]]:
    """Split a line at its gaps (None)."""
    segments: list[list[tuple[float, float]]] = [[]]
    for point in points:
        if point is None:
            if segments[-1]:
                segments.append([])
        else:
            segments[-1].append(point)
    return [segment for segment in segments if segment]


def _polyline(points: list[tuple[float, float]], colour: str, stroke: float) -> str:
    coords = " ".join(f"{px:.1f},{py:.1f}" for px, py in points)
    return (
        f'<polyline points="{coords}" fill="none" stroke="{colour}" '
        f'stroke-width="{stroke}" stroke-linejoin="round" stroke-linecap="round"/>'
    )


def _line(x1: float, y1: float, x2: float, y2: float, colour: str) -> str:
    return (
        f'<line x1="{x1:.1f}" y1="{y1:.1f}" x2="{x2:.1f}" y2="{y2:.1f}" '
        f'stroke="{colour}" stroke-width="1"/>'
    )


def _text(x: float, y: float, text: str, anchor: str) -> str:
    return (
        f'<text x="{x:.1f}" y="{y:.1f}" {FONT} fill="{INK}" text-anchor="{anchor}">'
        f"{escape(text)}</text>"
    )


def _x_value(x: datetime | Number) -> float:
    return x.timestamp() if isinstance(x, datetime) else float(x)


def _x_ticks(series: Mapping[str, Sequence[Point]], x_format: str) -> list[tuple[float, str]]:
    """Five evenly spaced x ticks over the data, labelled as dates or numbers."""
    xs = [x for points in series.values() for x, _ in points]
    low, high = min(xs, key=_x_value), max(xs, key=_x_value)
    if _x_value(high) == _x_value(low):
        return [(_x_value(low), _x_label(low, x_format))]
    ticks = []
    for i in range(5):
        value = _x_value(low) + (_x_value(high) - _x_value(low)) * i / 4
        label: datetime | float = value
        if isinstance(low, datetime):
            label = datetime.fromtimestamp(value, tz=low.tzinfo)
        ticks.append((value, _x_label(label, x_format)))
    return ticks


def _x_label(x: datetime | Number, x_format: str) -> str:
    return x.strftime(x_format) if isinstance(x, datetime) else _number(x)


def _number(value: Number) -> str:
    """Format a value for a label: 0, 2.5, 1200, 15k, 0.25."""
    if abs(value) >= 10_000:
        return f"{value / 1000:.3g}k"
    return f"{round(value, 3):g}"
