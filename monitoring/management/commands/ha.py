"""The operators' terminal view: ``ha status``, ``ha load``, ``ha report [--since 24h]``.

Readable aligned tables by default; ``--json`` prints one JSON document for
scripts (datetimes in ISO 8601, durations in seconds, shares in %).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from django.core.management.base import BaseCommand, CommandError
from django.core.serializers.json import DjangoJSONEncoder
from django.utils import timezone

from masters.models import Master
from monitoring import reports

ACTIONS = ("status", "load", "report")


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """Lay rows out in columns: text left-aligned, numbers right-aligned."""
    cells = [[_cell(value) for value in row] for row in rows]
    widths = [max([len(h), *(len(row[i]) for row in cells)]) for i, h in enumerate(headers)]
    numeric = [
        bool(rows) and all(isinstance(row[i], int | float) or row[i] is None for row in rows)
        for i in range(len(headers))
    ]

    def line(values: Sequence[str]) -> str:
        parts = [
            value.rjust(width) if right else value.ljust(width)
            for value, width, right in zip(values, widths, numeric, strict=True)
        ]
        return "  ".join(parts).rstrip()

    rule = "  ".join("-" * width for width in widths)
    return "\n".join([line(headers), rule, *(line(row) for row in cells)])


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.1f}"
    if isinstance(value, datetime):
        return timezone.localtime(value).strftime("%Y-%m-%d %H:%M:%S")
    return str(value)


class Command(BaseCommand):
    help = "Show failover status, load metrics or the health report (add --json for scripts)."

    def add_arguments(self, parser) -> None:
        parser.add_argument("action", choices=ACTIONS, help="status | load | report")
        parser.add_argument(
            "--since",
            default="",
            help="report: the period, e.g. 24h, 7d, 30d (default 24h); "
            "load: the period for messages sent (default 1h)",
        )
        parser.add_argument(
            "--json", action="store_true", dest="as_json", help="print JSON instead of tables"
        )

    def handle(self, *args: Any, action: str, since: str, as_json: bool, **options: Any) -> None:
        now = timezone.now()
        try:
            data = getattr(self, f"collect_{action}")(now, since)
        except reports.PeriodError as error:
            raise CommandError(f"--{error}") from None
        if as_json:
            self.stdout.write(json.dumps(data, cls=DjangoJSONEncoder, indent=2))
        else:
            getattr(self, f"print_{action}")(data)

    # --- status -----------------------------------------------------------------------------

    def collect_status(self, now: datetime, since: str) -> dict:
        masters = Master.objects.order_by("priority", "external_id")
        return {
            "generated_at": now,
            "masters": [
                {
                    "id": m.external_id,
                    "display_name": m.display_name,
                    "role": m.role,
                    "health_status": m.health_status,
                    "health_since": m.health_changed_at,
                    "active": m.is_active,
                    "consecutive_failures": m.consecutive_failures,
                    "last_check_at": m.last_check_at,
                    "last_response_ms": m.last_response_ms,
                    "breaker_open": m.breaker_tripped_at is not None,
                    "held_down_until": m.failover_hold_until
                    if m.failover_hold_until and m.failover_hold_until > now
                    else None,
                }
                for m in masters
            ],
            "active_failovers": [reports.failover_row(f) for f in reports.active_failovers(now)],
        }

    def print_status(self, data: dict) -> None:
        rows = [
            [
                m["id"],
                m["role"],
                m["health_status"],
                m["health_since"],
                m["consecutive_failures"],
                m["last_response_ms"],
                "OPEN" if m["breaker_open"] else "closed",
                m["active"],
            ]
            for m in data["masters"]
        ]
        headers = ["master", "role", "health", "since", "failures", "resp ms", "breaker", "active"]
        self.stdout.write(table(headers, rows))
        self.stdout.write("")
        failovers = data["active_failovers"]
        if not failovers:
            self.stdout.write("Active failovers: none")
            return
        self.stdout.write("Active failovers:")
        self.stdout.write(self._failover_table(failovers))

    def _failover_table(self, failovers: list[dict]) -> str:
        rows = [
            [
                f["id"],
                f["failed"],
                f["backup"] or "(queue)",
                f["status"],
                f["started_at"],
                f["duration_ms"],
                f["moved_messages"],
                f["moved_affinities"],
                "auto" if f["automatic"] else f["initiated_by"] or "operator",
            ]
            for f in failovers
        ]
        headers = ["id", "failed", "backup", "status", "started", "ms", "messages", "conv", "by"]
        return table(headers, rows)

    # --- load -------------------------------------------------------------------------------

    def collect_load(self, now: datetime, since: str) -> dict:
        start = now - reports.parse_since(since or "1h")
        latest = reports.latest_load()
        sent = reports.sent_by_master(start, now)
        total = sum(sent.values())
        rows = []
        for m in Master.objects.order_by("priority", "external_id"):
            metric = latest.get(m.pk)
            rows.append(
                {
                    "id": m.external_id,
                    "health_status": m.health_status,
                    "share_pct": round(metric.share_pct, 3) if metric else None,
                    "queue_length": metric.queue_length if metric else None,
                    "in_flight": metric.in_flight if metric else None,
                    "throughput_per_s": round(metric.throughput_per_s, 3) if metric else None,
                    "latency_ms": None
                    if metric is None or metric.latency_ms is None
                    else round(metric.latency_ms, 1),
                    "sampled_at": metric.recorded_at if metric else None,
                    "sent": sent.get(m.pk, 0),
                    "sent_share_pct": round(100 * sent.get(m.pk, 0) / total, 3) if total else 0.0,
                }
            )
        return {"generated_at": now, "since": start, "total_sent": total, "masters": rows}

    def print_load(self, data: dict) -> None:
        rows = [
            [
                m["id"],
                m["health_status"],
                m["share_pct"],
                m["queue_length"],
                m["in_flight"],
                m["throughput_per_s"],
                m["latency_ms"],
                m["sent"],
                m["sent_share_pct"],
            ]
            for m in data["masters"]
        ]
        headers = ["master", "health", "share %", "queue", "in flight", "msg/s", "latency ms"]
        headers += ["sent", "sent %"]
        self.stdout.write("Latest load sample per master; sent since " + _cell(data["since"]))
        self.stdout.write(table(headers, rows))

    # --- report -----------------------------------------------------------------------------

    def collect_report(self, now: datetime, since: str) -> dict:
        return reports.build_report(now - reports.parse_since(since or "24h"), now, now)

    def print_report(self, data: dict) -> None:
        period = data["period"]
        totals = data["totals"]
        self.stdout.write(
            f"Health report {_cell(period['start'])} to {_cell(period['end'])}: "
            f"{totals['sent']} sent, {totals['incidents']} incidents, "
            f"{totals['failovers']} failovers"
        )

        def human(seconds: float | None) -> str | None:
            return None if seconds is None else reports.human_duration(seconds)

        rows = [
            [
                m["id"],
                m["health_status"],
                m["uptime_pct"],
                m["incidents"],
                human(m["downtime_s"]),
                human(m["mttr_s"]),
                m["failovers"],
                m["sent"],
                m["share_pct"],
            ]
            for m in data["masters"]
        ]
        headers = ["master", "health", "uptime %", "incidents", "down", "mttr", "failovers"]
        headers += ["sent", "share %"]
        self.stdout.write("")
        self.stdout.write(table(headers, rows))
        self.stdout.write("")
        self.stdout.write("Incidents:" if data["incidents"] else "Incidents: none")
        if data["incidents"]:
            incidents = [
                [i["master"], i["started_at"], i["ended_at"] or "ongoing", human(i["duration_s"])]
                for i in data["incidents"]
            ]
            self.stdout.write(table(["master", "failed at", "healthy at", "took"], incidents))
        self.stdout.write("")
        self.stdout.write("Failovers:" if data["failovers"] else "Failovers: none")
        if data["failovers"]:
            self.stdout.write(self._failover_table(data["failovers"]))
