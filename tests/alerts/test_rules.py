"""The plan's alert rules as pure functions: what fires for a given snapshot or event."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from masters.choices import EventKind, HealthStatus, Severity
from monitoring.alerts.choices import Rule
from monitoring.alerts.rules import (
    EventFact,
    MasterState,
    Snapshot,
    Thresholds,
    conditions,
    from_events,
)

NOW = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)
H, D, F, M = (
    HealthStatus.HEALTHY,
    HealthStatus.DEGRADED,
    HealthStatus.FAILED,
    HealthStatus.MAINTENANCE,
)


def master(pk: int, status: str = H, down_for: timedelta | None = None) -> MasterState:
    changed = NOW - down_for if down_for else NOW - timedelta(hours=1)
    return MasterState(pk, f"M{pk}", status, changed, "session closed" if status == F else "")


def snap(*masters: MasterState, **fields) -> Snapshot:
    return Snapshot(now=NOW, masters=masters, **fields)


def fired(snapshot: Snapshot) -> dict[str, str]:
    return {key: firing.severity for key, firing in conditions(snapshot).items()}


def test_healthy_masters_and_a_short_queue_fire_nothing():
    assert fired(snap(master(1), master(2), queue_length=1000)) == {}


def test_a_failed_master_is_a_critical_connection_lost():
    findings = conditions(snap(master(1), master(2, F, timedelta(minutes=1))))
    assert list(findings) == ["master.down:2"]
    down = findings["master.down:2"]
    assert (down.rule, down.severity, down.master_id) == (Rule.MASTER_DOWN, Severity.CRITICAL, 2)
    assert down.title == "Master connection lost: M2"
    assert "session closed" in down.detail


def test_a_degraded_master_is_not_lost():
    assert fired(snap(master(1), master(2, D))) == {}


def test_all_failed_masters_fire_all_down_besides_each_one():
    result = fired(snap(master(1, F, timedelta(minutes=1)), master(2, F, timedelta(minutes=1))))
    assert result == {
        "master.down:1": Severity.CRITICAL,
        "master.down:2": Severity.CRITICAL,
        "masters.all_down": Severity.CRITICAL,
    }


def test_a_master_in_maintenance_does_not_keep_all_down_from_firing():
    result = fired(snap(master(1, F, timedelta(minutes=1)), master(2, M)))
    assert "masters.all_down" in result


def test_no_masters_at_all_is_not_all_down():
    assert fired(snap()) == {}


def test_the_queue_warns_only_above_its_threshold():
    assert fired(snap(master(1), queue_length=1000)) == {}
    assert fired(snap(master(1), queue_length=1001)) == {"queue.high": Severity.WARNING}
    custom = Thresholds(queue_warning=10)
    assert fired(snap(master(1), queue_length=11, thresholds=custom)) == {
        "queue.high": Severity.WARNING
    }


def test_one_master_over_80_percent_of_the_load_is_an_imbalance():
    findings = conditions(snap(master(1), master(2), sent={1: 90, 2: 10}))
    assert list(findings) == ["load.share:1"]
    assert findings["load.share:1"].data["share_pct"] == 90.0
    assert fired(snap(master(1), master(2), sent={1: 80, 2: 20})) == {}


def test_the_load_share_needs_enough_messages_and_two_healthy_masters():
    assert fired(snap(master(1), master(2), sent={1: 9, 2: 1})) == {}, "too few messages"
    # With its peer failed, one master must carry everything: that is no imbalance.
    alone = fired(snap(master(1), master(2, D), sent={1: 100}))
    assert alone == {}


def test_several_failures_within_the_window_warn():
    assert fired(snap(master(1), failures={1: 2})) == {}
    findings = conditions(snap(master(1), failures={1: 3}))
    assert list(findings) == ["master.failures:1"]
    assert findings["master.failures:1"].severity == Severity.WARNING
    assert "3 times in the last 30 minutes" in findings["master.failures:1"].detail


def test_a_recovery_taking_over_five_minutes_warns():
    assert "master.recovery_slow:1" not in fired(snap(master(1, F, timedelta(minutes=5))))
    result = fired(snap(master(1, F, timedelta(minutes=5, seconds=1))))
    assert result["master.recovery_slow:1"] == Severity.WARNING
    custom = Thresholds(recovery_warning=timedelta(minutes=1))
    assert "master.recovery_slow:1" in fired(
        snap(master(1, F, timedelta(minutes=2)), thresholds=custom)
    )


def event(pk: int, kind: str, **data) -> EventFact:
    return EventFact(pk, kind, 7, f"{kind} happened", data, NOW, "Linda")


def test_a_failover_start_fires_critical_and_its_completion_resolves_it():
    firings, resolutions = from_events(
        [
            event(1, EventKind.FAILOVER_STARTED, failover=12),
            event(2, EventKind.FAILOVER_COMPLETED, failover=12),
        ]
    )
    assert [(f.key, f.rule, f.severity) for f in firings] == [
        ("failover:12", Rule.FAILOVER_INITIATED, Severity.CRITICAL),
        ("failover_complete:2", Rule.FAILOVER_COMPLETE, Severity.INFO),
    ]
    assert firings[0].title == "Failover initiated: Linda"
    assert [r.key for r in resolutions] == ["failover:12"]


def test_a_failed_failover_is_raised_and_ended_at_once():
    firings, resolutions = from_events([event(3, EventKind.NO_BACKUP, failover=13)])
    assert [f.key for f in firings] == ["failover:13"]
    assert resolutions[0].key == "failover:13"
    assert resolutions[0].reason.startswith("Failover failed")


def test_rebalancing_and_a_recovery_are_info():
    firings, _ = from_events(
        [
            event(4, EventKind.REBALANCED, share_pct=91.0),
            event(5, EventKind.HEALTH_CHANGED, **{"from": F, "to": H}),
            event(6, EventKind.HEALTH_CHANGED, **{"from": D, "to": H}),
            event(7, EventKind.HEALTH_CHANGED, **{"from": H, "to": F}),
        ]
    )
    assert [(f.key, f.severity) for f in firings] == [
        ("rebalanced:4", Severity.INFO),
        ("master_recovered:5", Severity.INFO),
    ]
    assert firings[1].title == "Master recovered: Linda"
