"""Operator actions in the API: the failover list, failing a master over, rolling it back."""

from __future__ import annotations

import json
import re
from datetime import timedelta
from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from masters.choices import FailoverStatus, HealthStatus, MessageStatus, Role
from masters.failover import checksum
from masters.models import ConversationAffinity, Event, FailoverEvent, Master, Message
from tests.api import API, bearer, get_json, issue_token, post_json
from tests.api.test_api_misc import ROOT, document, schema_problems
from tests.conftest import make_master

pytestmark = pytest.mark.django_db


@pytest.fixture
def operator() -> str:
    return issue_token("ops", can_operate=True)


@pytest.fixture
def bot() -> str:
    """A token without operator rights: it reads, but may not operate."""
    return issue_token("bot")


def queue(master: Master, count: int, status: str = MessageStatus.QUEUED) -> list[int]:
    return [
        Message.objects.create(
            to="+971501234567", text="hi", body_hash="-", master=master, status=status
        ).pk
        for _ in range(count)
    ]


def converse(master: Master, *contacts: str) -> None:
    expires = timezone.now() + timedelta(hours=1)
    for contact in contacts:
        ConversationAffinity.objects.create(contact=contact, master=master, expires_at=expires)


def snapshot() -> tuple:
    """Everything a failover or rollback writes."""
    return (
        sorted(Message.objects.values_list("pk", "master_id", "status", "epoch", "failover_id")),
        sorted(ConversationAffinity.objects.values_list("pk", "master_id", "failover_id")),
        sorted(Master.objects.values_list("pk", "role", "failover_hold_until")),
        sorted(FailoverEvent.objects.values_list("pk", "status", "detail")),
        Event.objects.count(),
    )


def record(failed: Master, minutes_ago: int, **fields: Any) -> FailoverEvent:
    """Record a past failover directly, as masters.failover would have."""
    started = timezone.now() - timedelta(minutes=minutes_ago)
    values = {
        "reason": "failed for over 30s",
        "status": FailoverStatus.COMPLETED,
        "started_at": started,
        "finished_at": started + timedelta(milliseconds=40),
        "duration_ms": 40.0,
    } | fields
    return FailoverEvent.objects.create(failed_master=failed, **values)


def fail_over(client, master: str, token: str, body: Any = None):
    return post_json(client, f"/masters/{master}/failover", "" if body is None else body, token)


def roll_back(client, event_id: int, token: str):
    return post_json(client, f"/failovers/{event_id}/rollback", "", token)


def listed(client, token: str, **params: Any) -> dict[str, Any]:
    response = get_json(client, "/failovers", token, **params)
    assert response.status_code == 200, response.json()
    return response.json()


# --- GET /failovers --------------------------------------------------------------------------


def test_the_list_shows_each_failover_newest_first_with_its_fields(client, bot, trio):
    a, b, c = trio
    operator = get_user_model().objects.create_user("amira")
    oldest = record(a, 30, backup_master=b, moved_messages=3, moved_affinities=1, checksum="ab")
    by_hand = record(c, 20, backup_master=b, automatic=False, initiated_by=operator)
    by_token = record(b, 10, automatic=False, detail={"api_token": "ops"}, reason="api:ops: x")
    no_backup = record(a, 5, status=FailoverStatus.FAILED, finished_at=None, duration_ms=None)

    body = listed(client, bot)

    assert [item["id"] for item in body["failovers"]] == [
        no_backup.pk,
        by_token.pk,
        by_hand.pk,
        oldest.pk,
    ]
    assert body["next_before"] is None
    assert body["failovers"][-1] == {
        "id": oldest.pk,
        "failed_master": {"id": "a", "display_name": "A"},
        "backup_master": {"id": "b", "display_name": "B"},
        "reason": "failed for over 30s",
        "status": "completed",
        "initiated_by": "automatic",
        "started_at": oldest.started_at.isoformat().replace("+00:00", "Z"),
        "finished_at": oldest.finished_at.isoformat().replace("+00:00", "Z"),
        "duration_ms": 40.0,
        "moved_messages": 3,
        "moved_affinities": 1,
        "checksum": "ab",
    }
    by_id = {item["id"]: item for item in body["failovers"]}
    assert by_id[by_hand.pk]["initiated_by"] == "amira"
    assert by_id[by_token.pk]["initiated_by"] == "api:ops"
    assert by_id[no_backup.pk]["backup_master"] is None
    assert by_id[no_backup.pk]["finished_at"] is None
    assert by_id[no_backup.pk]["checksum"] is None


def test_the_list_pages_with_limit_and_the_before_cursor(client, bot, trio):
    a, _, _ = trio
    made = [record(a, minutes).pk for minutes in (50, 40, 30, 20, 10)]
    newest_first = made[::-1]

    seen, pages, params = [], [], {"limit": 2}
    while True:
        body = listed(client, bot, **params)
        pages.append([item["id"] for item in body["failovers"]])
        seen += pages[-1]
        if body["next_before"] is None:
            break
        params = {"limit": 2, "before": body["next_before"]}

    assert pages == [newest_first[:2], newest_first[2:4], newest_first[4:]]
    assert seen == newest_first
    assert len(listed(client, bot)["failovers"]) == 5  # default limit 50


def test_the_list_breaks_ties_in_start_time_by_id(client, bot, trio):
    a, _, _ = trio
    same = timezone.now()
    made = [record(a, 0, started_at=same).pk for _ in range(3)]

    first = listed(client, bot, limit=2)
    rest = listed(client, bot, limit=2, before=first["next_before"])

    assert [item["id"] for item in first["failovers"] + rest["failovers"]] == made[::-1]


def test_the_list_filters_by_the_master_that_failed(client, bot, trio):
    a, b, c = trio
    of_a = record(a, 20, backup_master=b)
    record(c, 10, backup_master=a)
    record(b, 5)

    body = listed(client, bot, master="a")

    assert [item["id"] for item in body["failovers"]] == [of_a.pk]


def test_the_list_costs_the_same_queries_for_one_failover_or_many(client, bot, trio):
    a, b, c = trio
    user = get_user_model().objects.create_user("amira")
    cursor = record(a, 1, backup_master=b)
    record(a, 60, backup_master=b, initiated_by=user, automatic=False)
    listed(client, bot)  # the token's last_used_at is written once a minute: not measured

    def queries() -> tuple[int, int]:
        with CaptureQueriesContext(connection) as captured:
            body = listed(client, bot, master="a", before=cursor.pk)
        return len(body["failovers"]), len(captured)

    shown_one, one = queries()
    for minutes in range(30, 40):
        record(a, minutes, backup_master=c, initiated_by=user, automatic=False)
    shown_many, many = queries()

    assert (shown_one, shown_many) == (1, 11)
    assert many == one


@pytest.mark.parametrize(
    ("params", "fields"),
    [
        ({"limit": "0"}, {"limit": ["must be an integer from 1 to 500"]}),
        ({"limit": "501"}, {"limit": ["must be an integer from 1 to 500"]}),
        ({"limit": "ten"}, {"limit": ["must be an integer from 1 to 500"]}),
        ({"limit": "²"}, {"limit": ["must be an integer from 1 to 500"]}),
        ({"before": "-1"}, {"before": [f"must be an integer from 1 to {2**63 - 1}"]}),
        ({"before": "999999"}, {"before": ["no failover 999999"]}),
        ({"master": "zz"}, {"master": ["no master with id 'zz'"]}),
        ({"colour": "red", "limit": "0"}, {"colour": ["unknown field"], "limit": [
            "must be an integer from 1 to 500"]}),
    ],
)  # fmt: skip
def test_the_list_refuses_bad_parameters_with_422_naming_them(client, bot, trio, params, fields):
    response = get_json(client, "/failovers", bot, **params)

    assert response.status_code == 422
    assert response.json()["fields"] == fields


# --- who may operate ------------------------------------------------------------------------


def test_every_failover_endpoint_answers_401_without_a_token(client, trio):
    a, _, _ = trio
    record(a, 5)
    event = FailoverEvent.objects.get()
    before = snapshot()

    answers = [
        client.get(f"{API}/failovers"),
        client.post(f"{API}/masters/a/failover", "{}", content_type="application/json"),
        client.post(f"{API}/failovers/{event.pk}/rollback"),
    ]

    assert [response.status_code for response in answers] == [401, 401, 401]
    assert all("error" in response.json() for response in answers)
    assert snapshot() == before


def test_a_token_without_operator_rights_gets_403_and_nothing_changes(client, bot, trio):
    a, b, _ = trio
    queue(a, 2)
    event = record(a, 5, backup_master=b)
    before = snapshot()

    answers = [
        fail_over(client, "a", bot),
        fail_over(client, "a", bot, {"dry_run": True}),
        roll_back(client, event.pk, bot),
    ]

    assert [(r.status_code, r.json()) for r in answers] == [
        (403, {"error": "this token may not operate masters"})
    ] * 3
    assert snapshot() == before


# --- POST /masters/<id>/failover ------------------------------------------------------------


def test_a_dry_run_reports_what_would_move_and_changes_nothing(client, operator, trio):
    a, _, _ = trio
    moving = queue(a, 3) + queue(a, 1, MessageStatus.RETRYING)
    queue(a, 2, MessageStatus.SENT)
    converse(a, "+971501111111", "+971502222222")
    before = snapshot()

    response = fail_over(client, "a", operator, {"dry_run": True})

    assert response.status_code == 200
    body = response.json()
    assert body == {
        "dry_run": True,
        "failed_master": {"id": "a", "display_name": "A"},
        "backup_master": {"id": "b", "display_name": "B"},
        "messages": 4,
        "affinities": 2,
        "checksum": checksum(moving),
        "reasons": {"b": body["reasons"]["b"], "c": body["reasons"]["c"]},
    }
    assert body["reasons"]["b"].startswith("chosen: ")
    assert "ranked lower" in body["reasons"]["c"]
    assert snapshot() == before


def test_a_failover_moves_pending_messages_to_the_backup_and_returns_the_event(
    client, operator, trio
):
    a, b, _ = trio
    moving = queue(a, 3)
    sent = queue(a, 1, MessageStatus.SENT)
    converse(a, "+971501111111")

    response = fail_over(client, "a", operator, {"reason": "gateway host down"})

    assert response.status_code == 200
    event = FailoverEvent.objects.get()
    body = response.json()
    assert body == {
        "id": event.pk,
        "failed_master": {"id": "a", "display_name": "A"},
        "backup_master": {"id": "b", "display_name": "B"},
        "reason": "api:ops: gateway host down",
        "status": "completed",
        "initiated_by": "api:ops",
        "started_at": body["started_at"],
        "finished_at": body["finished_at"],
        "duration_ms": event.duration_ms,
        "moved_messages": 3,
        "moved_affinities": 1,
        "checksum": checksum(moving),
    }
    assert body["started_at"].endswith("Z") and body["finished_at"].endswith("Z")
    assert set(Message.objects.filter(pk__in=moving).values_list("master_id", flat=True)) == {b.pk}
    assert Message.objects.get(pk=sent[0]).master_id == a.pk
    assert ConversationAffinity.objects.get().master_id == b.pk
    assert Master.objects.get(pk=b.pk).role == Role.PRIMARY
    assert (event.automatic, event.initiated_by, event.detail["api_token"]) == (False, None, "ops")
    assert listed(client, operator)["failovers"] == [body]


def test_a_failover_without_a_body_uses_the_default_reason(client, operator, trio):
    queue(trio[0], 1)

    response = fail_over(client, "a", operator)

    assert response.status_code == 200
    assert response.json()["reason"] == "api:ops: manual failover via API"
    assert response.json()["moved_messages"] == 1


def test_a_failover_goes_to_the_backup_the_operator_names(client, operator, trio):
    a, _, c = trio
    moving = queue(a, 2)

    response = fail_over(client, "a", operator, {"backup": "c", "dry_run": False})

    assert response.status_code == 200
    assert response.json()["backup_master"] == {"id": "c", "display_name": "C"}
    assert set(Message.objects.filter(pk__in=moving).values_list("master_id", flat=True)) == {c.pk}


def test_a_dry_run_with_a_named_backup_previews_that_backup(client, operator, trio):
    queue(trio[0], 2)
    before = snapshot()

    body = fail_over(client, "a", operator, {"backup": "c", "dry_run": True}).json()

    assert body["backup_master"] == {"id": "c", "display_name": "C"}
    assert list(body["reasons"]) == ["c"]
    assert body["messages"] == 2
    assert snapshot() == before


def test_an_unknown_backup_is_refused_with_422_naming_backup(client, operator, trio):
    queue(trio[0], 2)
    before = snapshot()

    response = fail_over(client, "a", operator, {"backup": "zz"})

    assert response.status_code == 422
    assert response.json() == {
        "error": "invalid fields: backup",
        "fields": {"backup": ["no master with id 'zz'"]},
    }
    assert snapshot() == before


def test_a_named_backup_that_cannot_take_the_work_is_refused_with_422(client, operator, trio):
    a, _, c = trio
    queue(a, 2)
    Master.objects.filter(pk=c.pk).update(health_status=HealthStatus.FAILED)
    before = snapshot()

    response = fail_over(client, "a", operator, {"backup": "c"})

    assert response.status_code == 422
    assert response.json()["fields"] == {"backup": ["c not healthy (failed)"]}
    assert snapshot() == before


@pytest.mark.parametrize(
    ("body", "fields"),
    [
        ({"dry_run": "yes"}, {"dry_run": ["expected true or false"]}),
        ({"dry_run": 1}, {"dry_run": ["expected true or false"]}),
        ({"backup": 2}, {"backup": ["expected a string"]}),
        ({"backup": "a"}, {"backup": ["must be another master than the one failing over"]}),
        ({"reason": 5}, {"reason": ["expected a string"]}),
        ({"reason": "x" * 501}, {"reason": ["over 500 characters (501)"]}),
        ({"reason": "a\x00b"}, {"reason": ["must not contain NUL characters"]}),
        ({"dryrun": True, "backup": "zz"}, {"dryrun": ["unknown field"], "backup": [
            "no master with id 'zz'"]}),
    ],
)  # fmt: skip
def test_bad_failover_fields_are_refused_with_422_naming_each(client, operator, trio, body, fields):
    queue(trio[0], 1)
    before = snapshot()

    response = fail_over(client, "a", operator, body)

    assert response.status_code == 422
    assert response.json()["fields"] == fields
    assert snapshot() == before


@pytest.mark.parametrize(
    ("body", "content_type", "status"),
    [("[]", "application/json", 400), ("{", "application/json", 400), ("{}", "text/plain", 415)],
)
def test_a_failover_body_that_is_not_a_json_object_is_refused(
    client, operator, trio, body, content_type, status
):
    queue(trio[0], 1)
    before = snapshot()

    response = client.post(
        f"{API}/masters/a/failover", body, content_type=content_type, headers=bearer(operator)
    )

    assert response.status_code == status
    assert snapshot() == before


def test_a_failover_of_an_unknown_master_is_404(client, operator, trio):
    response = fail_over(client, "zz", operator, {"dry_run": True})

    assert (response.status_code, response.json()) == (404, {"error": "no master zz"})


def test_a_failover_with_no_healthy_backup_ends_failed_and_requeues_the_work(
    client, operator, trio
):
    a, b, c = trio
    Master.objects.filter(pk__in=[b.pk, c.pk]).update(health_status=HealthStatus.FAILED)
    moving = queue(a, 2)

    response = fail_over(client, "a", operator)

    assert response.status_code == 200
    assert (response.json()["status"], response.json()["backup_master"]) == ("failed", None)
    assert response.json()["initiated_by"] == "api:ops"
    assert set(Message.objects.filter(pk__in=moving).values_list("master_id", flat=True)) == {None}


def test_a_second_failover_of_a_master_already_failed_over_is_409(client, operator, trio):
    queue(trio[0], 1)
    assert fail_over(client, "a", operator).status_code == 200
    before = snapshot()

    response = fail_over(client, "a", operator)

    assert (response.status_code, response.json()) == (409, {"error": "A was already failed over"})
    assert snapshot() == before


# --- POST /failovers/<id>/rollback ----------------------------------------------------------


def test_rollback_moves_the_work_back_and_a_second_rollback_is_409(client, operator, trio):
    a, _, _ = trio
    moving = queue(a, 2)
    converse(a, "+971501111111")
    event_id = fail_over(client, "a", operator).json()["id"]

    response = roll_back(client, event_id, operator)

    assert response.status_code == 200
    body = response.json()
    assert (body["id"], body["status"], body["initiated_by"]) == (
        event_id,
        "rolled-back",
        "api:ops",
    )
    assert body["backup_master"] == {"id": "b", "display_name": "B"}
    assert set(Message.objects.filter(pk__in=moving).values_list("master_id", flat=True)) == {a.pk}
    assert ConversationAffinity.objects.get().master_id == a.pk
    assert Master.objects.get(pk=a.pk).role == Role.PRIMARY
    assert FailoverEvent.objects.get().detail["rolled_back"]["by"] == "api:ops"

    before = snapshot()
    again = roll_back(client, event_id, operator)

    assert (again.status_code, again.json()) == (
        409,
        {"error": f"failover {event_id} is rolled-back: nothing to roll back"},
    )
    assert snapshot() == before


@pytest.mark.parametrize("event_id", [999999, 2**63])
def test_rollback_of_an_unknown_failover_is_404(client, operator, event_id):
    response = roll_back(client, event_id, operator)

    assert (response.status_code, response.json()) == (404, {"error": f"no failover {event_id}"})


# --- the contract ---------------------------------------------------------------------------


def test_the_openapi_document_describes_the_failover_endpoints(client, bot):
    paths = document(client)["paths"]

    assert set(paths["/api/v1/masters/{id}/failover"]) == {"post"}
    assert set(paths["/api/v1/failovers"]) == {"get"}
    assert set(paths["/api/v1/failovers/{id}/rollback"]) == {"post"}
    for path in ("/api/v1/masters/{id}/failover", "/api/v1/failovers/{id}/rollback"):
        responses = paths[path]["post"]["responses"]
        assert {"200", "401", "403", "404", "409"} <= set(responses), path
    assert "422" in paths["/api/v1/masters/{id}/failover"]["post"]["responses"]
    assert client.get(f"{API}/failovers", headers=bearer(bot)).status_code == 200
    assert client.post(f"{API}/failovers", headers=bearer(bot)).status_code == 405
    assert client.get(f"{API}/masters/a/failover", headers=bearer(bot)).status_code == 405
    assert client.get(f"{API}/failovers/1/rollback", headers=bearer(bot)).status_code == 405


def test_the_answers_fit_the_documented_schemas(client, operator, trio):
    doc = document(client)
    queue(trio[0], 2)

    def fits(body: Any, schema: str) -> list[str]:
        return schema_problems(body, {"$ref": f"#/components/schemas/{schema}"}, doc)

    preview = fail_over(client, "a", operator, {"dry_run": True}).json()
    event = fail_over(client, "a", operator).json()
    rolled_back = roll_back(client, event["id"], operator).json()
    page = listed(client, operator, limit=1)
    refused = fail_over(client, "a", operator, {"backup": 1}).json()

    assert fits(preview, "FailoverPreview") == []
    assert fits(event, "FailoverEvent") == []
    assert fits(rolled_back, "FailoverEvent") == []
    assert fits(page, "FailoverList") == []
    assert fits(refused, "Invalid") == []
    assert fits({"dry_run": "yes", "colour": 1}, "FailoverRequest") == [
        "body.dry_run: string, expected ['boolean', 'null']",
        "body.colour: not in the schema",
    ]


def documented_failover_requests() -> list[tuple[str, dict]]:
    """Return (path, body) for every curl example in the "Operator actions" section."""
    text = (ROOT / "docs" / "API.md").read_text().split("## Operator actions", 1)[1]
    found = re.findall(r'"\$HAP(/[\w/]+)"[^\n]*\n(?:[^\n]*\\\n)*?\s*--data \'([^\']*)\'', text)
    return [(path, json.loads(body)) for path, body in found]


def test_the_documented_failover_examples_fit_the_schema_and_are_accepted(client, operator):
    doc = document(client)
    schema = {"$ref": "#/components/schemas/FailoverRequest"}
    examples = documented_failover_requests()
    assert [path for path, _ in examples] == ["/masters/primary/failover"] * 2

    make_master("primary", "+971505000001", gateway_url="http://127.0.0.1:3011")
    make_master("spare", "+971505000002", role=Role.SECONDARY, gateway_url="http://127.0.0.1:3012")
    for path, body in examples:
        assert schema_problems(body, schema, doc) == [], body
        response = post_json(client, path, body, operator)
        assert response.status_code == 200, response.json()
