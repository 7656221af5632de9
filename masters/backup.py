"""Backup selection as a pure function over plain data: no database.

When a master fails, its pending work moves to one backup. ``choose_backup``
picks it from a snapshot of the other masters and says, for every master it
looked at, why it was chosen or skipped: the failover orchestration stores
that ``Choice`` on the failover's record, so an operator can read afterwards
why the work went where it went.

Eligible: active, healthy, not the failed master, not excluded by the caller
(e.g. already tried in this cascade), and not held down (it failed over
recently, so it gets no work back before its hold-down ends; otherwise a
flapping pair would toss the same messages back and forth).

When nothing is eligible the choice is ``None``: the messages stay in the
queue and wait until a master can take them.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from urllib.parse import urlsplit

from masters.balancing import region_code
from masters.choices import HealthStatus

DEFAULT_PORTS = {"http": 80, "https": 443}


@dataclass(frozen=True, slots=True)
class BackupCandidate:
    """One master as backup selection sees it (the failed one included)."""

    id: int
    name: str
    failover_priority: int  # lower is tried first
    region: str
    is_active: bool
    health_status: str
    gateway_host: str  # gateway_host() of the URL the gateway client uses; "" if none
    rate_per_s: float  # its send limit
    current_rate_per_s: float  # what it sends now: headroom = rate_per_s - this
    # It failed over recently: it may not receive work back before this time.
    held_down_until: datetime | None = None
    excluded: bool = False  # ruled out by the caller, e.g. already tried in this cascade

    @property
    def headroom(self) -> float:
        return self.rate_per_s - self.current_rate_per_s


@dataclass(frozen=True, slots=True)
class Choice:
    """The chosen backup (None: none left, messages wait) and why, per master.

    ``reasons`` is keyed by ``str(id)`` so that it survives a round trip
    through JSON (an Event's or FailoverEvent's JSONField) unchanged: JSON
    object keys are always strings.
    """

    backup_id: int | None
    reasons: dict[str, str]


def choose_backup(
    failed: BackupCandidate, candidates: list[BackupCandidate], *, now: datetime
) -> Choice:
    """Choose the backup for ``failed`` among ``candidates``, with a reason for each.

    Eligible candidates are ranked by, in this order:

    1. gateway host: a candidate on another gateway host than the failed
       master beats every candidate on the same host; same-host candidates are
       used only when no other-host candidate is eligible;
    2. failover priority, lower first;
    3. region: the failed master's region first;
    4. headroom (rate limit minus current rate), larger first;
    5. id, lower first, so the choice is deterministic.

    A candidate with no headroom stays eligible: the dispatcher's rate limit
    makes its queue wait, which is no worse than waiting unassigned.
    """
    if len({c.id for c in candidates}) != len(candidates):
        raise ValueError("candidates must have distinct ids")
    reasons: dict[str, str] = {}
    eligible: list[BackupCandidate] = []
    for candidate in candidates:
        skipped = _skip_reason(failed, candidate, now)
        if skipped:
            reasons[str(candidate.id)] = skipped
        else:
            eligible.append(candidate)
    if not eligible:
        return Choice(None, reasons)
    # Host comes before failover priority: a backup exists to survive the
    # fault that took the failed master, and the commonest fault is its
    # gateway (container crashed, host down). A same-host backup most likely
    # shares it, and the moved messages would then have to move again (or be
    # stuck behind a hold-down). So a master that can send beats a preferred
    # one that probably cannot; priority orders masters that are equally independent.
    ranked = sorted(eligible, key=lambda c: _rank(failed, c))
    chosen = ranked[0]
    reasons[str(chosen.id)] = "chosen: " + _describe(failed, chosen)
    for other in ranked[1:]:
        reasons[str(other.id)] = _ranked_lower(failed, other, chosen)
    return Choice(chosen.id, {str(c.id): reasons[str(c.id)] for c in candidates})


def gateway_host(url: str) -> str:
    """Return the ``host:port`` of a gateway URL, lower-case, default port filled in.

    Two masters whose URLs differ only in case or an explicit default port
    (``http://GW:80`` and ``http://gw/``) share a gateway. No DNS lookup:
    ``localhost`` and ``127.0.0.1`` count as different hosts. "" for a blank
    or unparseable URL.
    """
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError:  # a bad port or IPv6 literal
        return ""
    host = (parts.hostname or "").rstrip(".")
    if not host:
        return ""
    if ":" in host:  # an IPv6 literal keeps its brackets next to a port
        host = f"[{host}]"
    port = port or DEFAULT_PORTS.get(parts.scheme.lower())
    return f"{host}:{port}" if port else host


def _skip_reason(failed: BackupCandidate, candidate: BackupCandidate, now: datetime) -> str:
    """Return why ``candidate`` cannot take the work, or "" if it can."""
    if candidate.id == failed.id:
        return "is the failed master"
    if candidate.excluded:
        return "excluded from this failover (already tried or ruled out)"
    if not candidate.is_active:
        return "inactive"
    if candidate.health_status not in HealthStatus.ROUTABLE:
        return f"not healthy ({candidate.health_status})"
    until = candidate.held_down_until
    if until is not None and now < until:
        shown = until.strftime("%H:%M:%S" if until.date() == now.date() else "%Y-%m-%d %H:%M:%S")
        return f"held down until {shown} after a recent failover"
    return ""


def _rank(failed: BackupCandidate, c: BackupCandidate) -> tuple:
    return (
        _same_host(failed, c),
        c.failover_priority,
        not _same_region(failed, c),
        -c.headroom,
        c.id,
    )


def _same_host(failed: BackupCandidate, c: BackupCandidate) -> bool:
    # A failed master without a gateway shares no host with anyone.
    return bool(failed.gateway_host) and c.gateway_host == failed.gateway_host


def _same_region(failed: BackupCandidate, c: BackupCandidate) -> bool:
    """Compare regions as the balancer reads them: "UAE" and "ae" are one region."""
    if not failed.region.strip() or not c.region.strip():
        return False
    return _region_key(failed.region) == _region_key(c.region)


def _region_key(region: str) -> str:
    return region_code(region) or " ".join(region.split()).upper()


def _describe(failed: BackupCandidate, c: BackupCandidate) -> str:
    if _same_region(failed, c):
        region = f"same region {c.region}"
    else:
        region = f"other region {c.region or '(none)'}"
    if _same_host(failed, c):
        host = f"same gateway host {c.gateway_host} as the failed master (no other host left)"
    else:
        host = "other gateway host"
    return (
        f"failover priority {c.failover_priority}, {region}, {host}, headroom {_rate(c.headroom)}/s"
    )


def _ranked_lower(failed: BackupCandidate, c: BackupCandidate, chosen: BackupCandidate) -> str:
    """Say which ranking key put ``c`` behind ``chosen`` (the first that differs)."""
    if _same_host(failed, c) and not _same_host(failed, chosen):
        return (
            f"same gateway host {c.gateway_host} as the failed master "
            "(used only if nothing else is left)"
        )
    if c.failover_priority != chosen.failover_priority:
        return f"ranked lower: failover priority {c.failover_priority} > {chosen.failover_priority}"
    if _same_region(failed, c) != _same_region(failed, chosen):
        return (
            f"ranked lower: region {c.region or '(none)'} is not the failed master's "
            f"{failed.region}, {chosen.name} is in it"
        )
    if c.headroom != chosen.headroom:
        return (
            f"ranked lower: headroom {_rate(c.headroom)}/s < {_rate(chosen.headroom)}/s "
            f"of {chosen.name}"
        )
    return f"ranked lower: same rank as {chosen.name}, the lower id wins"


def _rate(value: float) -> str:
    """Format a rate for a sentence: 180, 12.5, -3."""
    rounded = round(value, 1)
    return str(int(rounded)) if rounded == int(rounded) else str(rounded)
