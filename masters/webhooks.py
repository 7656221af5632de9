"""Gateway status webhooks: WAHA's ``session.status`` and Evolution's ``connection.update``.

A gateway that reports its session down is a passive health signal and counts
like a failed probe. A gateway that reports itself up is not believed on its
own (it may say so while every send fails): only probes and the rise threshold
bring a master back. docs/GATEWAYS.md "Gateway webhooks" holds the contract.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from django.contrib.auth.decorators import login_not_required
from django.db import transaction
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.utils import timezone
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST

from masters.choices import EventKind, GatewayKind, HealthStatus, Severity
from masters.gateways import evolution, waha
from masters.health import Observation
from masters.models import Event, Master

logger = logging.getLogger(__name__)

# Status webhooks are a few hundred bytes; anything near this is not one.
MAX_BODY_BYTES = 64 * 1024

HMAC_HEADER = "X-Webhook-Hmac"
HMAC_ALGORITHM_HEADER = "X-Webhook-Hmac-Algorithm"
TOKEN_HEADER = "X-HA-Token"
# WAHA signs with sha512 and says so; a missing algorithm header means sha512.
HMAC_ALGORITHMS: dict[str, Callable[..., Any]] = {
    "sha512": hashlib.sha512,
    "sha256": hashlib.sha256,
}
DEFAULT_HMAC_ALGORITHM = "sha512"

# Event names, sessions and states are short words.
MAX_FIELD_CHARS = 200

# A status delivery stamped longer ago than this is refused as a replay; within
# it, a delivery seen before is acknowledged and not counted again.
REPLAY_WINDOW = timedelta(hours=1)
# How far ahead of the portal's clock a gateway's clock may run.
CLOCK_SKEW = timedelta(minutes=5)


class PayloadError(ValueError):
    """A webhook body lacks a field we need or has it in the wrong shape."""

    def __init__(self, path: str, problem: str) -> None:
        super().__init__(f"{path}: {problem}")
        self.path = path
        self.problem = problem


@dataclass(frozen=True)
class HookKind:
    """What differs between the gateway kinds that post status webhooks."""

    gateway_kind: str
    label: str
    # The one event we act on, normalised by event_name().
    status_event: str
    # Where the body names the session, for error messages.
    session_path: str
    # How details name the state, e.g. "WAHA webhook: session status FAILED".
    state_noun: str
    parse: Callable[[Any], tuple[str, str]]
    state_table: Mapping[str, HealthStatus]


# --- pure pieces ----------------------------------------------------------------


def verify_signature(secret: str, body: bytes, headers: Mapping[str, str]) -> bool:
    """Say whether the request carries a valid HMAC of ``body`` or the token itself.

    An empty secret verifies nothing: an HMAC keyed with "" is forgeable by anyone.
    """
    if not secret:
        return False
    lowered = {name.lower(): value for name, value in headers.items()}
    token = lowered.get(TOKEN_HEADER.lower())
    signature = lowered.get(HMAC_HEADER.lower())
    token_ok = token is not None and same_text(token, secret)
    algorithm = lowered.get(HMAC_ALGORITHM_HEADER.lower(), DEFAULT_HMAC_ALGORITHM)
    signature_ok = signature is not None and hmac_matches(secret, body, signature, algorithm)
    return token_ok or signature_ok


def hmac_matches(secret: str, body: bytes, signature: str, algorithm: str) -> bool:
    """Compare a hex HMAC of ``body`` with ``signature`` in constant time."""
    digest = HMAC_ALGORITHMS.get(algorithm.strip().lower())
    if digest is None:
        return False
    expected = hmac.new(secret.encode(), body, digest).hexdigest()
    return same_text(signature.strip().lower(), expected)


def same_text(given: str, expected: str) -> bool:
    """Compare two strings in constant time; bytes, so non-ASCII input cannot raise."""
    return hmac.compare_digest(given.encode(), expected.encode())


def decode_body(body: bytes) -> dict[str, Any]:
    """Return the body as a JSON object, or raise PayloadError."""
    try:
        payload = json.loads(body)
    except (ValueError, RecursionError):
        # ValueError covers bad JSON and bad UTF-8; RecursionError, absurd nesting.
        raise PayloadError("body", "not JSON") from None
    if not isinstance(payload, dict):
        raise PayloadError("body", "expected a JSON object")
    return payload


def delivery_key(payload: Mapping[str, Any], body: bytes) -> str:
    """Name one delivery, so that the same delivery sent again is known; "" if it cannot be.

    WAHA gives every event an ``id`` (and a ``timestamp``) inside the signed
    body; Evolution stamps every event with ``date_time``. The same id, or the
    same bytes carrying a time, is one delivery sent twice (a gateway's retry or
    a replay). A body with neither cannot be told from a new report of the same
    state, so it counts each time.
    """
    event_id = payload.get("id")
    if isinstance(event_id, str) and event_id.strip():
        return "id:" + hashlib.sha256(event_id.encode("utf-8", "surrogatepass")).hexdigest()
    if "timestamp" in payload or "date_time" in payload:
        return "body:" + hashlib.sha256(body).hexdigest()
    return ""


def check_sent_at(payload: Mapping[str, Any], now: datetime) -> None:
    """Refuse a delivery whose ``timestamp`` (WAHA: ms since 1970) is outside the window.

    The timestamp is inside the body, so an HMAC covers it: a captured request
    replayed after the window is refused, and within it delivery_key catches it.
    """
    if "timestamp" not in payload:
        return
    stamp = payload["timestamp"]
    try:
        if isinstance(stamp, bool) or not isinstance(stamp, int | float):
            raise TypeError
        # WAHA sends milliseconds; a gateway sending seconds is read as such.
        sent = datetime.fromtimestamp(stamp / 1000 if stamp > 1e11 else stamp, UTC)
    except (TypeError, ValueError, OverflowError, OSError):
        raise PayloadError("timestamp", "expected milliseconds since 1970") from None
    if now - sent > REPLAY_WINDOW:
        raise PayloadError(
            "timestamp",
            f"sent over {minutes(REPLAY_WINDOW)} minutes ago: refused as a replay or a stale retry",
        )
    if sent - now > CLOCK_SKEW:
        raise PayloadError(
            "timestamp", f"over {minutes(CLOCK_SKEW)} minutes ahead of the portal's clock"
        )


def minutes(span: timedelta) -> str:
    return f"{span.total_seconds() / 60:g}"


def event_name(payload: Mapping[str, Any]) -> str:
    """Return the body's event, normalised: "CONNECTION_UPDATE" -> "connection.update"."""
    raw = text_at(payload, "event")
    return raw.strip().lower().replace("_", ".").replace("-", ".")


def text_at(payload: Any, *path: str) -> str:
    """Return the non-empty string at ``path`` in ``payload``, or raise PayloadError."""
    value = payload
    for depth, key in enumerate(path):
        if not isinstance(value, dict):
            raise PayloadError(".".join(path[:depth]) or "body", "expected an object")
        if key not in value:
            raise PayloadError(".".join(path[: depth + 1]), "missing")
        value = value[key]
    if not isinstance(value, str) or not value.strip():
        raise PayloadError(".".join(path), "expected a non-empty string")
    # Stored in the event and the master's last error: a NUL or half a surrogate
    # pair cannot be, and no real event, session or state is long.
    if len(value) > MAX_FIELD_CHARS or not value.isprintable():
        raise PayloadError(
            ".".join(path), f"expected at most {MAX_FIELD_CHARS} printable characters"
        )
    return value


def parse_waha(payload: Any) -> tuple[str, str]:
    """Return (session, status) from WAHA's session.status body."""
    return text_at(payload, "session"), text_at(payload, "payload", "status")


def parse_evolution(payload: Any) -> tuple[str, str]:
    """Return (instance, state) from Evolution's connection.update body."""
    return text_at(payload, "instance"), text_at(payload, "data", "state")


HOOK_KINDS = {
    GatewayKind.WAHA: HookKind(
        gateway_kind=GatewayKind.WAHA,
        label="WAHA",
        status_event="session.status",
        session_path="session",
        state_noun="session status",
        parse=parse_waha,
        state_table=waha.STATE_TABLE,
    ),
    GatewayKind.EVOLUTION: HookKind(
        gateway_kind=GatewayKind.EVOLUTION,
        label="Evolution",
        status_event="connection.update",
        session_path="instance",
        state_noun="instance state",
        parse=parse_evolution,
        state_table=evolution.STATE_TABLE,
    ),
}


def classify(hook: HookKind, state: str) -> tuple[HealthStatus, str]:
    """Map a reported state to our status and a detail; a state we do not know is a failure."""
    detail = f"{hook.label} webhook: {hook.state_noun} {state}"
    status = hook.state_table.get(state)
    if status is None:
        return HealthStatus.FAILED, f"{detail} (unknown state)"
    return status, detail


# --- effect -----------------------------------------------------------------------


def seen_before(master: Master, delivery: str) -> bool:
    """Say whether this delivery was recorded within the replay window (and the clock skew)."""
    since = timezone.now() - REPLAY_WINDOW - CLOCK_SKEW
    return Event.objects.filter(
        master=master,
        kind=EventKind.GATEWAY_WEBHOOK,
        created_at__gte=since,
        data__delivery=delivery,
    ).exists()


def apply_status(
    master: Master, hook: HookKind, session: str, state: str, delivery: str = ""
) -> str | None:
    """Record what the gateway reported; count a down signal like a failed probe.

    An up signal changes no health field: the gateway saying so is not proof
    (sends may still fail), so recovery stays with probes and the rise threshold.
    Return the master's health now, or None (and change nothing) when this
    delivery was recorded before.
    """
    status, detail = classify(hook, state)
    counted = status != HealthStatus.HEALTHY
    note = "" if counted else " (not trusted alone: probes decide recovery)"
    with transaction.atomic():
        # The row lock first: two copies of one delivery arriving at once count once.
        Master.objects.select_for_update().filter(pk=master.pk).exists()
        if delivery and seen_before(master, delivery):
            return None
        # Info: the alert comes from the health change this may cause, not from here.
        Event.record(
            EventKind.GATEWAY_WEBHOOK,
            f"{master.display_name}: {detail}{note}",
            master=master,
            severity=Severity.INFO,
            gateway=hook.gateway_kind,
            session=session,
            state=state,
            signal=status,
            counted=counted,
            delivery=delivery,
        )
        if counted:
            master.record_observation(Observation(status, timezone.now(), detail, None, "webhook"))
    return master.health_status


# --- views ------------------------------------------------------------------------


def refuse(status: int, error: str) -> JsonResponse:
    """Answer a refused webhook with a JSON error that names what is wrong."""
    return JsonResponse({"error": error}, status=status)


def receive(request: HttpRequest, external_id: str, hook: HookKind) -> HttpResponse:
    """Authenticate, parse and apply one status webhook; every refusal changes nothing."""
    master = Master.objects.filter(external_id=external_id).first()
    if master is None:
        return refuse(404, f"unknown master {external_id!r}")
    if not master.webhook_secret:
        return refuse(403, "webhooks disabled for this master: set its webhook secret")
    # Read one byte past the cap, never the whole of an oversized body.
    body = request.read(MAX_BODY_BYTES + 1)
    if len(body) > MAX_BODY_BYTES:
        return refuse(413, f"body: over {MAX_BODY_BYTES} bytes")
    if not verify_signature(master.webhook_secret, body, request.headers):
        logger.warning("%s webhook for %s refused: bad or missing auth", hook.label, external_id)
        return refuse(401, f"authenticate with {HMAC_HEADER} or {TOKEN_HEADER}")
    if master.gateway_kind != hook.gateway_kind:
        return refuse(
            400, f"this master's gateway is {master.gateway_kind}, not {hook.gateway_kind}"
        )
    try:
        payload = decode_body(body)
        event = event_name(payload)
        if event != hook.status_event:
            return JsonResponse({"ignored": event}, status=202)
        session, state = hook.parse(payload)
    except PayloadError as error:
        return refuse(400, str(error))
    if session != master.gateway_session:
        return refuse(
            400, f"{hook.session_path}: {session!r} is not this master's {hook.session_path}"
        )
    try:
        check_sent_at(payload, timezone.now())
    except PayloadError as error:
        logger.warning("%s webhook for %s refused: %s", hook.label, external_id, error)
        return refuse(400, str(error))
    status = apply_status(master, hook, session, state, delivery_key(payload, body))
    if status is None:
        # Acknowledged (2xx), so that a gateway retrying it stops; counted once only.
        logger.info(
            "%s webhook for %s: a delivery seen before, not counted", hook.label, external_id
        )
        master.refresh_from_db(fields=["health_status"])
        return JsonResponse({"accepted": True, "duplicate": True, "status": master.health_status})
    logger.info("%s webhook for %s: %r, master now %s", hook.label, external_id, state, status)
    return JsonResponse({"accepted": True, "status": status})


@csrf_exempt  # authenticated by the master's secret, not a session cookie
@login_not_required
@require_POST
def waha_hook(request: HttpRequest, external_id: str) -> HttpResponse:
    """Receive WAHA's session.status webhook for one master."""
    return receive(request, external_id, HOOK_KINDS[GatewayKind.WAHA])


@csrf_exempt  # authenticated by the master's secret, not a session cookie
@login_not_required
@require_POST
def evolution_hook(request: HttpRequest, external_id: str) -> HttpResponse:
    """Receive Evolution API's connection.update webhook for one master."""
    return receive(request, external_id, HOOK_KINDS[GatewayKind.EVOLUTION])
