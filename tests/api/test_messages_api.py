"""Queueing messages through the API and reading them back: idempotent, all or nothing."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest
from django.utils import timezone

from masters.choices import MessagePriority, MessageStatus
from masters.models import Message
from tests.api import API, bearer, get_json, issue_token, post_json
from tests.conftest import make_master

pytestmark = pytest.mark.django_db

BODY = {
    "to": "+971505760056",
    "text": "Your order 1042 has shipped.",
    "idempotency_key": "order-1042",
    "region": "UAE",
    "priority": "high",
    "ttl_seconds": 3600,
}


@pytest.fixture
def token() -> str:
    return issue_token()


def item(n: int, **fields) -> dict:
    return {"to": "+971505760056", "text": f"message {n}", "idempotency_key": f"k-{n}"} | fields


# --- one message -----------------------------------------------------------------------


def test_it_queues_a_message_and_answers_202_with_its_id(client, token):
    before = timezone.now()
    response = post_json(client, "/messages", BODY, token)

    assert response.status_code == 202
    message = Message.objects.get()
    assert response.json() == {"id": message.pk, "status": "queued"}
    assert response["Location"] == f"{API}/messages/{message.pk}"
    assert (message.to, message.text, message.region) == (BODY["to"], BODY["text"], "UAE")
    assert (message.priority, message.status) == (MessagePriority.HIGH, MessageStatus.QUEUED)
    assert message.idempotency_key == "order-1042"
    assert message.master is None
    assert (
        before + timedelta(seconds=3600)
        <= message.expires_at
        <= timezone.now() + timedelta(seconds=3600)
    )


def test_optional_fields_left_out_take_their_defaults(client, token, settings):
    response = post_json(client, "/messages", {"to": "+971505760056", "text": "hi"}, token)

    assert response.status_code == 202
    message = Message.objects.get()
    assert (message.priority, message.region, message.idempotency_key) == ("normal", "", None)
    ttl = (message.expires_at - message.created_at).total_seconds()
    assert ttl == pytest.approx(settings.QUEUE["default_ttl_s"], abs=5)


def test_null_optional_fields_count_as_left_out(client, token):
    body = {"to": "+971505760056", "text": "hi", "region": None, "priority": None}
    response = post_json(client, "/messages", body | {"ttl_seconds": None}, token)

    assert response.status_code == 202
    assert Message.objects.get().priority == MessagePriority.NORMAL


def test_a_json_content_type_with_a_utf8_charset_is_accepted(client, token):
    response = client.post(
        f"{API}/messages",
        json.dumps(BODY),
        content_type="application/json; charset=utf-8",
        headers=bearer(token),
    )

    assert response.status_code == 202
    assert Message.objects.count() == 1


def test_text_of_exactly_the_limit_is_accepted(client, token, settings):
    text = "é" * settings.QUEUE["text_max_chars"]
    response = post_json(client, "/messages", {"to": "+971505760056", "text": text}, token)

    assert response.status_code == 202
    assert Message.objects.get().text == text


def test_a_replay_with_the_same_key_and_body_returns_the_same_message_with_200(client, token):
    first = post_json(client, "/messages", BODY, token)
    again = post_json(client, "/messages", BODY, token)

    assert first.status_code == 202
    assert again.status_code == 200
    assert again.json()["id"] == first.json()["id"]
    assert Message.objects.count() == 1


def test_a_replay_reports_the_message_current_status(client, token):
    message_id = post_json(client, "/messages", BODY, token).json()["id"]
    Message.objects.filter(pk=message_id).update(status=MessageStatus.SENT)

    again = post_json(client, "/messages", BODY, token)

    assert again.json() == {"id": message_id, "status": "sent"}


def test_the_same_key_with_another_body_is_refused_with_409_naming_the_message(client, token):
    message_id = post_json(client, "/messages", BODY, token).json()["id"]

    response = post_json(client, "/messages", BODY | {"text": "Your order was cancelled."}, token)

    assert response.status_code == 409
    assert response.json()["id"] == message_id
    assert "order-1042" in response.json()["error"]
    assert Message.objects.count() == 1
    assert Message.objects.get().text == BODY["text"]


def test_messages_without_a_key_are_queued_every_time(client, token):
    body = {"to": "+971505760056", "text": "hi"}
    ids = {post_json(client, "/messages", body, token).json()["id"] for _ in range(2)}

    assert len(ids) == 2
    assert Message.objects.count() == 2


# --- batches ---------------------------------------------------------------------------


def test_a_batch_is_queued_in_order_with_one_result_per_message(client, token):
    response = post_json(client, "/messages/batch", {"messages": [item(0), item(1)]}, token)

    assert response.status_code == 202
    results = response.json()["results"]
    rows = {row.idempotency_key: row for row in Message.objects.all()}
    assert results == [
        {"index": 0, "id": rows["k-0"].pk, "status": "queued", "created": True},
        {"index": 1, "id": rows["k-1"].pk, "status": "queued", "created": True},
    ]
    assert rows["k-1"].text == "message 1"


def test_a_batch_replays_known_keys_and_queues_the_rest(client, token):
    earlier = post_json(client, "/messages", item(0), token).json()["id"]

    response = post_json(client, "/messages/batch", {"messages": [item(0), item(1)]}, token)

    assert response.status_code == 202
    results = response.json()["results"]
    assert (results[0]["id"], results[0]["created"]) == (earlier, False)
    assert results[1]["created"] is True
    assert Message.objects.count() == 2


def test_a_batch_of_replays_only_answers_200(client, token):
    post_json(client, "/messages/batch", {"messages": [item(0), item(1)]}, token)

    response = post_json(client, "/messages/batch", {"messages": [item(0), item(1)]}, token)

    assert response.status_code == 200
    assert [result["created"] for result in response.json()["results"]] == [False, False]
    assert Message.objects.count() == 2


def test_a_batch_may_repeat_a_key_with_the_same_body(client, token):
    response = post_json(client, "/messages/batch", {"messages": [item(0), item(0)]}, token)

    assert response.status_code == 202
    first, second = response.json()["results"]
    assert first["id"] == second["id"]
    assert (first["created"], second["created"]) == (True, False)
    assert Message.objects.count() == 1


def test_a_batch_with_an_invalid_message_queues_nothing_and_names_each_bad_item(client, token):
    messages = [item(0), item(1, text=""), item(2), item(3, to="0501234567", priority="urgent")]

    response = post_json(client, "/messages/batch", {"messages": messages}, token)

    assert response.status_code == 422
    assert response.json()["items"] == [
        {"index": 1, "fields": {"text": ["must not be empty"]}},
        {
            "index": 3,
            "fields": {
                "to": ["not a valid E.164 number"],
                "priority": ["must be one of: normal, high"],
            },
        },
    ]
    assert Message.objects.count() == 0


def test_a_batch_item_that_is_not_an_object_is_named(client, token):
    response = post_json(client, "/messages/batch", {"messages": [item(0), "hello"]}, token)

    assert response.status_code == 422
    assert response.json()["items"] == [
        {"index": 1, "error": "expected a JSON object", "fields": {}}
    ]
    assert Message.objects.count() == 0


def test_a_batch_conflicting_with_an_earlier_message_queues_nothing_and_names_the_index(
    client, token
):
    earlier = post_json(client, "/messages", item(5), token).json()["id"]
    messages = [item(0), item(1), item(5, text="another text")]

    response = post_json(client, "/messages/batch", {"messages": messages}, token)

    assert response.status_code == 409
    assert response.json()["index"] == 2
    assert response.json()["id"] == earlier
    assert Message.objects.count() == 1


def test_a_batch_giving_one_key_to_two_different_messages_is_refused(client, token):
    messages = [item(0), item(1), item(0, text="not the same")]

    response = post_json(client, "/messages/batch", {"messages": messages}, token)

    assert response.status_code == 422
    assert response.json()["items"] == [
        {
            "index": 2,
            "fields": {"idempotency_key": ["also used by index 0 for a different message"]},
        }
    ]
    assert Message.objects.count() == 0


def test_a_batch_may_hold_up_to_the_limit(client, token, settings):
    settings.QUEUE = settings.QUEUE | {"api_batch_limit": 3}

    response = post_json(
        client, "/messages/batch", {"messages": [item(n) for n in range(3)]}, token
    )

    assert response.status_code == 202
    assert Message.objects.count() == 3


def test_a_batch_over_the_limit_is_refused_naming_messages(client, token, settings):
    settings.QUEUE = settings.QUEUE | {"api_batch_limit": 3}

    response = post_json(
        client, "/messages/batch", {"messages": [item(n) for n in range(4)]}, token
    )

    assert response.status_code == 422
    assert response.json()["fields"] == {"messages": ["must hold 1 to 3 messages (got 4)"]}
    assert Message.objects.count() == 0


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        ({"messages": []}, "must hold 1 to 500 messages (got 0)"),
        ({}, "required"),
        ({"messages": item(0)}, "expected a list"),
    ],
    ids=["empty", "missing", "not-a-list"],
)
def test_a_batch_envelope_without_a_list_of_messages_is_refused(client, token, body, problem):
    response = post_json(client, "/messages/batch", body, token)

    assert response.status_code == 422
    assert response.json()["fields"] == {"messages": [problem]}
    assert Message.objects.count() == 0


def test_a_batch_envelope_with_another_field_is_refused(client, token):
    body = {"messages": [item(0)], "dry_run": True}

    response = post_json(client, "/messages/batch", body, token)

    assert response.status_code == 422
    assert response.json()["fields"] == {"dry_run": ["unknown field"]}
    assert Message.objects.count() == 0


# --- reading a message --------------------------------------------------------------------


def test_reading_a_new_message_shows_it_queued_and_unassigned(client, token):
    message_id = post_json(client, "/messages", BODY, token).json()["id"]
    message = Message.objects.get()

    response = get_json(client, f"/messages/{message_id}", token)

    assert response.status_code == 200
    body = response.json()
    assert body == {
        "id": message_id,
        "status": "queued",
        "to": "+971505760056",
        "region": "UAE",
        "priority": "high",
        "idempotency_key": "order-1042",
        "master": None,
        "attempts": 0,
        "last_error": None,
        "gateway_message_id": None,
        "created_at": body["created_at"],
        "updated_at": body["updated_at"],
        "sent_at": None,
        "expires_at": body["expires_at"],
        "next_attempt_at": body["next_attempt_at"],
        "in_doubt_until": None,
    }
    for name in ("created_at", "updated_at", "expires_at", "next_attempt_at"):
        assert body[name].endswith("Z")
        parsed = datetime.fromisoformat(body[name])
        assert parsed.utcoffset() == timedelta(0)
        assert abs(parsed - getattr(message, name)) < timedelta(milliseconds=1)


def test_reading_a_sent_message_shows_its_master_attempts_error_and_gateway_id(client, token):
    master = make_master("uae-1", display_name="UAE one")
    message_id = post_json(client, "/messages", BODY, token).json()["id"]
    sent_at = datetime(2025, 3, 1, 10, 0, 0, tzinfo=UTC)
    Message.objects.filter(pk=message_id).update(
        status=MessageStatus.SENT,
        master=master,
        attempts=2,
        last_error="gateway timed out",
        gateway_message_id="true_971505760056@c.us_ABC",
        sent_at=sent_at,
    )

    body = get_json(client, f"/messages/{message_id}", token).json()

    assert body["status"] == "sent"
    assert body["master"] == {"id": "uae-1", "display_name": "UAE one"}
    assert (body["attempts"], body["last_error"]) == (2, "gateway timed out")
    assert body["gateway_message_id"] == "true_971505760056@c.us_ABC"
    assert body["sent_at"] == "2025-03-01T10:00:00Z"


def test_any_valid_token_can_read_any_message(client, token):
    message_id = post_json(client, "/messages", BODY, token).json()["id"]

    response = get_json(client, f"/messages/{message_id}", issue_token("another-bot"))

    assert response.status_code == 200
    assert response.json()["id"] == message_id


@pytest.mark.parametrize("message_id", ["999", str(2**70)], ids=["unknown", "past-64-bits"])
def test_reading_an_unknown_message_answers_404_in_json(client, token, message_id):
    response = get_json(client, f"/messages/{message_id}", token)

    assert response.status_code == 404
    assert response.json() == {"error": f"no message {message_id}"}
