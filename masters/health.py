"""The health state machine as pure functions: thresholds in, next state out.

healthy / degraded / failed, plus unknown (never probed) and maintenance
(drained by an operator, probes are recorded but change nothing). The rules:

- a failed or degraded probe takes a healthy master to degraded at once
  (no new messages from that moment), and to failed after ``fall``
  consecutive failures;
- recovery needs ``rise`` consecutive successes (``flap_rise`` while the
  master is flapping, so a flapping session does not bounce traffic on every
  flap); an unknown master becomes healthy on its first success.

Model methods (``Master.observe``) apply these and write the Event rows.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from django.conf import settings

from masters.choices import HealthStatus, Severity


@dataclass(frozen=True)
class Thresholds:
    fall: int = 3
    rise: int = 2
    flap_window_s: int = 300
    flap_limit: int = 4
    flap_rise: int = 6
    send_error_limit: int = 5
    send_ejection_s: int = 30

    @classmethod
    def from_settings(cls) -> Thresholds:
        names = cls.__dataclass_fields__
        return cls(**{key: value for key, value in settings.HEALTH.items() if key in names})


@dataclass(frozen=True)
class HealthState:
    status: str
    failures: int = 0
    successes: int = 0


@dataclass(frozen=True)
class Observation:
    """One health signal: a probe result, a gateway webhook or a passive send signal."""

    status: str  # a HealthStatus.PROBE_RESULTS value
    at: datetime
    detail: str = ""
    latency_ms: float | None = None
    source: str = "probe"


def next_health(
    state: HealthState,
    result: str,
    thresholds: Thresholds,
    is_flapping: Callable[[], bool] = lambda: False,
) -> HealthState:
    """Return the state after one probe result; ``is_flapping`` is asked only when rising."""
    if result == HealthStatus.HEALTHY:
        # Counted only as far as any rule looks, so a steady master's row stops changing.
        successes = min(state.successes + 1, max(thresholds.rise, thresholds.flap_rise))
        return HealthState(_risen(state, successes, thresholds, is_flapping), 0, successes)
    failures = state.failures + 1
    return HealthState(_fallen(state.status, failures, thresholds), failures, 0)


def _risen(
    state: HealthState, successes: int, thresholds: Thresholds, is_flapping: Callable[[], bool]
) -> str:
    if state.status in {HealthStatus.HEALTHY, HealthStatus.MAINTENANCE}:
        return state.status
    if state.status == HealthStatus.UNKNOWN:
        return HealthStatus.HEALTHY
    if successes < thresholds.rise:
        return state.status
    if successes < thresholds.flap_rise and is_flapping():
        return state.status
    return HealthStatus.HEALTHY


def _fallen(status: str, failures: int, thresholds: Thresholds) -> str:
    if status == HealthStatus.MAINTENANCE:
        return status
    if failures >= thresholds.fall:
        return HealthStatus.FAILED
    if status in {HealthStatus.HEALTHY, HealthStatus.UNKNOWN}:
        return HealthStatus.DEGRADED
    return status


def transition_severity(new_status: str) -> str:
    """Severity of the Event for a move into ``new_status``."""
    return {
        HealthStatus.FAILED: Severity.CRITICAL,
        HealthStatus.DEGRADED: Severity.WARNING,
    }.get(new_status, Severity.INFO)
