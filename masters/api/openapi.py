"""The API's OpenAPI 3.1 document, built in code so its limits follow the settings.

Served at /api/v1/openapi.json; docs/API.md says the same in prose. The tests
check that every route is described and that the examples fit the schemas.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings

from masters.api.validation import (
    IDEMPOTENCY_KEY_MAX,
    REGION_MAX,
    batch_body_limit,
    single_body_limit,
)
from masters.choices import FailoverStatus, HealthStatus, MessagePriority, MessageStatus, Role

Schema = dict[str, Any]

E164_PATTERN = r"^\+[1-9][0-9]{1,14}$"

SINGLE_EXAMPLE = {
    "to": "+971505760056",
    "text": "Your order 1042 has shipped.",
    "idempotency_key": "order-1042-shipped",
    "region": "UAE",
    "priority": "high",
    "ttl_seconds": 3600,
}
BATCH_EXAMPLE = {
    "messages": [
        {"to": "+971505760056", "text": "Reminder: call at 10:00", "idempotency_key": "rem-1"},
        {"to": "+966501234567", "text": "Reminder: call at 11:00", "idempotency_key": "rem-2"},
    ]
}


def ref(name: str) -> Schema:
    return {"$ref": f"#/components/schemas/{name}"}


def json_content(schema: Schema, examples: dict[str, Any] | None = None) -> Schema:
    content: Schema = {"schema": schema}
    if examples:
        content["examples"] = {name: {"value": value} for name, value in examples.items()}
    return {"application/json": content}


def reply(description: str, schema_name: str = "Error") -> Schema:
    return {"description": description, "content": json_content(ref(schema_name))}


def nullable(schema: Schema) -> Schema:
    return {**schema, "type": [schema["type"], "null"]}


def document() -> dict[str, Any]:
    """Return the OpenAPI document for /api/v1/."""
    limit = settings.QUEUE["api_batch_limit"]
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "HA Portal API",
            "version": "1.0.0",
            "description": (
                "Hand outgoing WhatsApp messages to the portal, which sends them through "
                "the healthy masters. Authenticate with `Authorization: Bearer <token>` "
                "(`manage.py create_api_token NAME`). Prose and curl examples: docs/API.md."
            ),
        },
        "security": [{"bearerAuth": []}],
        "paths": paths(limit),
        "components": {
            "securitySchemes": {
                "bearerAuth": {"type": "http", "scheme": "bearer", "bearerFormat": "hap_…"}
            },
            "schemas": schemas(limit),
            "responses": shared_responses(),
        },
    }


def paths(limit: int) -> dict[str, Any]:
    errors = {
        "401": {"$ref": "#/components/responses/Unauthorized"},
        "405": {"$ref": "#/components/responses/MethodNotAllowed"},
    }
    body_errors = {
        **errors,
        "400": {"$ref": "#/components/responses/BadJson"},
        "413": {"$ref": "#/components/responses/TooLarge"},
        "415": {"$ref": "#/components/responses/UnsupportedMediaType"},
    }
    return {
        "/api/v1/messages": {
            "post": {
                "operationId": "createMessage",
                "summary": "Queue one message",
                "description": (
                    f"Body at most {single_body_limit()} bytes. A repeated idempotency_key "
                    "with the same body returns the earlier message (200); with another "
                    "body it is refused (409). JSON null counts as an absent optional field."
                ),
                "requestBody": {
                    "required": True,
                    "content": json_content(ref("NewMessage"), {"full": SINGLE_EXAMPLE}),
                },
                "responses": {
                    "202": reply("Queued", "Accepted"),
                    "200": reply("Replay: this idempotency_key already queued it", "Accepted"),
                    "409": reply("idempotency_key already used for another message", "Conflict"),
                    "422": {"$ref": "#/components/responses/InvalidFields"},
                    **body_errors,
                },
            }
        },
        "/api/v1/messages/batch": {
            "post": {
                "operationId": "createMessages",
                "summary": f"Queue 1 to {limit} messages in one transaction",
                "description": (
                    f"Body at most {batch_body_limit()} bytes. All or nothing: one invalid "
                    "item (422) or idempotency conflict (409) and nothing is queued. "
                    "202 when at least one message is new, 200 when all are replays."
                ),
                "requestBody": {
                    "required": True,
                    "content": json_content(ref("BatchRequest"), {"two": BATCH_EXAMPLE}),
                },
                "responses": {
                    "202": reply("Queued; one result per message, in order", "BatchAccepted"),
                    "200": reply("Every message was a replay", "BatchAccepted"),
                    "409": reply("An idempotency_key was used for another message", "Conflict"),
                    "422": reply("Invalid envelope (fields) or items (items)", "BatchInvalid"),
                    **body_errors,
                },
            }
        },
        "/api/v1/messages/{id}": {
            "get": {
                "operationId": "getMessage",
                "summary": "A message's status (any valid token can read any message)",
                "parameters": [
                    {"name": "id", "in": "path", "required": True, "schema": {"type": "integer"}}
                ],
                "responses": {
                    "200": reply("The message", "Message"),
                    "404": reply("No such message"),
                    **errors,
                },
            }
        },
        "/api/v1/route": {
            "get": {
                "operationId": "route",
                "summary": "The master the balancer would pick now (for bots that send themselves)",
                "parameters": [
                    {
                        "name": "to",
                        "in": "query",
                        "required": True,
                        "description": "E.164; encode + as %2B (a bare + is read as one).",
                        "schema": {"type": "string", "pattern": E164_PATTERN},
                    },
                    {
                        "name": "region",
                        "in": "query",
                        "required": False,
                        "schema": {"type": "string", "maxLength": REGION_MAX},
                    },
                ],
                "responses": {
                    "200": reply("The master and why", "Route"),
                    "422": {"$ref": "#/components/responses/InvalidFields"},
                    "503": reply("No master is routable now"),
                    **errors,
                },
            }
        },
        "/api/v1/masters": {
            "get": {
                "operationId": "listMasters",
                "summary": "Every master with its health and load",
                "responses": {"200": reply("The masters", "MasterList"), **errors},
            }
        },
        **failover_paths(errors, body_errors),
        "/api/v1/openapi.json": {
            "get": {
                "operationId": "openapi",
                "summary": "This document (no token needed)",
                "security": [],
                "responses": {"200": {"description": "OpenAPI 3.1 document"}},
            }
        },
    }


def schemas(limit: int) -> dict[str, Schema]:
    timestamp = {"type": ["string", "null"], "format": "date-time"}
    status = ref("MessageStatus")
    return {
        "MessageStatus": {"type": "string", "enum": list(MessageStatus.values)},
        "NewMessage": {
            "type": "object",
            "required": ["to", "text"],
            "additionalProperties": False,
            "properties": {
                "to": {
                    "type": "string",
                    "pattern": E164_PATTERN,
                    "description": "E.164 exactly as stored: no spaces or punctuation.",
                },
                "text": {
                    "type": "string",
                    "minLength": 1,
                    "maxLength": settings.QUEUE["text_max_chars"],
                    "description": "Not blank; no NUL characters.",
                },
                "idempotency_key": nullable(
                    {
                        "type": "string",
                        "minLength": 1,
                        "maxLength": IDEMPOTENCY_KEY_MAX,
                        "pattern": "^[\\x20-\\x7e]+$",
                    }
                ),
                "region": nullable({"type": "string", "maxLength": REGION_MAX}),
                "priority": {
                    "type": ["string", "null"],
                    "enum": [*MessagePriority.values, None],
                    "default": MessagePriority.NORMAL.value,
                },
                "ttl_seconds": nullable(
                    {
                        "type": "integer",
                        "minimum": 1,
                        "maximum": settings.QUEUE["max_ttl_s"],
                        "default": settings.QUEUE["default_ttl_s"],
                    }
                ),
            },
        },
        "BatchRequest": {
            "type": "object",
            "required": ["messages"],
            "additionalProperties": False,
            "properties": {
                "messages": {
                    "type": "array",
                    "minItems": 1,
                    "maxItems": limit,
                    "items": ref("NewMessage"),
                }
            },
        },
        "Accepted": {
            "type": "object",
            "required": ["id", "status"],
            "properties": {"id": {"type": "integer"}, "status": status},
        },
        "BatchAccepted": {
            "type": "object",
            "required": ["results"],
            "properties": {
                "results": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "required": ["index", "id", "status", "created"],
                        "properties": {
                            "index": {"type": "integer"},
                            "id": {"type": "integer"},
                            "status": status,
                            "created": {"type": "boolean"},
                        },
                    },
                }
            },
        },
        "Message": {
            "type": "object",
            "required": ["id", "status", "to", "master", "attempts"],
            "properties": {
                "id": {"type": "integer"},
                "status": status,
                "to": {"type": "string"},
                "region": {"type": "string"},
                "priority": {"type": "string", "enum": list(MessagePriority.values)},
                "idempotency_key": {"type": ["string", "null"]},
                "master": {
                    "oneOf": [
                        {"type": "null"},
                        {
                            "type": "object",
                            "properties": {
                                "id": {"type": "string"},
                                "display_name": {"type": "string"},
                            },
                        },
                    ],
                    "description": "null until the dispatcher assigns one",
                },
                "attempts": {"type": "integer"},
                "last_error": {"type": ["string", "null"]},
                "gateway_message_id": {"type": ["string", "null"]},
                "created_at": timestamp,
                "updated_at": timestamp,
                "sent_at": timestamp,
                "expires_at": timestamp,
                "next_attempt_at": timestamp,
                "in_doubt_until": timestamp
                | {
                    "description": "set while a send through its master may have gone out "
                    "unanswered: until then only that master sends it again"
                },
            },
        },
        "Route": {
            "type": "object",
            "required": ["master", "reason"],
            "properties": {
                "master": {
                    "type": "object",
                    "properties": {
                        "id": {"type": "string"},
                        "phone_number": {"type": "string"},
                        "display_name": {"type": "string"},
                    },
                },
                "reason": {"type": "string"},
            },
        },
        "MasterList": {
            "type": "object",
            "required": ["masters"],
            "properties": {"masters": {"type": "array", "items": ref("Master")}},
        },
        "Master": master_schema(),
        "Error": {
            "type": "object",
            "required": ["error"],
            "properties": {"error": {"type": "string"}},
        },
        "FieldErrors": {
            "type": "object",
            "description": "Problems by field name; an unknown field says 'unknown field'.",
            "additionalProperties": {"type": "array", "items": {"type": "string"}},
        },
        "Invalid": {
            "type": "object",
            "required": ["error", "fields"],
            "properties": {"error": {"type": "string"}, "fields": ref("FieldErrors")},
        },
        "BatchInvalid": {
            "type": "object",
            "required": ["error"],
            "properties": {
                "error": {"type": "string"},
                "fields": ref("FieldErrors"),
                "items": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "required": ["index", "fields"],
                        "properties": {
                            "index": {"type": "integer"},
                            "error": {"type": "string", "description": "item is not an object"},
                            "fields": ref("FieldErrors"),
                        },
                    },
                },
            },
        },
        "Conflict": {
            "type": "object",
            "required": ["error", "id"],
            "properties": {
                "error": {"type": "string"},
                "id": {"type": "integer", "description": "the message that holds the key"},
                "index": {"type": "integer", "description": "batch only: the item refused"},
            },
        },
        "TooLarge": {
            "type": "object",
            "required": ["error", "limit_bytes"],
            "properties": {"error": {"type": "string"}, "limit_bytes": {"type": "integer"}},
        },
        **failover_schemas(),
    }


def master_schema() -> Schema:
    return {
        "type": "object",
        "properties": {
            "id": {"type": "string"},
            "display_name": {"type": "string"},
            "phone_number": {"type": "string"},
            "role": {"type": "string", "enum": list(Role.values)},
            "priority": {"type": "integer"},
            "region": {"type": "string"},
            "is_active": {"type": "boolean"},
            "health_status": {"type": "string", "enum": list(HealthStatus.values)},
            "routable": {"type": "boolean", "description": "active and healthy"},
            "load": {
                "type": "object",
                "properties": {
                    "pending": {
                        "type": "integer",
                        "description": "assigned messages queued, retrying or sending",
                    },
                    "sent_last_minute": {"type": "integer"},
                    "in_doubt": {
                        "type": "integer",
                        "description": "of the pending, messages sent once with no answer: "
                        "held on this master until their doubt ends (DISPATCH_DOUBT_HOLD), "
                        "so no failover moves them",
                    },
                },
            },
        },
    }


def shared_responses() -> dict[str, Schema]:
    return {
        "Unauthorized": reply("Missing, malformed, unknown or revoked token"),
        "MethodNotAllowed": reply("Wrong method; the Allow header lists the right ones"),
        "BadJson": reply("Body is not UTF-8 JSON, or not a JSON object"),
        "TooLarge": reply("Body over the endpoint's limit", "TooLarge"),
        "UnsupportedMediaType": reply("Content-Type is not application/json"),
        "InvalidFields": reply("Fields missing, of the wrong type or out of range", "Invalid"),
        "Forbidden": reply("The token has no operator rights (create it with --operator)"),
    }


# --- operator actions: failovers ---------------------------------------------------------------


def failover_paths(errors: Schema, body_errors: Schema) -> dict[str, Any]:
    # Imported here: masters.api.failovers imports the views, which import this module.
    from masters.api import failovers

    operator_errors = {"403": {"$ref": "#/components/responses/Forbidden"}}
    return {
        "/api/v1/masters/{id}/failover": {
            "post": {
                "operationId": "failOver",
                "summary": "Fail a master over now, or preview it (operator token)",
                "description": (
                    "Moves the master's pending messages and conversations to a backup in one "
                    "transaction and answers with the recorded failover: `completed`, `failed` "
                    "(no backup could take the work: it went back to the queue) or "
                    "`rolled-back` (the move did not verify; nothing moved). With "
                    "`dry_run: true` nothing changes and the answer is the preview. The body "
                    f"is optional (at most {failovers.FAILOVER_BODY_BYTES} bytes)."
                ),
                "parameters": [
                    {
                        "name": "id",
                        "in": "path",
                        "required": True,
                        "description": "The master's id, as in GET /masters.",
                        "schema": {"type": "string"},
                    }
                ],
                "requestBody": {
                    "required": False,
                    "content": json_content(ref("FailoverRequest")),
                },
                "responses": {
                    "200": {
                        "description": "The failover event, or with dry_run the preview",
                        "content": json_content(
                            {"oneOf": [ref("FailoverEvent"), ref("FailoverPreview")]}
                        ),
                    },
                    "404": reply("No such master"),
                    "409": reply("Refused: a failover of this master is running or already ran"),
                    "422": reply(
                        "Fields of the wrong type or unknown; backup unknown or unusable",
                        "Invalid",
                    ),
                    **operator_errors,
                    **body_errors,
                },
            }
        },
        "/api/v1/failovers": {
            "get": {
                "operationId": "listFailovers",
                "summary": "Failover events, newest first, a page at a time",
                "parameters": [
                    {
                        "name": "limit",
                        "in": "query",
                        "required": False,
                        "schema": {
                            "type": "integer",
                            "minimum": 1,
                            "maximum": failovers.LIST_LIMIT_MAX,
                            "default": failovers.LIST_LIMIT_DEFAULT,
                        },
                    },
                    {
                        "name": "before",
                        "in": "query",
                        "required": False,
                        "description": "Cursor: the events after this one (next_before).",
                        "schema": {"type": "integer", "minimum": 1},
                    },
                    {
                        "name": "master",
                        "in": "query",
                        "required": False,
                        "description": "Only failovers of this master (the one that failed).",
                        "schema": {"type": "string"},
                    },
                ],
                "responses": {
                    "200": reply("A page of failover events", "FailoverList"),
                    "422": {"$ref": "#/components/responses/InvalidFields"},
                    **errors,
                },
            }
        },
        "/api/v1/failovers/{id}/rollback": {
            "post": {
                "operationId": "rollbackFailover",
                "summary": "Move back what a completed failover moved (operator token)",
                "parameters": [
                    {"name": "id", "in": "path", "required": True, "schema": {"type": "integer"}}
                ],
                "responses": {
                    "200": reply("The failover, now rolled-back", "FailoverEvent"),
                    "404": reply("No such failover"),
                    "409": reply("The failover is not completed: nothing to roll back"),
                    **operator_errors,
                    **errors,
                },
            }
        },
    }


def failover_schemas() -> dict[str, Schema]:
    from masters.api import failovers

    master = {"oneOf": [ref("MasterRef"), {"type": "null"}]}
    return {
        "MasterRef": {
            "type": "object",
            "required": ["id", "display_name"],
            "properties": {"id": {"type": "string"}, "display_name": {"type": "string"}},
        },
        "FailoverStatus": {"type": "string", "enum": list(FailoverStatus.values)},
        "FailoverEvent": {
            "type": "object",
            "required": [
                "id",
                "failed_master",
                "backup_master",
                "reason",
                "status",
                "initiated_by",
                "started_at",
                "finished_at",
                "duration_ms",
                "moved_messages",
                "moved_affinities",
                "checksum",
            ],
            "properties": {
                "id": {"type": "integer"},
                "failed_master": ref("MasterRef"),
                "backup_master": {**master, "description": "null when no backup was found"},
                "reason": {"type": "string"},
                "status": ref("FailoverStatus"),
                "initiated_by": {
                    "type": "string",
                    "description": (
                        "`automatic`, the username of the operator, or `api:<token name>`; "
                        "`unknown` when the operator's user was deleted"
                    ),
                },
                "started_at": {"type": "string", "format": "date-time"},
                "finished_at": {"type": ["string", "null"], "format": "date-time"},
                "duration_ms": {"type": ["number", "null"]},
                "moved_messages": {"type": "integer"},
                "moved_affinities": {"type": "integer"},
                "checksum": {
                    "type": ["string", "null"],
                    "description": "SHA-256 of the moved message ids; null if nothing was moved",
                },
            },
        },
        "FailoverList": {
            "type": "object",
            "required": ["failovers", "next_before"],
            "properties": {
                "failovers": {"type": "array", "items": ref("FailoverEvent")},
                "next_before": {
                    "type": ["integer", "null"],
                    "description": "Pass as ?before= for the next page; null on the last",
                },
            },
        },
        "FailoverRequest": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "backup": nullable(
                    {
                        "type": "string",
                        "description": "A master's id; default: the best backup available",
                    }
                ),
                "dry_run": nullable({"type": "boolean", "default": False}),
                "reason": nullable(
                    {
                        "type": "string",
                        "maxLength": failovers.REASON_MAX,
                        "default": failovers.DEFAULT_REASON,
                    }
                ),
            },
        },
        "FailoverPreview": {
            "type": "object",
            "required": [
                "dry_run",
                "failed_master",
                "backup_master",
                "messages",
                "affinities",
                "checksum",
                "reasons",
            ],
            "properties": {
                "dry_run": {"type": "boolean", "enum": [True]},
                "failed_master": ref("MasterRef"),
                "backup_master": {**master, "description": "null: no master could take it"},
                "messages": {"type": "integer", "description": "messages that would move"},
                "affinities": {"type": "integer", "description": "conversations that would move"},
                "checksum": {"type": "string"},
                "reasons": {
                    "type": "object",
                    "description": "Why each candidate backup was chosen or not, by master id",
                    "additionalProperties": {"type": "string"},
                },
            },
        },
    }
