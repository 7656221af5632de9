"""The SVG charts are well-formed XML, escape their text and draw what they are given."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from datetime import UTC, datetime, timedelta

from monitoring.charts import bar_chart, line_chart, nice_ticks, sparkline

SVG = "{http://www.w3.org/2000/svg}"
NASTY = 'a<b & "c" </svg><script>alert(1)</script>'


def parse(svg: str) -> ET.Element:
    root = ET.fromstring(svg)  # raises on anything that is not well-formed XML
    assert root.tag == f"{SVG}svg"
    return root


def texts(root: ET.Element) -> list[str]:
    return ["".join(node.itertext()) for node in root.iter(f"{SVG}text")]


def test_a_sparkline_is_one_line_per_run_of_values_and_a_dot_at_the_end():
    root = parse(sparkline([99.0, 100.0, None, 97.5, 98.0], width=100, height=20, low=0, high=100))
    lines = root.findall(f"{SVG}polyline")
    assert len(lines) == 2  # the None splits the line
    assert root.find(f"{SVG}circle") is not None
    assert root.get("width") == "100" and root.get("height") == "20"


def test_a_sparkline_without_data_says_so():
    root = parse(sparkline([None, None], label="uptime"))
    assert texts(root) == ["no data"]
    assert root.find(f"{SVG}title").text == "uptime"


def test_a_sparkline_of_a_flat_series_stays_inside_the_box():
    root = parse(sparkline([5, 5, 5], width=60, height=10))
    points = root.find(f"{SVG}polyline").get("points").split()
    ys = {float(point.split(",")[1]) for point in points}
    assert all(0 <= y <= 10 for y in ys)


def test_labels_titles_and_series_names_are_escaped():
    start = datetime(2025, 1, 1, tzinfo=UTC)
    line = line_chart(
        {NASTY: [(start, 1.0), (start + timedelta(hours=1), 2.0)]}, title=NASTY, y_label=NASTY
    )
    bars = bar_chart([NASTY, "b"], {NASTY: [1, 2]}, title=NASTY)
    for svg in (line, bars, sparkline([1, 2], label=NASTY)):
        root = parse(svg)
        assert "<script>" not in svg
        assert root.find(f"{SVG}script") is None
        assert root.find(f"{SVG}title").text == NASTY  # shown as text, not markup


def test_a_line_chart_has_axes_with_time_labels_and_a_legend():
    start = datetime(2025, 1, 1, 12, 0, tzinfo=UTC)
    points = [(start + timedelta(minutes=15 * i), float(i)) for i in range(8)]
    root = parse(
        line_chart({"mean": points, "max": [(x, y * 2) for x, y in points]}, title="Response")
    )
    labels = texts(root)
    assert "12:00" in labels and "13:45" in labels  # first and last x ticks
    assert "mean" in labels and "max" in labels and "Response" in labels
    assert "0" in labels and "15" in labels  # y axis from 0 to a round number above 14
    assert len(root.findall(f"{SVG}polyline")) == 2


def test_a_line_chart_leaves_gaps_and_says_when_there_is_no_data():
    points = [(0, 1.0), (1, None), (2, 3.0), (3, 4.0)]
    root = parse(line_chart(points))
    assert len(root.findall(f"{SVG}polyline")) == 2
    assert root.findall(f"{SVG}circle")  # the lone first point is drawn as a dot
    assert "No data in this period" in texts(parse(line_chart([(0, None)], title="x")))


def test_a_bar_chart_draws_one_bar_per_value_with_its_exact_value_as_tooltip():
    root = parse(bar_chart(["mon", "tue"], {"failures": [3, 0], "failovers": [1, 2]}, integer=True))
    tips = [rect.find(f"{SVG}title").text for rect in root.iter(f"{SVG}rect") if len(rect)]
    assert tips == ["mon: failures 3", "mon: failovers 1", "tue: failures 0", "tue: failovers 2"]
    assert {"0", "1", "2", "3"} <= set(texts(root))  # whole-number ticks for counts


def test_a_bar_chart_thins_out_labels_that_would_overlap():
    labels = [f"{day:02d} Jan" for day in range(1, 31)]
    root = parse(bar_chart(labels, {"n": [1] * 30}, width=400))
    shown = [text for text in texts(root) if text.endswith("Jan")]
    assert "01 Jan" in shown and 3 <= len(shown) < 30


def test_nice_ticks_are_round_and_cover_the_range():
    assert nice_ticks(0, 14) == [0, 5, 10, 15]
    assert nice_ticks(0, 100) == [0, 25, 50, 75, 100]
    assert nice_ticks(0, 10, integer=True) == [0, 5, 10]  # never 2.5 messages
    assert nice_ticks(0, 3, integer=True) == [0, 1, 2, 3]
    assert nice_ticks(3, 3) == [3, 3.25, 3.5, 3.75, 4]
