"""The chaos run's verdict: what it found, as Markdown for the terminal and docs/RELIABILITY.md.

Pure rendering over the ``Verdict`` record, except ``write_report``. Each
run size has its own marked block in the document (the benchmark report's
markers, monitoring.bench.report), so the CI's short run never overwrites
the last full run's figures.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from monitoring.bench.report import replace_section, table
from monitoring.chaos.reconcile import FaultRecord, Tally
from monitoring.chaos.schedule import FaultKind

INTRO = """\
# Reliability

`make chaos` starts the real product on PostgreSQL and Redis (the gateway
simulator with three masters, several dispatchers, two web processes, a
django-q2 cluster, two probers), submits messages through the REST API at a
steady rate, and injects faults on a schedule drawn from a seed: gateway
sessions that fail, hang, answer slowly, flap or break their sends; SIGKILL of
a dispatcher, the django-q2 cluster or one of its workers, the active prober,
a web process (each restarted at once, as a supervisor would); PostgreSQL and
Redis restarts. Then it waits for the queue to drain and reconciles what the
API accepted with what the simulator received. A message lost or delivered
twice fails the run (exit code 1).

- Short run, in CI on every change: `make chaos CHAOS_ARGS=--short`
  (a few thousand messages, a dozen faults, under five minutes).
- Full run: `make chaos` (100,000+ messages, 200+ faults, 30 minutes of load).
- Replay a run's faults: add `--seed N` with the seed it printed.
- It uses a database and a Redis database of its own, flushed at the start
  (`CHAOS_DATABASE_URL`, default `postgres://postgres@127.0.0.1:5432/ha_chaos`;
  `CHAOS_REDIS_URL`, default `redis://127.0.0.1:6379/3`), and restarts those
  *servers*: where others share them, give it servers of its own or leave the
  restarts out with `--skip restart-postgres restart-redis`.
- Logs of every process: `var/chaos/`.

Each section below is rewritten by the run of its size; "Known gaps" in each
names every fault kind that was not survived in that run.
"""


@dataclass(frozen=True)
class ProcessMemory:
    slot: str
    kind: str
    start_kb: int | None
    end_kb: int | None
    peak_kb: int
    incarnations: int


@dataclass(frozen=True)
class CrashNote:
    label: str
    at_s: float  # after the load started
    code: int | None
    log_path: str


@dataclass(frozen=True)
class FaultOutcome:
    record: FaultRecord
    text: str  # the fault as the schedule describes it
    at_s: float  # after the load started
    rotation: str  # "left after 4.2 s", "stayed", "already out", "—"
    last_delivery: str
    failover: str
    alerts: int


@dataclass
class Verdict:
    """Everything the run concluded."""

    title: str  # "Short run" / "Full run"
    seed: int
    date: str
    machine: str
    command: str  # Markdown
    setup: str  # processes, database, Redis, settings
    load_s: float
    wall_s: float
    rate: float
    tally: Tally
    failovers: Counter
    failover_requests: int
    unanswered_requests: int
    breaker_trips: int
    faults: list[FaultOutcome]
    availability: float
    samples: int
    down: Counter  # seconds down, by why
    alerts_sent: int
    alerts_received: int
    memory: list[ProcessMemory]
    crashes: list[CrashNote]
    gaps: dict[FaultKind, list[str]]
    drained: bool
    drain_s: float
    requests: int = 0
    retried_requests: int = 0
    client_errors: Counter = field(default_factory=Counter)

    @property
    def passed(self) -> bool:
        return not self.tally.lost and not self.tally.duplicates

    @property
    def untried(self) -> list[FaultKind]:
        tried = {outcome.record.kind for outcome in self.faults if not outcome.record.error}
        return [kind for kind in FaultKind if kind not in tried]


def render(verdict: Verdict) -> str:
    """The whole verdict as one Markdown section."""
    parts = [
        render_header(verdict),
        render_messages(verdict),
        render_failovers(verdict),
        render_faults(verdict),
        render_memory(verdict),
        render_gaps(verdict),
    ]
    return "\n\n".join(part.strip("\n") for part in parts) + "\n"


def render_header(verdict: Verdict) -> str:
    tally = verdict.tally
    if verdict.passed:
        outcome = "**Verdict: passed** — nothing lost, nothing delivered twice."
    else:
        outcome = (
            f"**Verdict: FAILED** — {len(tally.lost)} lost, "
            f"{len(tally.duplicates)} delivered twice."
        )
    return "\n".join(
        [
            f"## {verdict.title}",
            "",
            f"- Date: {verdict.date}; {verdict.load_s / 60:.1f} min of load, "
            f"{verdict.wall_s / 60:.1f} min wall",
            f"- Seed: {verdict.seed} (replay with `--seed {verdict.seed}`)",
            f"- Machine: {verdict.machine}",
            f"- Command: {verdict.command}",
            f"- Setup: {verdict.setup}",
            "",
            outcome,
        ]
    )


def render_messages(verdict: Verdict) -> str:
    tally = verdict.tally
    rows = [
        ["submitted (accepted by the API)", f"{tally.submitted:,}"],
        ["delivered (the simulator's log)", f"{tally.delivered:,}"],
        ["delivered twice", f"{len(tally.duplicates):,}"],
        ["expired", f"{tally.expired:,}"],
        ["dead", f"{tally.dead:,}"],
        ["**lost** (neither delivered nor expired or dead)", f"**{len(tally.lost):,}**"],
        ["delivered, yet recorded dead or expired", f"{tally.delivered_but_failed:,}"],
        [
            "never confirmed to the client (of them, queued anyway)",
            f"{tally.unconfirmed:,} ({tally.unconfirmed_queued:,})",
        ],
        ["refused by the API (4xx)", f"{tally.refused:,}"],
        ["deliveries under keys the run never sent", f"{tally.unknown_deliveries:,}"],
    ]
    drain = (
        f"drained in {verdict.drain_s:.0f} s"
        if verdict.drained
        else (f"**not drained** after {verdict.drain_s:.0f} s")
    )
    text = [
        "### Messages",
        "",
        table(["figure", "count"], rows),
        "",
        f"Offered {verdict.rate:g} msg/s through the API ({verdict.requests:,} requests, "
        f"{verdict.retried_requests:,} retries with the same keys"
        + (
            f"; errors seen: {format_counter(verdict.client_errors)}"
            if verdict.client_errors
            else ""
        )
        + f"). After the load stopped the queue {drain}.",
    ]
    for title, reasons in (("Dead", tally.dead_reasons), ("Expired", tally.expired_reasons)):
        if reasons:
            text += ["", f"{title}, by reason:", ""]
            text.append(
                table(["reason", "messages"], [[r, f"{n:,}"] for r, n in reasons.most_common()])
            )
    if tally.lost:
        shown = [[lost.key, lost.why] for lost in tally.lost[:10]]
        text += [
            "",
            f"Lost (first {len(shown)} of {len(tally.lost)}):",
            "",
            table(["key", "why"], shown),
        ]
    if tally.duplicates:
        shown = [[d.key, " → ".join(d.sessions)] for d in tally.duplicates[:10]]
        text += [
            "",
            f"Delivered twice (first {len(shown)} of {len(tally.duplicates)}):",
            "",
            table(["key", "sessions, in order"], shown),
        ]
    return "\n".join(text)


def render_failovers(verdict: Verdict) -> str:
    counts = verdict.failovers
    rows = [
        ["started", f"{sum(counts.values()):,}"],
        ["completed", f"{counts.get('completed', 0):,}"],
        ["rolled back", f"{counts.get('rolled-back', 0):,}"],
        ["failed", f"{counts.get('failed', 0):,}"],
        ["still in progress at the end", f"{counts.get('in-progress', 0):,}"],
        ["asked for by the prober", f"{verdict.failover_requests:,}"],
        ["asked for, no outcome recorded within 60 s", f"{verdict.unanswered_requests:,}"],
        ["circuit breakers tripped", f"{verdict.breaker_trips:,}"],
    ]
    return "\n".join(
        [
            "### Failovers, availability, alerts",
            "",
            table(["failovers", "count"], rows),
            "",
            f"Availability: **{verdict.availability * 100:.2f} %** of {verdict.samples:,} "
            "sampled seconds had at least one routable master and a draining queue "
            "(nothing waiting, or something sent since the second before; a second the "
            "database could not be read counts as down)."
            + (f" Down: {format_counter(verdict.down, 's')}." if verdict.down else ""),
            "",
            f"Alerts: {verdict.alerts_sent:,} notices delivered (AlertDelivery rows sent); "
            f"the run's webhook received {verdict.alerts_received:,}.",
        ]
    )


def render_faults(verdict: Verdict) -> str:
    rows = [
        [
            str(o.record.index),
            f"{o.at_s:.1f} s",
            o.text,
            o.record.error or o.record.detail or "done",
            o.rotation,
            o.last_delivery,
            o.failover,
            str(o.alerts),
        ]
        for o in verdict.faults
    ]
    headers = ["#", "at", "fault", "injection", "master out of rotation"]
    headers += ["last delivery on it", "failover", "alerts sent"]
    by_kind = Counter(o.record.kind for o in verdict.faults)
    kinds = [
        [str(kind), str(by_kind.get(kind, 0)), kind_outcome(verdict, kind, by_kind.get(kind, 0))]
        for kind in FaultKind
    ]
    crashes = [
        f"- {c.label} exited with code {c.code} at {c.at_s:.1f} s (log: `{c.log_path}`)"
        for c in verdict.crashes
    ]
    return "\n".join(
        [
            "### Faults",
            "",
            table(headers, rows) if rows else "No faults were scheduled.",
            "",
            "Times are seconds after the load started. *Master out of rotation*: from "
            "the fault to the event that took the master out (health left healthy, or "
            "sends ejected it). *Last delivery on it*: from the fault to the last message "
            "its session took while faulted. *Alerts sent*: notices delivered between "
            "this fault and the next.",
            "",
            table(["fault kind", "injected", "outcome"], kinds),
            "",
            "Processes that crashed on their own (restarted by the run):" if crashes else "",
            *crashes,
        ]
    )


def kind_outcome(verdict: Verdict, kind: FaultKind, injected: int) -> str:
    if kind in verdict.gaps:
        return "not survived: " + "; ".join(verdict.gaps[kind])
    return "survived" if injected else "not tried"


def render_memory(verdict: Verdict) -> str:
    rows = [
        [
            m.slot,
            kb(m.start_kb),
            kb(m.end_kb),
            change(m.start_kb, m.end_kb) if m.incarnations == 1 else "restarted",
            kb(m.peak_kb),
            str(m.incarnations),
        ]
        for m in verdict.memory
    ]
    return "\n".join(
        [
            "### Memory (RSS) per process",
            "",
            table(["process", "start", "end", "change", "peak", "incarnations"], rows),
            "",
            "VmRSS from /proc, summed over the process group (a django-q2 cluster with its "
            "workers). A killed process restarts with a fresh heap, so only a slot that "
            "was never restarted shows growth over the whole run.",
        ]
    )


def render_gaps(verdict: Verdict) -> str:
    lines = ["### Known gaps", ""]
    for kind, problems in verdict.gaps.items():
        lines.append(f"- **{kind}** not survived: {'; '.join(problems)}.")
    if verdict.untried:
        lines.append(f"- Not tried in this run: {', '.join(map(str, verdict.untried))}.")
    if not verdict.drained:
        lines.append("- The queue did not drain before the deadline.")
    if len(lines) == 2:
        lines.append("None: every fault kind was injected and survived.")
    return "\n".join(lines)


def format_counter(counter: Counter, unit: str = "") -> str:
    return ", ".join(f"{name}: {n:,}{unit and ' ' + unit}" for name, n in counter.most_common())


def kb(value: int | None) -> str:
    return "—" if value is None else f"{value / 1024:,.0f} MiB"


def change(start: int | None, end: int | None) -> str:
    if start is None or end is None:
        return "—"
    return f"{(end - start) / 1024:+,.0f} MiB"


def write_report(path: Path, block: str, content: str) -> None:
    """Put ``content`` into the named block of the report, creating the file with its intro."""
    document = path.read_text() if path.exists() else ""
    if not document.strip():
        document = INTRO
    path.write_text(replace_section(document, block, content))
