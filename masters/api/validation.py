"""Turn API request bodies into NewMessage values, or into errors that name each field.

Nothing here touches the database: every refusal happens before the queue is
called, so a bad request never leaves a row behind.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from django.conf import settings
from django.core.exceptions import ValidationError
from django.http import HttpRequest

from masters.choices import MessagePriority
from masters.queue import NewMessage
from masters.validators import E164_ERROR, normalise_e164

FieldErrors = dict[str, list[str]]

# One message with 4,096 characters, even all \uXXXX-escaped emoji, fits in 64 KiB.
SINGLE_BODY_BYTES = 64 * 1024
# A batch may carry this much per message, on average.
BATCH_ITEM_BYTES = 20 * 1024

IDEMPOTENCY_KEY_MAX = 200
REGION_MAX = 50

EXPECTED_STRING = "expected a string"
EXPECTED_INTEGER = "expected an integer"
REQUIRED = "required"
UNKNOWN_FIELD = "unknown field"


class ApiError(Exception):
    """A refused request: the HTTP status and the JSON body that says why."""

    def __init__(self, status: int, error: str, **extra: Any) -> None:
        super().__init__(error)
        self.status = status
        self.body = {"error": error, **extra}


class Invalid(ApiError):
    """The body is JSON but its fields are wrong (422)."""

    def __init__(self, error: str, **extra: Any) -> None:
        super().__init__(422, error, **extra)


def single_body_limit() -> int:
    """Return the largest body POST /messages reads, in bytes."""
    return min(SINGLE_BODY_BYTES, settings.DATA_UPLOAD_MAX_MEMORY_SIZE)


def batch_body_limit() -> int:
    """Return the largest body POST /messages/batch reads, in bytes."""
    limit = settings.QUEUE["api_batch_limit"] * BATCH_ITEM_BYTES
    return min(limit, settings.DATA_UPLOAD_MAX_MEMORY_SIZE)


# --- the body -----------------------------------------------------------------------


def read_json_object(request: HttpRequest, limit: int) -> dict[str, Any]:
    """Return the request body as a JSON object of at most ``limit`` bytes, or raise ApiError.

    The declared Content-Length is checked before anything is read, and the
    bytes actually read are counted too: under ASGI a chunked body has no
    length, and the stream is not cut at the declared one. ``request.read``
    (not ``request.body``) reads one byte past the limit and no further; the
    limit never exceeds DATA_UPLOAD_MAX_MEMORY_SIZE, so Django's own check
    (RequestDataTooBig, raised only by ``request.body``) is covered here.
    """
    if request.content_type != "application/json":
        raise ApiError(415, "Content-Type must be application/json")
    charset = request.content_params.get("charset", "utf-8").lower()
    if charset not in {"utf-8", "utf8"}:
        raise ApiError(415, "JSON must be sent as UTF-8")
    declared = request.META.get("CONTENT_LENGTH") or ""
    if declared.isdigit() and int(declared) > limit:
        raise too_large(limit)
    body = request.read(limit + 1)
    if len(body) > limit:
        raise too_large(limit)
    return decode_object(body)


def too_large(limit: int) -> ApiError:
    return ApiError(413, f"body over {limit} bytes", limit_bytes=limit)


def decode_object(body: bytes) -> dict[str, Any]:
    """Parse strict JSON (UTF-8, no NaN, no repeated keys) that must be an object."""
    try:
        payload = json.loads(
            body.decode("utf-8"), parse_constant=reject_constant, object_pairs_hook=unique_keys
        )
    except (ValueError, RecursionError) as error:
        # ValueError covers bad UTF-8, bad JSON and our hooks; RecursionError, absurd nesting.
        reason = "nested too deeply" if isinstance(error, RecursionError) else str(error)
        raise ApiError(400, f"body is not valid JSON: {reason}") from None
    if not isinstance(payload, dict):
        raise ApiError(400, "body must be a JSON object")
    return payload


def reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # A repeated key would let two readers of one body disagree on its meaning.
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise ValueError(f"key {key!r} appears twice")
        result[key] = value
    return result


# --- one message --------------------------------------------------------------------


def check_to(value: Any) -> list[str]:
    if not isinstance(value, str):
        return [EXPECTED_STRING]
    try:
        normalised = normalise_e164(value)
    except ValidationError:
        return [E164_ERROR]
    if normalised != value:
        # Stored and sent as given: the API does not rewrite numbers, it says how.
        return [E164_ERROR, f"write it as {normalised}, without spaces or punctuation"]
    return []


def check_text(value: Any) -> list[str]:
    if not isinstance(value, str):
        return [EXPECTED_STRING]
    if not value.strip():
        return ["must not be empty"]
    limit = settings.QUEUE["text_max_chars"]
    if len(value) > limit:
        return [f"over {limit} characters ({len(value)})"]
    return storable(value)


def check_idempotency_key(value: Any) -> list[str]:
    if not isinstance(value, str):
        return [EXPECTED_STRING]
    if not (0 < len(value) <= IDEMPOTENCY_KEY_MAX and value.isascii() and value.isprintable()):
        return [f"must be 1 to {IDEMPOTENCY_KEY_MAX} printable ASCII characters"]
    return []


def check_region(value: Any) -> list[str]:
    if not isinstance(value, str):
        return [EXPECTED_STRING]
    if len(value) > REGION_MAX:
        return [f"over {REGION_MAX} characters"]
    return storable(value)


def check_priority(value: Any) -> list[str]:
    if not isinstance(value, str):
        return [EXPECTED_STRING]
    if value not in MessagePriority.values:
        return [f"must be one of: {', '.join(MessagePriority.values)}"]
    return []


def check_ttl_seconds(value: Any) -> list[str]:
    # bool is an int to Python, and 3600.0 is a float: neither is an integer here.
    if type(value) is not int:
        return [EXPECTED_INTEGER]
    limit = settings.QUEUE["max_ttl_s"]
    if not 1 <= value <= limit:
        return [f"must be between 1 and {limit}"]
    return []


def storable(value: str) -> list[str]:
    """Refuse what JSON allows but the database cannot store (NUL, lone surrogates)."""
    if "\x00" in value:
        return ["must not contain NUL characters"]
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return ["must be valid Unicode (no lone surrogates)"]
    return []


# Field -> (check, required). JSON null counts as absent for the optional ones.
MESSAGE_FIELDS: dict[str, tuple[Callable[[Any], list[str]], bool]] = {
    "to": (check_to, True),
    "text": (check_text, True),
    "idempotency_key": (check_idempotency_key, False),
    "region": (check_region, False),
    "priority": (check_priority, False),
    "ttl_seconds": (check_ttl_seconds, False),
}


def message_errors(data: dict[str, Any]) -> FieldErrors:
    """Return every problem with one message's fields, by field name (empty when valid)."""
    errors: FieldErrors = {name: [UNKNOWN_FIELD] for name in data if name not in MESSAGE_FIELDS}
    for name, (check, required) in MESSAGE_FIELDS.items():
        value = data.get(name)
        if value is None:
            if required:
                errors[name] = [REQUIRED]
            continue
        problems = check(value)
        if problems:
            errors[name] = problems
    return errors


def to_new_message(data: dict[str, Any]) -> NewMessage:
    """Build the NewMessage of fields that ``message_errors`` found valid."""
    given = {name: data[name] for name in MESSAGE_FIELDS if data.get(name) is not None}
    return NewMessage(**given)


def parse_message(data: dict[str, Any]) -> NewMessage:
    """Return the message a POST /messages body asks for, or raise Invalid naming the fields."""
    errors = message_errors(data)
    if errors:
        raise Invalid(f"invalid fields: {', '.join(sorted(errors))}", fields=errors)
    return to_new_message(data)


# --- a batch ------------------------------------------------------------------------


def parse_batch(data: dict[str, Any]) -> list[NewMessage]:
    """Return every message of a batch body, or raise Invalid naming each bad item.

    All or nothing: one bad item refuses the batch, so the bot can fix and
    resend it whole without working out which half was queued.
    """
    items = batch_items(data)
    problems: list[dict[str, Any]] = []
    for index, item in enumerate(items):
        if not isinstance(item, dict):
            problems.append({"index": index, "error": "expected a JSON object", "fields": {}})
            continue
        errors = message_errors(item)
        if errors:
            problems.append({"index": index, "fields": errors})
    if problems:
        indexes = ", ".join(str(problem["index"]) for problem in problems)
        raise Invalid(f"invalid messages at index {indexes}; nothing was queued", items=problems)
    batch = [to_new_message(item) for item in items]
    reused_key_errors(batch)
    return batch


def batch_items(data: dict[str, Any]) -> list[Any]:
    """Return the batch's ``messages`` list, or raise Invalid about its envelope."""
    errors: FieldErrors = {name: [UNKNOWN_FIELD] for name in data if name != "messages"}
    items = data.get("messages")
    limit = settings.QUEUE["api_batch_limit"]
    if items is None:
        errors["messages"] = [REQUIRED]
    elif not isinstance(items, list):
        errors["messages"] = ["expected a list"]
    elif not 1 <= len(items) <= limit:
        errors["messages"] = [f"must hold 1 to {limit} messages (got {len(items)})"]
    if errors:
        raise Invalid(f"invalid fields: {', '.join(sorted(errors))}", fields=errors)
    return items


def reused_key_errors(batch: list[NewMessage]) -> None:
    """Refuse a batch that gives one idempotency key to two different messages."""
    first: dict[str, int] = {}
    problems: list[dict[str, Any]] = []
    for index, new in enumerate(batch):
        key = new.idempotency_key
        if key is None:
            continue
        earlier = first.setdefault(key, index)
        if earlier != index and batch[earlier].body_hash() != new.body_hash():
            problem = f"also used by index {earlier} for a different message"
            problems.append({"index": index, "fields": {"idempotency_key": [problem]}})
    if problems:
        indexes = ", ".join(str(problem["index"]) for problem in problems)
        raise Invalid(f"invalid messages at index {indexes}; nothing was queued", items=problems)
