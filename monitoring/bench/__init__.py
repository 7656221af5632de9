"""The benchmark (``make bench``): sections that measure the product and write docs/BENCHMARKS.md.

Each section is a module with ``run(ctx: harness.Context) -> report.Section``;
``manage.py ha_bench`` runs them in this order (``--only`` picks some).
"""

from __future__ import annotations

# Section name -> module. The name is the --only value and the report's marker.
SECTIONS: dict[str, str] = {
    "detection": "monitoring.bench.detection",
    "throughput": "monitoring.bench.throughput",
    "failover": "monitoring.bench.failover",
    "dashboard": "monitoring.bench.dashboard",
}
