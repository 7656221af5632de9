"""Refused API requests: each says what is wrong, in JSON, and none touches the queue."""

from __future__ import annotations

import json

import pytest
from django.test import AsyncRequestFactory
from django.test.client import FakePayload

from masters.api import views
from masters.models import ApiToken, Message
from tests.api import API, bearer, issue_token, post_json

pytestmark = pytest.mark.django_db

VALID = {"to": "+971505760056", "text": "hello"}


@pytest.fixture
def token() -> str:
    return issue_token()


@pytest.fixture(autouse=True)
def queue_stays_empty(db):
    """Every refusal here must leave the queue as it was: empty."""
    yield
    assert Message.objects.count() == 0


# --- authentication --------------------------------------------------------------------

ENDPOINTS = [
    ("post", "/messages", json.dumps(VALID)),
    ("post", "/messages/batch", json.dumps({"messages": [VALID]})),
    ("get", "/messages/1", None),
    ("get", "/route?to=%2B971505760056", None),
    ("get", "/masters", None),
]


def call(client, method: str, path: str, body: str | None, headers: dict[str, str]):
    if method == "post":
        return client.post(f"{API}{path}", body, content_type="application/json", headers=headers)
    return client.get(f"{API}{path}", headers=headers)


@pytest.mark.parametrize(("method", "path", "body"), ENDPOINTS)
def test_a_request_without_a_token_is_refused_with_401_and_a_bearer_challenge(
    client, method, path, body
):
    response = call(client, method, path, body, {})

    assert response.status_code == 401
    assert response["WWW-Authenticate"] == "Bearer"
    assert "Authorization: Bearer" in response.json()["error"]


@pytest.mark.parametrize(("method", "path", "body"), ENDPOINTS)
@pytest.mark.parametrize(
    "header",
    ["Basic dXNlcjpwYXNz", "Bearer", "Bearer ", "Bearer two words", "hap_no_scheme"],
    ids=["basic", "no-token", "blank-token", "spaces", "no-scheme"],
)
def test_a_malformed_authorization_header_is_refused_with_401(
    client, token, method, path, body, header
):
    response = call(client, method, path, body, {"Authorization": header})

    assert response.status_code == 401
    assert response["WWW-Authenticate"].startswith("Bearer")
    assert response.json()["error"] == "malformed Authorization header: expected Bearer <token>"


@pytest.mark.parametrize(("method", "path", "body"), ENDPOINTS)
def test_an_unknown_token_is_refused_with_401(client, token, method, path, body):
    response = call(client, method, path, body, bearer(token + "x"))

    assert response.status_code == 401
    assert response["WWW-Authenticate"] == 'Bearer error="invalid_token"'
    assert response.json() == {"error": "invalid or revoked token"}


def test_a_deactivated_token_is_refused_with_401(client, token):
    ApiToken.objects.update(is_active=False)

    response = post_json(client, "/messages", VALID, token)

    assert response.status_code == 401
    assert response.json() == {"error": "invalid or revoked token"}


def test_the_scheme_name_is_case_insensitive(client, token):
    response = client.get(f"{API}/masters", headers={"Authorization": f"bearer {token}"})

    assert response.status_code == 200


def test_the_token_is_checked_before_the_body_is_read(client):
    response = client.post(f"{API}/messages", "{not json", content_type="application/json")

    assert response.status_code == 401


# --- the body -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        ("{not json", "body is not valid JSON"),
        ("", "body is not valid JSON"),
        ('{"to": "+971505760056", "text": "hi"', "body is not valid JSON"),
        ('{"to": "+971505760056", "text": "hi", "ttl_seconds": NaN}', "NaN is not JSON"),
        ('{"to": "+971505760056", "text": "a", "text": "b"}', "key 'text' appears twice"),
        (b'{"to": "+971505760056", "text": "caf\xe9"}', "body is not valid JSON"),
        ("[" * 20_000 + "]" * 20_000, "body is not valid JSON: nested too deeply"),
        ("[]", "body must be a JSON object"),
        ('"hello"', "body must be a JSON object"),
        ("null", "body must be a JSON object"),
    ],
    ids=[
        "garbage",
        "empty",
        "truncated",
        "nan",
        "repeated-key",
        "latin-1",
        "deep-nesting",
        "array",
        "string",
        "null",
    ],
)
@pytest.mark.parametrize("path", ["/messages", "/messages/batch"])
def test_a_body_that_is_not_a_json_object_is_refused_with_400(client, token, path, body, reason):
    response = post_json(client, path, body, token)

    assert response.status_code == 400
    assert reason in response.json()["error"]


@pytest.mark.parametrize(
    ("content_type", "error"),
    [
        ("text/plain", "Content-Type must be application/json"),
        ("application/x-www-form-urlencoded", "Content-Type must be application/json"),
        ("application/json; charset=latin-1", "JSON must be sent as UTF-8"),
    ],
)
def test_a_body_that_is_not_utf8_json_is_refused_with_415(client, token, content_type, error):
    response = client.post(
        f"{API}/messages", json.dumps(VALID), content_type=content_type, headers=bearer(token)
    )

    assert response.status_code == 415
    assert response.json() == {"error": error}


def test_a_message_body_over_64_kib_is_refused_with_413(client, token):
    body = json.dumps(VALID | {"region": " " * (64 * 1024)})

    response = post_json(client, "/messages", body, token)

    assert response.status_code == 413
    assert response.json() == {"error": "body over 65536 bytes", "limit_bytes": 65536}


def test_a_batch_body_over_its_share_per_message_is_refused_with_413(client, token, settings):
    settings.QUEUE = settings.QUEUE | {"api_batch_limit": 2}
    body = json.dumps({"messages": [VALID], "padding": " " * (40 * 1024)})

    response = post_json(client, "/messages/batch", body, token)

    assert response.status_code == 413
    assert response.json()["limit_bytes"] == 2 * 20 * 1024


def test_a_body_over_django_s_upload_limit_is_refused_with_413(client, token, settings):
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 4096
    body = json.dumps({"messages": [VALID | {"text": "x" * 4090}]})

    response = post_json(client, "/messages/batch", body, token)

    assert response.status_code == 413
    assert response.json()["limit_bytes"] == 4096


def test_a_body_longer_than_its_declared_length_is_refused_with_413(token):
    # Under daphne a chunked body has no Content-Length and Django does not cut
    # the stream at a declared one: the bytes actually read are counted.
    body = json.dumps(VALID | {"region": " " * (70 * 1024)}).encode()
    request = AsyncRequestFactory().request(
        method="POST",
        path=f"{API}/messages",
        headers=[
            (b"content-type", b"application/json"),
            (b"authorization", f"Bearer {token}".encode()),
        ],
        _body_file=FakePayload(body),
    )
    assert "CONTENT_LENGTH" not in request.META

    response = views.create_message(request)

    assert response.status_code == 413
    assert json.loads(response.content)["limit_bytes"] == 64 * 1024


# --- fields ---------------------------------------------------------------------------------

KEY_RULE = ["must be 1 to 200 printable ASCII characters"]
FIELD_CASES = [
    ({"text": "hi"}, "to", ["required"]),
    ({"to": None, "text": "hi"}, "to", ["required"]),
    (VALID | {"to": 971505760056}, "to", ["expected a string"]),
    (VALID | {"to": "0505760056"}, "to", ["not a valid E.164 number"]),
    (VALID | {"to": "+1234"}, "to", ["not a valid E.164 number"]),
    (
        VALID | {"to": "+971 50 576 0056"},
        "to",
        ["not a valid E.164 number", "write it as +971505760056, without spaces or punctuation"],
    ),
    ({"to": "+971505760056"}, "text", ["required"]),
    (VALID | {"text": ""}, "text", ["must not be empty"]),
    (VALID | {"text": " \n\t "}, "text", ["must not be empty"]),
    (VALID | {"text": "x" * 4097}, "text", ["over 4096 characters (4097)"]),
    (VALID | {"text": ["hi"]}, "text", ["expected a string"]),
    (VALID | {"text": {"body": "hi"}}, "text", ["expected a string"]),
    (VALID | {"text": "a\x00b"}, "text", ["must not contain NUL characters"]),
    (VALID | {"text": "\ud800"}, "text", ["must be valid Unicode (no lone surrogates)"]),
    (VALID | {"idempotency_key": ""}, "idempotency_key", KEY_RULE),
    (VALID | {"idempotency_key": "k" * 201}, "idempotency_key", KEY_RULE),
    (VALID | {"idempotency_key": "clé"}, "idempotency_key", KEY_RULE),
    (VALID | {"idempotency_key": "a\nb"}, "idempotency_key", KEY_RULE),
    (VALID | {"idempotency_key": 42}, "idempotency_key", ["expected a string"]),
    (VALID | {"region": "r" * 51}, "region", ["over 50 characters"]),
    (VALID | {"region": 5}, "region", ["expected a string"]),
    (VALID | {"priority": "urgent"}, "priority", ["must be one of: normal, high"]),
    (VALID | {"priority": 1}, "priority", ["expected a string"]),
    (VALID | {"ttl_seconds": "3600"}, "ttl_seconds", ["expected an integer"]),
    (VALID | {"ttl_seconds": 3600.0}, "ttl_seconds", ["expected an integer"]),
    (VALID | {"ttl_seconds": True}, "ttl_seconds", ["expected an integer"]),
    (VALID | {"ttl_seconds": 0}, "ttl_seconds", ["must be between 1 and 604800"]),
    (VALID | {"ttl_seconds": 604801}, "ttl_seconds", ["must be between 1 and 604800"]),
    (VALID | {"media_url": "https://x"}, "media_url", ["unknown field"]),
]


@pytest.mark.parametrize(("body", "field", "problems"), FIELD_CASES)
def test_a_bad_field_is_refused_with_422_naming_it(client, token, body, field, problems):
    response = post_json(client, "/messages", body, token)

    assert response.status_code == 422
    assert response.json()["fields"] == {field: problems}
    assert response.json()["error"] == f"invalid fields: {field}"


@pytest.mark.parametrize(("body", "field", "problems"), FIELD_CASES)
def test_a_bad_field_in_a_batch_is_refused_with_422_naming_it_and_its_index(
    client, token, body, field, problems
):
    response = post_json(client, "/messages/batch", {"messages": [VALID, body]}, token)

    assert response.status_code == 422
    assert response.json()["items"] == [{"index": 1, "fields": {field: problems}}]


def test_every_bad_field_is_named_at_once(client, token):
    body = {"to": "050", "text": "", "priority": "low", "extra": 1}

    response = post_json(client, "/messages", body, token)

    assert response.status_code == 422
    assert sorted(response.json()["fields"]) == ["extra", "priority", "text", "to"]
    assert response.json()["error"] == "invalid fields: extra, priority, text, to"


# --- methods and paths ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path", "allowed"),
    [
        ("get", "/messages", "POST"),
        ("put", "/messages", "POST"),
        ("get", "/messages/batch", "POST"),
        ("delete", "/messages/1", "GET"),
        ("post", "/masters", "GET"),
        ("post", "/route", "GET"),
        ("post", "/openapi.json", "GET"),
    ],
)
def test_a_wrong_method_is_refused_with_405_in_json(client, token, method, path, allowed):
    response = getattr(client, method)(f"{API}{path}", headers=bearer(token))

    assert response.status_code == 405
    assert response["Allow"] == allowed
    assert response.json()["error"] == f"method {method.upper()} not allowed; use {allowed}"


@pytest.mark.parametrize("path", ["/message", "/messages/", "/messages/abc", "/v2/messages"])
def test_a_path_that_names_no_endpoint_answers_404_in_json(client, token, path):
    response = client.post(f"{API}{path}", "{}", content_type="application/json")

    assert response.status_code == 404
    assert response.json() == {"error": f"no endpoint {API}{path}"}
