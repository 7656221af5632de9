"""The API's other endpoints (masters, route, the OpenAPI document) and its tokens."""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
import threading
from datetime import timedelta
from io import StringIO
from pathlib import Path
from typing import Any

import pytest
from django.core.management import CommandError, call_command
from django.db import connection
from django.http import JsonResponse
from django.test import RequestFactory
from django.test.utils import CaptureQueriesContext
from django.urls import resolve
from django.utils import timezone

from masters.api import views
from masters.api.auth import operator_required
from masters.choices import HealthStatus, MessageStatus
from masters.models import ApiToken, ConversationAffinity, Message
from tests.api import API, bearer, get_json, issue_token, post_json
from tests.conftest import database_url, make_master

pytestmark = pytest.mark.django_db

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def token() -> str:
    return issue_token()


def queue(master, status: str, count: int = 1, **fields) -> None:
    for _ in range(count):
        Message.objects.create(
            to="+971505760056", text="hi", body_hash="-", master=master, status=status, **fields
        )


# --- masters -----------------------------------------------------------------------------


def test_masters_lists_each_master_with_its_health_and_load(client, token):
    uae = make_master("uae", "+971505760057", display_name="UAE", region="UAE", priority=1)
    spare = make_master(
        "spare", "+966501234567", priority=2, health_status=HealthStatus.FAILED, is_active=False
    )
    now = timezone.now()
    queue(uae, MessageStatus.QUEUED, 2)
    queue(uae, MessageStatus.RETRYING, in_doubt_until=now - timedelta(seconds=1))  # doubt over
    queue(uae, MessageStatus.SENDING, in_doubt_until=now + timedelta(minutes=5))
    queue(uae, MessageStatus.SENT, 3, sent_at=now - timedelta(seconds=20))
    queue(uae, MessageStatus.SENT, sent_at=now - timedelta(minutes=2))
    queue(uae, MessageStatus.DEAD)
    queue(None, MessageStatus.QUEUED)  # not assigned yet: nobody's load
    queue(spare, MessageStatus.EXPIRED)

    response = get_json(client, "/masters", token)

    assert response.status_code == 200
    assert response.json()["masters"] == [
        {
            "id": "uae",
            "display_name": "UAE",
            "phone_number": "+971505760057",
            "role": "primary",
            "priority": 1,
            "region": "UAE",
            "is_active": True,
            "health_status": "healthy",
            "routable": True,
            "load": {"pending": 4, "sent_last_minute": 3, "in_doubt": 1},
        },
        {
            "id": "spare",
            "display_name": "Spare",
            "phone_number": "+966501234567",
            "role": "primary",
            "priority": 2,
            "region": "",
            "is_active": False,
            "health_status": "failed",
            "routable": False,
            "load": {"pending": 0, "sent_last_minute": 0, "in_doubt": 0},
        },
    ]


def test_an_active_master_that_is_not_healthy_is_not_routable(client, token):
    make_master("m1", health_status=HealthStatus.DEGRADED)

    master = get_json(client, "/masters", token).json()["masters"][0]

    assert (master["is_active"], master["routable"]) == (True, False)


def test_masters_costs_the_same_queries_for_one_master_or_many(client, token):
    def queries_for_listing() -> int:
        get_json(client, "/masters", token)  # the token's last_used_at is written once
        with CaptureQueriesContext(connection) as captured:
            assert get_json(client, "/masters", token).status_code == 200
        return len(captured)

    queue(make_master("m1", "+971505760051"), MessageStatus.QUEUED)
    with_one = queries_for_listing()
    for n in range(2, 6):
        queue(make_master(f"m{n}", f"+97150576005{n}"), MessageStatus.SENT, sent_at=timezone.now())

    assert queries_for_listing() == with_one
    assert len(get_json(client, "/masters", token).json()["masters"]) == 5


# --- route ---------------------------------------------------------------------------------


@pytest.fixture
def router():
    """A fresh balancer for this test (the view keeps one per thread, with a cached snapshot)."""
    views.ROUTERS = threading.local()
    yield
    views.ROUTERS = threading.local()


def test_route_names_the_master_the_balancer_would_pick_now(client, token, router):
    make_master("down", "+971505760051", health_status=HealthStatus.FAILED, priority=1)
    make_master("up", "+971505760052", display_name="Up one", priority=2)

    response = get_json(client, "/route", token, to="+971505760056")

    assert response.status_code == 200
    assert response.json()["master"] == {
        "id": "up",
        "phone_number": "+971505760052",
        "display_name": "Up one",
    }
    assert response.json()["reason"] == "round-robin"


def test_route_keeps_a_contact_on_its_conversation_master(client, token, router):
    make_master("first", "+971505760051")
    second = make_master("second", "+971505760052")
    ConversationAffinity.objects.create(
        contact="+971505760056", master=second, expires_at=timezone.now() + timedelta(hours=1)
    )

    body = get_json(client, "/route", token, to="+971505760056").json()

    assert (body["master"]["id"], body["reason"]) == ("second", "affinity")


def test_route_answers_503_when_no_master_is_routable(client, token, router):
    make_master("failed", "+971505760051", health_status=HealthStatus.FAILED)
    make_master("resting", "+971505760052", health_status=HealthStatus.MAINTENANCE)
    make_master("off", "+971505760053", is_active=False)

    response = get_json(client, "/route", token, to="+971505760056")

    assert response.status_code == 503
    assert response.json() == {
        "error": "no master is routable now; messages sent to the portal are queued"
    }


def test_route_reads_an_unencoded_plus_as_the_plus_it_was(client, token, router):
    make_master("up", "+971505760052")

    response = client.get(f"{API}/route?to=+971505760056", headers=bearer(token))

    assert response.status_code == 200
    assert response.json()["master"]["id"] == "up"


@pytest.mark.parametrize(
    ("params", "fields"),
    [
        ({}, {"to": ["required"]}),
        ({"to": "0505760056"}, {"to": ["not a valid E.164 number"]}),
        ({"to": "+971505760056", "region": "r" * 51}, {"region": ["over 50 characters"]}),
        ({"to": "+971505760056", "strategy": "geo"}, {"strategy": ["unknown field"]}),
    ],
    ids=["missing", "not-e164", "long-region", "unknown"],
)
def test_route_refuses_bad_parameters_with_422_naming_them(client, token, params, fields):
    response = get_json(client, "/route", token, **params)

    assert response.status_code == 422
    assert response.json()["fields"] == fields


# --- the OpenAPI document ---------------------------------------------------------------------

METHODS = ("get", "post", "put", "patch", "delete")


def document(client) -> dict[str, Any]:
    response = client.get(f"{API}/openapi.json")
    assert response.status_code == 200
    return json.loads(response.content)


def test_the_openapi_document_is_public_json_with_bearer_auth(client):
    doc = document(client)

    assert doc["openapi"] == "3.1.0"
    assert doc["components"]["securitySchemes"]["bearerAuth"] == {
        "type": "http",
        "scheme": "bearer",
        "bearerFormat": "hap_…",
    }
    assert doc["security"] == [{"bearerAuth": []}]
    assert doc["paths"]["/api/v1/openapi.json"]["get"]["security"] == []


def test_the_openapi_document_describes_every_endpoint_and_method(client, token):
    described = {
        (path, method) for path, item in document(client)["paths"].items() for method in item
    }
    assert {path for path, _ in described} == {
        "/api/v1/messages",
        "/api/v1/messages/batch",
        "/api/v1/messages/{id}",
        "/api/v1/route",
        "/api/v1/masters",
        "/api/v1/masters/{id}/failover",
        "/api/v1/failovers",
        "/api/v1/failovers/{id}/rollback",
        "/api/v1/openapi.json",
    }
    for path in {path for path, _ in described}:
        url = path.replace("{id}", "1")
        assert resolve(url).func is not views.not_found, f"{path} has no view"
        for method in METHODS:
            response = getattr(client, method)(url, headers=bearer(token))
            allowed = response.status_code != 405
            assert allowed == ((path, method) in described), f"{method.upper()} {path}"


def test_the_openapi_limits_follow_the_settings(client, settings):
    settings.QUEUE = settings.QUEUE | {"api_batch_limit": 7, "max_ttl_s": 600}

    schemas = document(client)["components"]["schemas"]

    assert schemas["BatchRequest"]["properties"]["messages"]["maxItems"] == 7
    assert schemas["NewMessage"]["properties"]["ttl_seconds"]["maximum"] == 600
    assert schemas["NewMessage"]["properties"]["text"]["maxLength"] == 4096


def schema_problems(value: Any, schema: dict, doc: dict, where: str = "body") -> list[str]:
    """Check ``value`` against the parts of JSON Schema the document uses (a light check)."""
    if "$ref" in schema:
        schema = doc["components"]["schemas"][schema["$ref"].rsplit("/", 1)[1]]
    types = schema.get("type")
    types = [types] if isinstance(types, str) else types or []
    names = {dict: "object", list: "array", str: "string", bool: "boolean", type(None): "null"}
    kind = "integer" if type(value) is int else names.get(type(value), "number")
    if types and kind not in types:
        return [f"{where}: {kind}, expected {types}"]
    problems = []
    if "enum" in schema and value not in schema["enum"]:
        problems.append(f"{where}: {value!r} not in {schema['enum']}")
    if kind == "object":
        problems += [f"{where}.{name}: required" for name in schema.get("required", [])
                     if name not in value]  # fmt: skip
        properties = schema.get("properties", {})
        for name, item in value.items():
            if name in properties:
                problems += schema_problems(item, properties[name], doc, f"{where}.{name}")
            elif schema.get("additionalProperties") is False:
                problems.append(f"{where}.{name}: not in the schema")
    if kind == "array":
        if not schema.get("minItems", 0) <= len(value) <= schema.get("maxItems", len(value)):
            problems.append(f"{where}: {len(value)} items")
        for index, item in enumerate(value):
            problems += schema_problems(item, schema.get("items", {}), doc, f"{where}[{index}]")
    if kind == "string":
        if not schema.get("minLength", 0) <= len(value) <= schema.get("maxLength", len(value)):
            problems.append(f"{where}: length {len(value)}")
        if "pattern" in schema and not re.search(schema["pattern"], value):
            problems.append(f"{where}: does not match {schema['pattern']}")
    if kind == "integer" and not schema.get("minimum", value) <= value <= schema.get(
        "maximum", value
    ):
        problems.append(f"{where}: {value} out of range")
    return problems


def docs_examples() -> list[tuple[str, dict]]:
    """Return (path, body) for every curl example with a JSON body in docs/API.md."""
    text = (ROOT / "docs" / "API.md").read_text()
    found = re.findall(r'"\$HAP(/[\w/]+)"[^\n]*\n(?:[^\n]*\\\n)*?\s*-d \'([^\']*)\'', text)
    return [(path, json.loads(body)) for path, body in found]


def request_examples(doc: dict) -> list[tuple[str, dict, dict]]:
    """Return (path, body, schema) for every request example in the document."""
    return [
        (path, example["value"], content["schema"])
        for path, item in doc["paths"].items()
        for operation in item.values()
        for content in operation.get("requestBody", {}).get("content", {}).values()
        for example in content.get("examples", {}).values()
    ]


def test_the_documented_examples_fit_the_schemas_and_are_accepted(client, token):
    doc = document(client)
    schema_for = {path: schema for path, _, schema in request_examples(doc)}
    examples = [(path, body) for path, body, _ in request_examples(doc)]
    examples += [(f"/api/v1{path}", body) for path, body in docs_examples()]
    assert {path for path, _ in examples} == {"/api/v1/messages", "/api/v1/messages/batch"}
    assert len(examples) == 4  # two in the document, two in docs/API.md

    for path, body in examples:
        assert schema_problems(body, schema_for[path], doc) == [], path
        response = post_json(client, path.removeprefix(API), body, token)
        assert response.status_code in {200, 202}, response.json()


def test_the_light_schema_check_can_fail(client):
    doc = document(client)
    schema = {"$ref": "#/components/schemas/NewMessage"}

    problems = schema_problems({"text": "", "to": 5, "colour": "red"}, schema, doc)

    assert problems == [
        "body.text: length 0",
        "body.to: integer, expected ['string']",
        "body.colour: not in the schema",
    ]


# --- tokens ------------------------------------------------------------------------------------


def create_token(*args: str) -> str:
    out = StringIO()
    call_command("create_api_token", *args, stdout=out)
    return out.getvalue()


def test_create_api_token_prints_only_the_token_and_stores_only_its_hash():
    output = create_token("whatsapp-bot")

    token = output.removesuffix("\n")
    assert "\n" not in token
    assert token.startswith("hap_")
    assert len(token) > 40
    row = ApiToken.objects.get(name="whatsapp-bot")
    assert row.token_hash == hashlib.sha256(token.encode()).hexdigest()
    for field in ApiToken._meta.concrete_fields:
        assert token not in str(getattr(row, field.attname)), field.name
    assert ApiToken.authenticate(token) == row
    assert row.can_operate is False


def test_create_api_token_with_operator_gives_operator_rights():
    token = create_token("ops", "--operator").strip()

    assert ApiToken.authenticate(token).can_operate is True


def test_the_printed_token_opens_the_api(client):
    token = create_token("whatsapp-bot").strip()

    assert get_json(client, "/masters", token).status_code == 200


def test_create_api_token_refuses_a_name_that_exists():
    create_token("whatsapp-bot")

    with pytest.raises(CommandError, match="exists"):
        create_token("whatsapp-bot")
    assert ApiToken.objects.count() == 1


@pytest.mark.parametrize("name", ["", "   ", "n" * 101])
def test_create_api_token_refuses_a_blank_or_overlong_name(name):
    with pytest.raises(CommandError, match="name: must be 1 to 100 characters"):
        create_token(name)
    assert ApiToken.objects.count() == 0


@pytest.mark.django_db(transaction=True)
def test_create_api_token_run_as_a_script_writes_one_line_to_stdout():
    environ = os.environ | {"DATABASE_URL": database_url(), "HA_DEV": "1"}
    result = subprocess.run(
        [sys.executable, "manage.py", "create_api_token", "scripted"],
        cwd=ROOT,
        env=environ,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )

    lines = result.stdout.splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("hap_")
    assert ApiToken.authenticate(lines[0]).name == "scripted"


def test_operator_required_refuses_a_token_without_operator_rights():
    view = operator_required(lambda request: JsonResponse({"done": True}))
    request = RequestFactory().post("/api/v1/failover")
    bot, _ = ApiToken.issue("bot")
    operator, _ = ApiToken.issue("ops", can_operate=True)

    request.api_token = bot
    refused = view(request)
    request.api_token = operator
    allowed = view(request)

    assert (refused.status_code, json.loads(refused.content)) == (
        403,
        {"error": "this token may not operate masters"},
    )
    assert allowed.status_code == 200
