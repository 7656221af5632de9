"""Read the run's records (database, simulator) into plain records, and conclude the verdict.

The reading is I/O; ``conclude`` only feeds those records through the
pure functions of monitoring.chaos.reconcile into a ``Verdict``.
"""

from __future__ import annotations

import os
import shlex
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from django.db import DatabaseError, close_old_connections

from ha_portal.lib.http import HttpClient
from masters.choices import EventKind, HealthStatus
from masters.models import Event, FailoverEvent, Message
from monitoring.bench.harness import BASE_DIR, machine
from monitoring.chaos import reconcile as rc
from monitoring.chaos.verdict import CrashNote, FaultOutcome, ProcessMemory, Verdict
from monitoring.models import AlertDelivery, DeliveryStatus

if TYPE_CHECKING:
    from monitoring.chaos.faults import Injection
    from monitoring.chaos.run import Drive, Size, Stack

# The delivery log of a full run is tens of megabytes of JSON.
LOG_MAX_BYTES = 1024**3
LOG_TIMEOUT_S = 120.0
# A failover request with no failover or skip recorded this long after it went unanswered.
ANSWER_WITHIN_S = 60.0
OPEN_DELIVERIES = (DeliveryStatus.PENDING, DeliveryStatus.RETRYING)


@dataclass
class Records:
    """What the database holds at the end, as plain records."""

    rows: list[rc.Row]
    moves: list[rc.Move]
    failovers: list[rc.FailoverRecord]
    skipped: list[tuple[int, float]]  # failover.skipped and breaker events: (master, at)
    breaker_trips: int
    alerts_sent: list[float]


def read_records(masters: dict[str, int]) -> Records:
    """Read every message, the moves in and out of rotation, failovers and alert notices."""
    rows = [
        rc.Row(key or "", pk, status, error, created.timestamp(), updated.timestamp())
        for key, pk, status, error, created, updated in Message.objects.values_list(
            "idempotency_key", "pk", "status", "last_error", "created_at", "updated_at"
        ).iterator(chunk_size=5000)
    ]
    moves = [
        move
        for kind, master_id, data, at in Event.objects.filter(
            kind__in=[EventKind.HEALTH_CHANGED, EventKind.SEND_EJECTED], master__isnull=False
        ).values_list("kind", "master_id", "data", "created_at")
        if (move := to_move(kind, master_id, data, at.timestamp())) is not None
    ]
    failovers = [
        rc.FailoverRecord(master_id, status, started.timestamp())
        for master_id, status, started in FailoverEvent.objects.values_list(
            "failed_master_id", "status", "started_at"
        )
    ]
    quiet = Event.objects.filter(
        kind__in=[EventKind.FAILOVER_SKIPPED, EventKind.BREAKER_TRIPPED], master__isnull=False
    )
    skipped = [(m, at.timestamp()) for m, at in quiet.values_list("master_id", "created_at")]
    trips = Event.objects.filter(kind=EventKind.BREAKER_TRIPPED).count()
    sent = AlertDelivery.objects.filter(status=DeliveryStatus.SENT)
    alerts = [
        (at or created).timestamp() for at, created in sent.values_list("finished_at", "created_at")
    ]
    return Records(rows, moves, failovers, skipped, trips, alerts)


def to_move(kind: str, master_id: int, data: dict[str, Any], at: float) -> rc.Move | None:
    """Return the move in or out of rotation an event records, or None if it records neither."""
    if kind == EventKind.SEND_EJECTED:
        return rc.Move(at, master_id, left=True)
    was, now = data.get("from"), data.get("to")
    if was == HealthStatus.HEALTHY and now != HealthStatus.HEALTHY:
        return rc.Move(at, master_id, left=True)
    if now == HealthStatus.HEALTHY and was != HealthStatus.HEALTHY:
        return rc.Move(at, master_id, left=False)
    return None


async def read_deliveries(simulator_url: str) -> list[dict[str, Any]]:
    """Return the simulator's whole delivery log, oldest first."""
    async with HttpClient(limit=1, max_body_bytes=LOG_MAX_BYTES) as http:
        response = await http.request(
            "GET", f"{simulator_url}/_sim/messages", timeout=LOG_TIMEOUT_S
        )
    return response.json()


def write_samples(path: Path, samples: Sequence[rc.Sample], started: float) -> None:
    """Keep the per-second samples beside the logs, for a look at where availability went."""
    lines = ["seconds,reachable,routable,unsent,sent"]
    lines += [
        f"{s.at - started:.1f},{int(s.reachable)},{s.routable},{s.unsent},{s.sent}" for s in samples
    ]
    path.write_text("\n".join(lines) + "\n")


def alerts_pending() -> bool:
    """Say whether an alert notice is still waiting to go out (False if the database is down)."""
    close_old_connections()
    try:
        return AlertDelivery.objects.filter(status__in=OPEN_DELIVERIES).exists()
    except DatabaseError:
        return False


# --- the verdict --------------------------------------------------------------------------


def conclude(
    size: Size,
    seed: int,
    drive: Drive,
    records: Records,
    stack: Stack,
    setup: str,
    alerts_received: int,
    wall_s: float,
) -> Verdict:
    """Reconcile the records and put every figure of the verdict together."""
    submissions = drive.load.submissions
    deliveries = [
        rc.Delivered(d.get("idempotency_key"), d["session"], d["received_at"])
        for d in drive.deliveries
    ]
    tally = rc.tally_messages(
        {s.key: s.accepted for s in submissions},
        [s.key for s in submissions if s.refused],
        {s.key: s.first_try_at for s in submissions},
        records.rows,
        deliveries,
    )
    faults = [fault_record(i, stack.masters) for i in drive.injections]
    end = drive.samples[-1].at if drive.samples else drive.started + drive.load_s
    alerts = rc.in_windows(sorted(records.alerts_sent), faults, end)
    outcomes = [(f.master_id, f.started_at) for f in records.failovers] + records.skipped
    crash_times = [crash.at for crash in stack.fleet.crashes]
    dropped = rc.unanswered_requests(sorted(drive.requests), outcomes, ANSWER_WITHIN_S)
    missed = rc.undetected(faults, records.moves)
    availability, samples, down = rc.availability(drive.samples)
    return Verdict(
        title=size.title,
        seed=seed,
        date=datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        machine=machine(),
        command=command_line(sys.argv),
        setup=setup,
        load_s=drive.load_s,
        wall_s=wall_s,
        rate=round(size.messages / size.load_s, 2),
        tally=tally,
        failovers=rc.failover_counts(records.failovers),
        failover_requests=len(drive.requests),
        unanswered_requests=len(dropped),
        breaker_trips=records.breaker_trips,
        faults=[
            fault_outcome(fault, injection, drive, records, deliveries, count)
            for fault, injection, count in zip(faults, drive.injections, alerts, strict=True)
        ],
        availability=availability,
        samples=samples,
        down=down,
        alerts_sent=len(records.alerts_sent),
        alerts_received=alerts_received,
        memory=memory(stack),
        crashes=[
            CrashNote(c.label, c.at - drive.started, c.code, c.log_path)
            for c in stack.fleet.crashes
        ],
        gaps=rc.not_survived(faults, tally, crash_times, missed, dropped),
        drained=drive.drained,
        drain_s=drive.drain_s,
        requests=drive.load.requests,
        retried_requests=drive.load.retried_requests,
        client_errors=drive.load.errors,
    )


def fault_record(injection: Injection, masters: dict[str, int]) -> rc.FaultRecord:
    fault = injection.fault
    return rc.FaultRecord(
        index=fault.index,
        kind=fault.kind,
        target=fault.target,
        at=injection.at,
        healed_at=injection.healed_at,
        master_id=masters.get(fault.target) if fault.is_session else None,
        error=injection.error,
        detail=injection.detail,
    )


def fault_outcome(
    record: rc.FaultRecord,
    injection: Injection,
    drive: Drive,
    records: Records,
    deliveries: Sequence[rc.Delivered],
    alerts: int,
) -> FaultOutcome:
    rotation, last = "—", "—"
    if record.master_id is not None:
        status, seconds = rc.left_rotation(record, records.moves)
        rotation = f"after {seconds:.1f} s" if seconds is not None else status
        after = rc.last_delivery_after(record, record.target, deliveries)
        last = "none" if after is None else f"{after:.1f} s"
    return FaultOutcome(
        record=record,
        text=injection.fault.describe(),
        at_s=record.at - drive.started,
        rotation=rotation,
        last_delivery=last,
        failover=rc.failover_for(record, records.failovers),
        alerts=alerts,
    )


def memory(stack: Stack) -> list[ProcessMemory]:
    return [
        ProcessMemory(
            slot.name,
            slot.kind,
            slot.rss_start_kb,
            slot.rss_end_kb,
            slot.rss_peak_kb,
            slot.incarnation,
        )
        for slot in stack.fleet.slots.values()
    ]


def command_line(argv: Sequence[str]) -> str:
    """Return the command that started this run as Markdown, as a developer would type it."""
    python = Path(sys.executable)
    if python.is_relative_to(BASE_DIR):
        python = python.relative_to(BASE_DIR)
    command = f"{python} {shlex.join(argv)}"
    return f"`make chaos`, which runs `{command}`" if "MAKELEVEL" in os.environ else f"`{command}`"
