"""The verdict: what the run prints and writes to docs/RELIABILITY.md."""

from __future__ import annotations

from collections import Counter

from monitoring.chaos.reconcile import Duplicate, FaultRecord, Lost, Tally
from monitoring.chaos.schedule import FaultKind
from monitoring.chaos.verdict import (
    INTRO,
    CrashNote,
    FaultOutcome,
    ProcessMemory,
    Verdict,
    render,
    write_report,
)


def verdict(**changes) -> Verdict:
    record = FaultRecord(1, FaultKind.SESSION_HANG, "chaos-a", 1000.0, 1020.0, 1)
    fields = dict(
        title="Short run",
        seed=4242,
        date="2026-01-01 00:00 UTC",
        machine="2 cores",
        command="`manage.py ha_chaos --short`",
        setup="three masters",
        load_s=120.0,
        wall_s=200.0,
        rate=25.0,
        tally=Tally(submitted=3000, delivered=2990, expired=4, dead=6),
        failovers=Counter({"completed": 2, "rolled-back": 1}),
        failover_requests=4,
        unanswered_requests=1,
        breaker_trips=0,
        faults=[
            FaultOutcome(
                record,
                "session-hang chaos-a for 20.0 s",
                12.5,
                "after 4.1 s",
                "none",
                "completed",
                3,
            )
        ],
        availability=0.9876,
        samples=119,
        down=Counter({"database unreachable": 3}),
        alerts_sent=7,
        alerts_received=7,
        memory=[ProcessMemory("dispatcher-1", "dispatcher", 100 * 1024, 110 * 1024, 112 * 1024, 1)],
        crashes=[],
        gaps={},
        drained=True,
        drain_s=3.0,
    )
    fields.update(changes)
    return Verdict(**fields)


def test_a_clean_run_passes_and_shows_its_figures():
    text = render(verdict())

    assert verdict().passed
    assert "**Verdict: passed**" in text
    assert "Seed: 4242 (replay with `--seed 4242`)" in text
    assert "| submitted (accepted by the API)" in text and "3,000" in text
    assert "**0**" in text  # lost
    assert "98.76 %" in text
    assert "Down: database unreachable: 3 s." in text
    assert "| dispatcher-1 | 100 MiB | 110 MiB | +10 MiB" in text
    assert "session-hang chaos-a for 20.0 s" in text and "after 4.1 s" in text


def test_a_lost_or_doubled_message_fails_the_run_and_is_listed():
    tally = Tally(
        submitted=2,
        delivered=1,
        lost=[Lost("key-7", "still queued", 1.0)],
        duplicates=[Duplicate("key-9", ("chaos-a", "chaos-b"), 2.0)],
    )

    failed = verdict(tally=tally)
    text = render(failed)

    assert not failed.passed
    assert "**Verdict: FAILED** — 1 lost, 1 delivered twice." in text
    assert "| key-7 | still queued |" in text
    assert "chaos-a → chaos-b" in text


def test_dead_reasons_crashes_and_gaps_are_named():
    tally = Tally(submitted=10, delivered=9, dead=1)
    tally.dead_reasons["gave up after N attempts"] = 1
    gaps = {FaultKind.RESTART_POSTGRES: ["process crashed (1)"]}
    crash = CrashNote("dispatcher-2", 50.0, 1, "var/chaos/dispatcher-2.log")

    text = render(verdict(tally=tally, gaps=gaps, crashes=[crash]))

    assert "| gave up after N attempts | 1 " in text
    assert "dispatcher-2 exited with code 1 at 50.0 s" in text
    assert "- **restart-postgres** not survived: process crashed (1)." in text
    assert "| restart-postgres    | 0        | not survived: process crashed (1) |" in text


def test_kinds_never_injected_are_listed_as_not_tried():
    text = render(verdict())

    assert "| session-hang        | 1        | survived" in text
    assert "- Not tried in this run: session-fail," in text


def test_the_report_keeps_the_other_size_and_the_intro(tmp_path):
    path = tmp_path / "RELIABILITY.md"

    write_report(path, "chaos-full", "## Full run\nfull figures\n")
    write_report(path, "chaos-short", "## Short run\nfirst\n")
    write_report(path, "chaos-short", "## Short run\nsecond\n")

    document = path.read_text()
    assert document.startswith(INTRO)
    assert "full figures" in document
    assert "second" in document and "first" not in document
