"""The benchmark report: re-running one section replaces its block and keeps the others."""

from __future__ import annotations

import pytest

from monitoring.bench.report import HEADER, RunInfo, Section, render_section, replace_section

DOCUMENT = """\
# Benchmarks

Intro a human wrote.

<!-- bench:detection -->
## Health detection (issue 3)
old detection figures
<!-- /bench:detection -->

<!-- bench:throughput -->
## Throughput
throughput figures
<!-- /bench:throughput -->

A closing note.
"""


def test_it_replaces_only_the_named_section():
    updated = replace_section(DOCUMENT, "detection", "## Health detection (issue 3)\nnew figures\n")

    assert "new figures" in updated
    assert "old detection figures" not in updated
    assert updated == DOCUMENT.replace("old detection figures", "new figures")


def test_it_keeps_every_other_section_and_the_text_around_them_byte_for_byte():
    updated = replace_section(DOCUMENT, "throughput", "## Throughput\nfaster\n")

    before = DOCUMENT.split("<!-- bench:throughput -->")[0]
    assert updated.startswith(before + "<!-- bench:throughput -->\n## Throughput\nfaster\n")
    assert updated.endswith("<!-- /bench:throughput -->\n\nA closing note.\n")
    assert "old detection figures" in updated


def test_running_a_section_twice_gives_the_same_file():
    once = replace_section(DOCUMENT, "detection", "figures")

    assert replace_section(once, "detection", "figures") == once


def test_a_new_section_is_appended_after_the_others():
    updated = replace_section(DOCUMENT, "failover", "## Failover\nfigures\n")

    assert updated.startswith(DOCUMENT.rstrip("\n"))
    assert updated.endswith(
        "\n\n<!-- bench:failover -->\n## Failover\nfigures\n<!-- /bench:failover -->\n"
    )


def test_an_empty_file_gets_the_header_then_the_section():
    created = replace_section("", "detection", "figures")

    assert created == f"{HEADER}\n<!-- bench:detection -->\nfigures\n<!-- /bench:detection -->\n"


def test_a_section_whose_name_starts_another_is_not_confused_with_it():
    document = replace_section(DOCUMENT, "detection-extra", "extra")

    updated = replace_section(document, "detection", "new")

    assert "<!-- bench:detection-extra -->\nextra\n<!-- /bench:detection-extra -->" in updated
    assert "<!-- bench:detection -->\nnew\n<!-- /bench:detection -->" in updated


@pytest.mark.parametrize(
    "broken",
    [
        DOCUMENT.replace("<!-- /bench:detection -->", ""),
        DOCUMENT + "<!-- bench:detection -->\n",
        DOCUMENT.replace("<!-- bench:detection -->", "@@")
        .replace("<!-- /bench:detection -->", "<!-- bench:detection -->")
        .replace("@@", "<!-- /bench:detection -->"),
    ],
    ids=["end missing", "start twice", "end before start"],
)
def test_broken_markers_are_refused_rather_than_guessed(broken):
    with pytest.raises(ValueError, match="markers of section 'detection' are broken"):
        replace_section(broken, "detection", "figures")


def test_a_rendered_section_says_when_where_and_how_it_was_measured():
    info = RunInfo(
        date="2026-01-05 10:00 UTC",
        machine="2 cores (nproc), AMD EPYC, 23.5 GiB memory",
        command="`HA_DEV=1 .venv/bin/python manage.py ha_bench --only detection`",
        database="`postgres://postgres@127.0.0.1:5432/ha_bench` (PostgreSQL 15.20)",
        duration="2 min 10 s",
    )
    section = Section("detection", "Health detection (issue 3)", "| a |\n|---|\n| 1 |", ["slow"])

    text = render_section(section, info)

    assert text.startswith("## Health detection (issue 3)\n")
    assert "- Measured: 2026-01-05 10:00 UTC, in 2 min 10 s" in text
    assert "- Machine: 2 cores (nproc), AMD EPYC" in text
    assert "- Command: `HA_DEV=1 .venv/bin/python manage.py ha_bench --only detection`" in text
    assert "ha_bench` (PostgreSQL 15.20)" in text
    assert "| a |\n|---|\n| 1 |" in text
    assert text.endswith("- slow\n")


def test_the_overhead_verdict_is_the_median_of_the_back_to_back_pairs():
    from monitoring.bench.throughput import Drain, overhead_verdict, pair_ratios

    rates = [("balanced", 100), ("straight", 110), ("balanced", 90), ("straight", 80)]
    rates += [("balanced", 300), ("straight", 300)]  # a fast moment of the machine
    drains = [Drain(kind, 1000, 1000, rate, {}) for kind, rate in rates]
    # Pairs 0.909, 1.125, 1.0; the medians of each kind (100 / 110) would say 0.909.
    assert pair_ratios(drains) == pytest.approx([0.909, 1.125, 1.0], abs=0.001)
    # Three pairs cannot bound the median: the verdict is the median's alone.
    assert overhead_verdict(pair_ratios(drains)) == ("—", "met")


def test_the_drains_alternate_which_kind_goes_first_and_pair_up_in_either_order():
    from monitoring.bench.throughput import Drain, drain_order, pair_ratios

    order = drain_order(3)
    assert order == ["balanced", "straight", "straight", "balanced", "balanced", "straight"]
    rates = dict(enumerate([100, 110, 80, 90, 300, 300]))
    drains = [Drain(kind, 1000, 1000, rates[i], {}) for i, kind in enumerate(order)]
    # The second pair ran straight first: its ratio is still balanced ÷ straight.
    assert pair_ratios(drains) == pytest.approx([0.909, 1.125, 1.0], abs=0.001)


def test_a_median_above_the_goal_whose_interval_reaches_below_it_is_met_only_in_the_noise():
    from monitoring.bench.throughput import overhead_verdict

    steady = [0.99, 0.985, 0.99, 0.995, 0.99, 0.985]
    assert overhead_verdict(steady) == ("0.985 to 0.995", "met")
    noisy = [0.99, 0.90, 1.05, 0.99, 0.95, 1.01]
    assert overhead_verdict(noisy) == ("0.900 to 1.050", "met within the noise")
    slow = [0.95, 0.96, 0.97, 0.97, 0.99, 0.96]
    assert overhead_verdict(slow) == ("0.950 to 0.990", "**not met**")


def test_the_median_interval_takes_the_order_statistics_the_binomial_tails_allow():
    from monitoring.bench.harness import median_interval

    # 21 values: P(at most 5 below the median) = 1.3 % per tail, 6 would be 3.9 %.
    assert median_interval(range(1, 22)) == (6, 16)
    assert median_interval([5, 1, 4, 2, 6, 3]) == (1, 6)
    with pytest.raises(ValueError, match="5 values cannot bound the median"):
        median_interval([1, 2, 3, 4, 5])


def test_the_claim_cost_is_set_beside_what_a_message_costs_the_machine_in_the_drains():
    from monitoring.bench.throughput import Drain, Results, render_claims

    results = Results()
    results.claim_ms = {"balanced": [6.3, 6.5, 6.4], "straight": [5.2, 5.3, 5.1]}
    results.claim_cpu_ms = {"balanced": [1.0, 1.1, 0.9], "straight": [0.8, 0.8, 0.7]}
    # 180 % of the machine at 3,000 msg/s: 600 µs of CPU per message, 300 in the dispatcher.
    results.drains = [
        Drain("balanced", 20_000, 20_000, 3_000.0, {"machine": 180.0, "dispatcher-1": 90.0})
    ]

    text = render_claims(results)

    assert "| balanced     | 6.40 ms       | 32.0 µs     | 1.00 ms" in text
    assert "| straight     | 5.20 ms       | 26.0 µs     | 0.80 ms" in text
    assert "Balancing adds 6.0 µs a message to the claim's wall time" in text
    assert "spent 600 µs of the machine's CPU per message sent (1.0 % of it)" in text
    # (1.00 - 0.80) ms over 200 messages: 1 µs, a third of a per cent of the dispatcher's 300.
    assert "own CPU, which the dispatcher's sends wait for under its GIL, is 1.0 µs" in text
    assert "0.3 % of the 300 µs the dispatchers spent per message" in text
