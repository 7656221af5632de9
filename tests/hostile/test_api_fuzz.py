"""The REST API fuzzed from its own OpenAPI document, over HTTP, through daphne.

schemathesis reads the document the app serves and generates requests that
fit it (positive) and requests that break it (negative), for every
operation. Every answer must fit the document (status, content type, body),
no answer may be a 5xx, and the database must hold exactly what the answers
say: a refused request, a refused batch above all, leaves no row behind.

The run is bounded (EXAMPLES per operation and mode, derandomised, no
deadline) so it stays a few seconds per operation; raise HA_FUZZ_EXAMPLES to
dig deeper locally.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import Case, GenerationMode

from masters.choices import FailoverStatus, HealthStatus, MessageStatus
from masters.failover import execute_failover
from masters.models import ApiToken, FailoverEvent, Master, Message
from masters.queue import NewMessage, enqueue_batch
from tests.conftest import make_master
from tests.hostile.conftest import API_BATCH_LIMIT, Web

EXAMPLES = int(os.environ.get("HA_FUZZ_EXAMPLES", "50"))

# A request that fits the schema may still be refused for what a schema cannot say:
# a well-formed but unassigned number (phonenumbers), a blank text, a backup that
# cannot take the work, a master that is gone (404) or a failover already done (409).
ACCEPTED_POSITIVE = ["2xx", "404", "409", "422"]
CONFIG = {"checks": {"positive_data_acceptance": {"expected-statuses": ACCEPTED_POSITIVE}}}

OPERATIONS = [
    "createMessage",
    "createMessages",
    "getMessage",
    "route",
    "listMasters",
    "failOver",
    "listFailovers",
    "rollbackFailover",
]


@pytest.fixture(scope="module")
def api(web: Web) -> schemathesis.BaseSchema:
    """The API's contract, as the running app serves it."""
    config = schemathesis.Config.from_dict(CONFIG)
    return schemathesis.openapi.from_url(f"{web.url}/api/v1/openapi.json", config=config)


@dataclass
class World:
    """What the fuzzed requests can find: masters, messages, a failover, an operator token."""

    token: str
    master_ids: list[str]
    message_ids: list[int]
    failover_ids: list[int]


@pytest.fixture
def world(transactional_db) -> World:
    make_master("a", "+971505760056", region="UAE")
    make_master("b", "+971505760057", region="UAE")
    failed = make_master("c", "+966501234567", health_status=HealthStatus.FAILED, region="KSA")
    queued = enqueue_batch([NewMessage(f"+97150123456{i}", f"hello {i}") for i in range(3)])
    Message.objects.filter(pk=queued[0].message.pk).update(master=failed)
    # A completed failover, so that rollback has something real to undo.
    completed = execute_failover(failed.pk, reason="earlier", actor=None)
    assert completed.status == FailoverStatus.COMPLETED
    _, token = ApiToken.issue("fuzzer", can_operate=True)
    return World(
        token=token,
        master_ids=["a", "b", "c"],
        message_ids=[accepted.message.pk for accepted in queued],
        failover_ids=[completed.pk],
    )


# --- what the database holds ----------------------------------------------------------


@dataclass(frozen=True)
class Snapshot:
    messages: dict[int, tuple[str, int | None]]
    failovers: dict[int, str]
    masters: dict[str, tuple[str, bool]]


def snapshot() -> Snapshot:
    messages = Message.objects.values_list("pk", "status", "master_id")
    masters = Master.objects.values_list("external_id", "health_status", "is_active")
    return Snapshot(
        messages={pk: (status, master) for pk, status, master in messages},
        failovers=dict(FailoverEvent.objects.values_list("pk", "status")),
        masters={external_id: (health, active) for external_id, health, active in masters},
    )


def new_messages(before: Snapshot, after: Snapshot) -> set[int]:
    return set(after.messages) - set(before.messages)


def check_create_message(case: Case, answer: Any, status: int, before: Snapshot) -> None:
    after = snapshot()
    if status == 202:
        assert new_messages(before, after) == {answer["id"]}
        row = Message.objects.get(pk=answer["id"])
        assert (row.to, row.text, row.status) == (
            case.body["to"],
            case.body["text"],
            MessageStatus.QUEUED,
        )
    else:
        assert after.messages == before.messages, f"HTTP {status} changed the queue"


def check_create_batch(case: Case, answer: Any, status: int, before: Snapshot) -> None:
    after = snapshot()
    if status in (200, 202):
        created = {result["id"] for result in answer["results"] if result["created"]}
        assert new_messages(before, after) == created
        assert len(answer["results"]) == len(case.body["messages"])
    else:
        # All or nothing: a refused batch leaves no message behind, not even its good items.
        assert after.messages == before.messages, f"HTTP {status} left part of a batch"


def check_failover(case: Case, answer: Any, status: int, before: Snapshot) -> None:
    after = snapshot()
    if status == 200 and not answer.get("dry_run"):
        assert set(after.failovers) - set(before.failovers) == {answer["id"]}
    else:
        assert (after.failovers, after.messages) == (before.failovers, before.messages)


def check_rollback(case: Case, answer: Any, status: int, before: Snapshot) -> None:
    after = snapshot()
    if status == 200:
        assert after.failovers[answer["id"]] == FailoverStatus.ROLLED_BACK
    else:
        assert (after.failovers, after.messages) == (before.failovers, before.messages)


def check_read_only(case: Case, answer: Any, status: int, before: Snapshot) -> None:
    assert snapshot() == before, f"{case.operation.label} changed the database"


EFFECTS: dict[str, Callable[[Case, Any, int, Snapshot], None]] = {
    "createMessage": check_create_message,
    "createMessages": check_create_batch,
    "failOver": check_failover,
    "rollbackFailover": check_rollback,
}


# Numbers phonenumbers accepts: generated digits almost never are one.
NUMBERS = ["+971505760056", "+966501234567", "+447911123456", "+14155552671"]


def aim_numbers(case: Case, numbers: list[str]) -> Case:
    """Give some messages of a generated body a real number, so some are accepted.

    A batch comes out mixed: real numbers beside generated ones that are refused,
    which is where a half-written batch would show.
    """
    body = case.body
    items = body.get("messages") if operation_name(case.operation) == "createMessages" else [body]
    for item, number in zip(items, numbers, strict=False):
        if number:
            item["to"] = number
    return case


def operation_name(operation) -> str:
    return operation.definition.raw.get("operationId", "")


def cases(operation, mode: GenerationMode, world: World) -> st.SearchStrategy[Case]:
    """Generated cases; some aimed at rows that exist and numbers that are real.

    Aimed only where the case stays valid: a negative case must stay negative.
    """
    name = operation_name(operation)
    strategy = operation.as_strategy(generation_mode=mode)
    real_ids = {
        "getMessage": world.message_ids,
        "failOver": world.master_ids,
        "rollbackFailover": world.failover_ids,
    }.get(name)
    if real_ids:
        aimed = st.sampled_from(real_ids).flatmap(
            lambda found: operation.as_strategy(generation_mode=mode, path_parameters={"id": found})
        )
        strategy = st.one_of(strategy, aimed)
    if mode.is_positive and name == "route":
        aimed = st.sampled_from(NUMBERS).flatmap(
            lambda to: operation.as_strategy(generation_mode=mode, query={"to": to})
        )
        strategy = st.one_of(strategy, aimed)
    if mode.is_positive and name in ("createMessage", "createMessages"):
        picks = st.lists(st.one_of(st.none(), st.sampled_from(NUMBERS)), max_size=API_BATCH_LIMIT)
        strategy = st.builds(aim_numbers, strategy, picks)
    return strategy


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
@pytest.mark.parametrize("operation_id", OPERATIONS)
def test_no_fuzzed_request_gets_a_5xx_or_an_answer_outside_the_contract_or_half_writes(
    web, api, world, operation_id, mode
):
    # The operation that serves the document itself is left out by schemathesis.
    [operation] = [
        result.ok()
        for result in api.get_all_operations()
        if operation_name(result.ok()) == operation_id
    ]
    headers = {"Authorization": f"Bearer {world.token}"}
    effect = EFFECTS.get(operation_id, check_read_only)
    statuses: set[int] = set()

    @given(case=cases(operation, mode, world))
    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    def fuzz(case: Case) -> None:
        before = snapshot()
        # Checks: no 5xx, documented status, content type, headers and body; negative
        # data refused; auth not ignored (it resends without the token); wrong methods 405.
        response = case.call_and_validate(base_url=web.url, headers=headers)
        statuses.add(response.status_code)
        answer = response.json() if response.content else None
        effect(case, answer, response.status_code, before)

    fuzz()
    assert statuses, "no request was sent"
    if mode.is_positive:
        # The invariants above are only worth something if the happy path was reached.
        assert any(200 <= status < 300 for status in statuses), sorted(statuses)


@pytest.mark.parametrize(
    "path",
    ["/api/v1/masters/a%0A/failover", "/api/v1/messages%0A", "/api/v1/%0A", "/api/v1/x%0D%0Ay"],
)
def test_a_path_with_a_line_break_gets_the_api_s_json_404_not_an_html_page(web, world, path):
    # Found by the fuzzer: "." in the catch-all route does not match a newline.
    response = requests.post(
        f"{web.url}{path}", json={}, headers={"Authorization": f"Bearer {world.token}"}, timeout=10
    )

    assert response.status_code == 404
    assert response.headers["Content-Type"] == "application/json"
    assert response.json()["error"].startswith("no endpoint /api/v1/")
