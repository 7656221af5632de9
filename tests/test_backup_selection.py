"""Backup selection as a pure function: no database."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest

from masters.backup import BackupCandidate, Choice, choose_backup, gateway_host

NOW = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)
FAILED_HOST = "127.0.0.1:3000"


def master(id: int, **fields) -> BackupCandidate:
    """A healthy, active master in UAE on its own gateway host, 200/s limit, 20/s used."""
    values = {
        "name": f"m{id}",
        "failover_priority": 1,
        "region": "UAE",
        "is_active": True,
        "health_status": "healthy",
        "gateway_host": f"10.0.0.{id}:3000",
        "rate_per_s": 200.0,
        "current_rate_per_s": 20.0,
    } | fields
    return BackupCandidate(id=id, **values)


FAILED = master(1, health_status="failed", gateway_host=FAILED_HOST)


def choose(*candidates: BackupCandidate, failed: BackupCandidate = FAILED) -> Choice:
    return choose_backup(failed, list(candidates), now=NOW)


# --- ranking ---------------------------------------------------------------------


def test_it_picks_the_lowest_failover_priority():
    choice = choose(master(2, failover_priority=3), master(3, failover_priority=2))
    assert choice.backup_id == 3
    assert choice.reasons["2"] == "ranked lower: failover priority 3 > 2"


def test_same_region_as_the_failed_master_breaks_a_priority_tie():
    choice = choose(master(2, region="EU"), master(3, region="UAE"))
    assert choice.backup_id == 3
    assert (
        choice.reasons["2"] == "ranked lower: region EU is not the failed master's UAE, m3 is in it"
    )


def test_region_names_match_the_way_the_balancer_reads_them():
    choice = choose(master(2, region="EU"), master(3, region=" ae "))
    assert choice.backup_id == 3


def test_a_failed_master_without_a_region_shares_it_with_no_one():
    choice = choose(master(2, region="", current_rate_per_s=0), master(3, region=""))
    assert choice.backup_id == 2  # headroom decides, not an empty "region match"


def test_more_headroom_breaks_the_remaining_tie():
    choice = choose(master(2, current_rate_per_s=150), master(3, current_rate_per_s=20))
    assert choice.backup_id == 3
    assert choice.reasons["2"] == "ranked lower: headroom 50/s < 180/s of m3"


def test_headroom_is_the_limit_minus_what_it_sends_now_not_the_limit_alone():
    busy_but_big = master(2, rate_per_s=500, current_rate_per_s=450)
    idle_but_small = master(3, rate_per_s=100, current_rate_per_s=0)
    assert choose(busy_but_big, idle_but_small).backup_id == 3


def test_an_exact_tie_goes_to_the_lower_id_whatever_the_input_order():
    assert choose(master(3), master(2)).backup_id == 2
    assert choose(master(2), master(3)).backup_id == 2
    assert (
        choose(master(3), master(2)).reasons["3"]
        == "ranked lower: same rank as m2, the lower id wins"
    )


def test_a_master_on_another_gateway_host_beats_a_better_priority_on_the_failed_host():
    same_host = master(2, failover_priority=1, gateway_host=FAILED_HOST)
    other_host = master(3, failover_priority=5, region="EU")
    choice = choose(same_host, other_host)
    assert choice.backup_id == 3
    assert choice.reasons["2"] == (
        "same gateway host 127.0.0.1:3000 as the failed master (used only if nothing else is left)"
    )


def test_a_master_on_the_failed_host_is_used_when_nothing_else_is_left():
    same_host = master(2, gateway_host=FAILED_HOST)
    choice = choose(same_host, master(3, health_status="degraded"))
    assert choice.backup_id == 2
    assert choice.reasons["2"] == (
        "chosen: failover priority 1, same region UAE, same gateway host 127.0.0.1:3000 "
        "as the failed master (no other host left), headroom 180/s"
    )


def test_several_same_host_last_resorts_are_ranked_by_priority_among_themselves():
    choice = choose(
        master(2, failover_priority=4, gateway_host=FAILED_HOST),
        master(3, failover_priority=2, gateway_host=FAILED_HOST),
    )
    assert choice.backup_id == 3
    assert choice.reasons["2"] == "ranked lower: failover priority 4 > 2"


def test_a_failed_master_without_a_gateway_shares_a_host_with_no_one():
    no_gateway = master(1, health_status="failed", gateway_host="")
    choice = choose(master(2, gateway_host="", failover_priority=1), master(3), failed=no_gateway)
    assert choice.backup_id == 2


def test_the_chosen_reason_names_every_key_that_ranked_it():
    choice = choose(master(2, failover_priority=2, region="EU", current_rate_per_s=12.5))
    assert choice.reasons == {
        "2": "chosen: failover priority 2, other region EU, other gateway host, headroom 187.5/s"
    }


# --- skipped masters -------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ({"health_status": "failed"}, "not healthy (failed)"),
        ({"health_status": "degraded"}, "not healthy (degraded)"),
        ({"health_status": "maintenance"}, "not healthy (maintenance)"),
        ({"health_status": "unknown"}, "not healthy (unknown)"),
        ({"is_active": False}, "inactive"),
        ({"excluded": True}, "excluded from this failover (already tried or ruled out)"),
        (
            {"held_down_until": NOW + timedelta(minutes=3, seconds=10)},
            "held down until 12:03:10 after a recent failover",
        ),
    ],
)
def test_an_ineligible_master_is_skipped_with_its_reason(fields, reason):
    choice = choose(master(2, failover_priority=1, **fields), master(3, failover_priority=9))
    assert choice.backup_id == 3
    assert choice.reasons["2"] == reason


def test_the_failed_master_itself_is_skipped_even_if_it_looks_healthy():
    looks_fine = master(1, health_status="healthy", gateway_host="10.9.9.9:3000")
    choice = choose(looks_fine, master(2, failover_priority=9))
    assert choice.backup_id == 2
    assert choice.reasons["1"] == "is the failed master"


def test_a_hold_down_that_has_ended_no_longer_blocks():
    assert choose(master(2, held_down_until=NOW)).backup_id == 2
    assert choose(master(2, held_down_until=NOW - timedelta(seconds=1))).backup_id == 2


def test_a_hold_down_ending_on_another_day_shows_the_date():
    choice = choose(master(2, held_down_until=NOW + timedelta(days=1)))
    assert choice.reasons["2"] == "held down until 2025-06-02 12:00:00 after a recent failover"


def test_with_no_eligible_master_there_is_no_backup_and_every_master_says_why():
    choice = choose(
        FAILED,
        master(2, is_active=False),
        master(3, health_status="failed"),
        master(4, excluded=True),
    )
    assert choice.backup_id is None
    assert choice.reasons == {
        "1": "is the failed master",
        "2": "inactive",
        "3": "not healthy (failed)",
        "4": "excluded from this failover (already tried or ruled out)",
    }


def test_with_no_candidates_at_all_there_is_no_backup():
    assert choose() == Choice(None, {})


# --- the record ------------------------------------------------------------------


def test_every_candidate_gets_exactly_one_reason_in_input_order():
    candidates = [
        master(5, failover_priority=3),
        master(2, is_active=False),
        master(4, gateway_host=FAILED_HOST),
        master(3),
        FAILED,
    ]
    choice = choose(*candidates)
    assert list(choice.reasons) == ["5", "2", "4", "3", "1"]
    assert choice.reasons["3"].startswith("chosen: ")
    assert sum(reason.startswith("chosen: ") for reason in choice.reasons.values()) == 1


def test_the_reasons_survive_a_json_round_trip_unchanged():
    choice = choose(master(2), master(3, health_status="failed"), FAILED)
    assert json.loads(json.dumps(choice.reasons)) == choice.reasons


def test_duplicate_candidate_ids_are_refused():
    with pytest.raises(ValueError, match="distinct ids"):
        choose(master(2), master(2))


# --- gateway host ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "host"),
    [
        ("http://127.0.0.1:3000", "127.0.0.1:3000"),
        ("http://127.0.0.1:3000/api/", "127.0.0.1:3000"),
        ("HTTP://WAHA.Example.COM/", "waha.example.com:80"),
        ("http://waha.example.com:80", "waha.example.com:80"),
        ("https://graph.facebook.com", "graph.facebook.com:443"),
        ("https://graph.facebook.com.:443/v21.0", "graph.facebook.com:443"),
        ("http://user:secret@gw.local:8080/x", "gw.local:8080"),
        ("http://[::1]:3000", "[::1]:3000"),
        ("https://[2001:DB8::1]", "[2001:db8::1]:443"),
        ("  http://gw:3000  ", "gw:3000"),
        ("", ""),
        ("not a url", ""),
        ("http://gw:notaport", ""),
    ],
)
def test_gateway_host_is_lower_case_host_and_port_with_defaults_filled_in(url, host):
    assert gateway_host(url) == host


def test_two_spellings_of_one_gateway_count_as_the_same_host():
    failed = master(1, health_status="failed", gateway_host=gateway_host("http://GW:80/"))
    same = master(2, gateway_host=gateway_host("http://gw"))
    choice = choose(same, master(3, failover_priority=9), failed=failed)
    assert choice.backup_id == 3
    assert choice.reasons["2"].startswith("same gateway host gw:80 ")
