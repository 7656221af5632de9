"""The bot's REST API, /api/v1/: queue messages, read them back, see masters and routes.

The contract (status codes, limits, shapes) is docs/API.md and the OpenAPI
document this module serves; the bot's client is written against both.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from django.contrib.auth.decorators import login_not_required
from django.db.models import Count
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.urls import reverse
from django.utils import timezone
from django.views.decorators.csrf import csrf_exempt

from masters.api import openapi
from masters.api.auth import token_required
from masters.api.validation import (
    UNKNOWN_FIELD,
    ApiError,
    Invalid,
    batch_body_limit,
    check_region,
    check_to,
    parse_batch,
    parse_message,
    read_json_object,
    single_body_limit,
)
from masters.choices import MessageStatus
from masters.models import Master, Message
from masters.queue import Accepted, IdempotencyConflict, enqueue, enqueue_batch

if TYPE_CHECKING:
    from masters.routing import Router

View = Callable[..., HttpResponse]

# What a master holds or is sending: its load for GET /masters.
LOAD_STATUSES = [MessageStatus.QUEUED, MessageStatus.RETRYING, MessageStatus.SENDING]
MAX_ID = 2**63 - 1
NO_ROUTE = "no master is routable now; messages sent to the portal are queued"


def endpoint(*methods: str) -> Callable[[View], View]:
    """Make a view an API endpoint: only ``methods``, errors as JSON, no session or CSRF.

    The API authenticates by bearer token (``token_required``), so the
    session login and the CSRF cookie check do not apply to it.
    """

    def decorate(view: View) -> View:
        @functools.wraps(view)
        def wrapper(request: HttpRequest, *args, **kwargs) -> HttpResponse:
            if request.method not in methods:
                response = JsonResponse(
                    {"error": f"method {request.method} not allowed; use {', '.join(methods)}"},
                    status=405,
                )
                response["Allow"] = ", ".join(methods)
                return response
            try:
                return view(request, *args, **kwargs)
            except ApiError as refusal:
                return JsonResponse(refusal.body, status=refusal.status)

        return csrf_exempt(login_not_required(wrapper))

    return decorate


# One Router per thread (it is not thread-safe); its snapshot is cached per
# settings.BALANCING["snapshot_max_age_ms"]. Tests replace this to start afresh.
ROUTERS = threading.local()


def router() -> Router:
    """Return this thread's balancer; imported late so the API loads without masters.routing."""
    found = getattr(ROUTERS, "router", None)
    if found is None:
        from masters.routing import Router

        found = ROUTERS.router = Router()
    return found


def iso(moment: datetime | None) -> str | None:
    return None if moment is None else moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def accepted(message: Message, status: int) -> JsonResponse:
    response = JsonResponse({"id": message.pk, "status": message.status}, status=status)
    response["Location"] = reverse("masters:api-message", args=[message.pk])
    return response


def conflict(error: IdempotencyConflict, **extra: Any) -> JsonResponse:
    body = {"error": str(error), "id": error.existing.pk, **extra}
    return JsonResponse(body, status=409)


# --- messages -------------------------------------------------------------------------


@endpoint("POST")
@token_required
def create_message(request: HttpRequest) -> HttpResponse:
    """Queue one message: 202 when new, 200 when its idempotency key replays an earlier one."""
    new = parse_message(read_json_object(request, single_body_limit()))
    try:
        result = enqueue(new)
    except IdempotencyConflict as error:
        return conflict(error)
    return accepted(result.message, 202 if result.created else 200)


@endpoint("POST")
@token_required
def create_batch(request: HttpRequest) -> HttpResponse:
    """Queue a batch in one transaction: every message, or (on any error) none."""
    batch = parse_batch(read_json_object(request, batch_body_limit()))
    try:
        results = enqueue_batch(batch)
    except IdempotencyConflict as error:
        return conflict(error, index=error.index)
    body = {"results": [batch_result(index, result) for index, result in enumerate(results)]}
    status = 202 if any(result.created for result in results) else 200
    return JsonResponse(body, status=status)


def batch_result(index: int, result: Accepted) -> dict[str, Any]:
    message = result.message
    return {"index": index, "id": message.pk, "status": message.status, "created": result.created}


@endpoint("GET")
@token_required
def message_detail(request: HttpRequest, message_id: int) -> HttpResponse:
    """Show one message's progress; any valid token may read any message."""
    # Past the largest 64-bit id the database would raise, not answer "no such row".
    found = Message.objects.select_related("master").filter(pk=message_id)
    message = found.first() if message_id <= MAX_ID else None
    if message is None:
        return JsonResponse({"error": f"no message {message_id}"}, status=404)
    master = message.master
    return JsonResponse(
        {
            "id": message.pk,
            "status": message.status,
            "to": message.to,
            "region": message.region,
            "priority": message.priority,
            "idempotency_key": message.idempotency_key,
            "master": master and {"id": master.external_id, "display_name": master.display_name},
            "attempts": message.attempts,
            "last_error": message.last_error or None,
            "gateway_message_id": message.gateway_message_id or None,
            "created_at": iso(message.created_at),
            "updated_at": iso(message.updated_at),
            "sent_at": iso(message.sent_at),
            "expires_at": iso(message.expires_at),
            "next_attempt_at": iso(message.next_attempt_at),
            "in_doubt_until": iso(message.in_doubt_until),
        }
    )


# --- masters and routes ------------------------------------------------------------------


@endpoint("GET")
@token_required
def route(request: HttpRequest) -> HttpResponse:
    """Name the master the balancer would pick now for ``to`` (for bots that send themselves)."""
    to, region = route_query(request)
    decision = router().route(to, region_hint=region)
    master = decision and Master.objects.filter(pk=decision.candidate_id).first()
    if not master:
        return JsonResponse({"error": NO_ROUTE}, status=503)
    return JsonResponse(
        {
            "master": {
                "id": master.external_id,
                "phone_number": master.phone_number,
                "display_name": master.display_name,
            },
            "reason": decision.reason,
        }
    )


def route_query(request: HttpRequest) -> tuple[str, str]:
    """Return (to, region) from the query string, or raise Invalid naming the fields."""
    errors = {name: [UNKNOWN_FIELD] for name in request.GET if name not in {"to", "region"}}
    to = request.GET.get("to", "")
    if to.startswith(" ") and to[1:].isdigit():
        # "?to=+971…" without %2B arrives as " 971…": a form-encoding slip, not a typo.
        to = "+" + to[1:]
    region = request.GET.get("region", "")
    problems = {"to": check_to(to) if to else ["required"], "region": check_region(region)}
    errors |= {name: found for name, found in problems.items() if found}
    if errors:
        raise Invalid(f"invalid fields: {', '.join(sorted(errors))}", fields=errors)
    return to, region


@endpoint("GET")
@token_required
def master_list(request: HttpRequest) -> HttpResponse:
    """List every master with its health and load, in three queries whatever their number."""
    masters = list(Master.objects.all())
    loads = master_loads([master.pk for master in masters])
    return JsonResponse(
        {"masters": [master_row(master, loads.get(master.pk, NO_LOAD)) for master in masters]}
    )


NO_LOAD = {"pending": 0, "sent_last_minute": 0, "in_doubt": 0}


def master_row(master: Master, load: dict[str, int]) -> dict[str, Any]:
    return {
        "id": master.external_id,
        "display_name": master.display_name,
        "phone_number": master.phone_number,
        "role": master.role,
        "priority": master.priority,
        "region": master.region,
        "is_active": master.is_active,
        "health_status": master.health_status,
        "routable": master.is_routable,
        "load": load,
    }


def master_loads(ids: list[int]) -> dict[int, dict[str, int]]:
    """Count, by master id: messages pending or in flight, those of them in doubt, and
    messages sent in the last minute.

    In doubt: sent once with no answer, so held on this master (``Message.in_doubt``).
    Both queries use an index that leads with the master: (master, status) and
    (master, sent_at).
    """
    now = timezone.now()
    mine = Message.objects.filter(master_id__in=ids).order_by()
    pending = (
        mine.filter(status__in=LOAD_STATUSES)
        .values("master_id")
        .annotate(pending=Count("id"), in_doubt=Count("id", filter=Message.doubted(now)))
    )
    sent = dict(
        mine.filter(status=MessageStatus.SENT, sent_at__gte=now - timezone.timedelta(minutes=1))
        .values_list("master_id")
        .annotate(count=Count("id"))
    )
    loads = {master_id: NO_LOAD | {"sent_last_minute": n} for master_id, n in sent.items()}
    for row in pending:
        load = loads.setdefault(row["master_id"], dict(NO_LOAD))
        load |= {"pending": row["pending"], "in_doubt": row["in_doubt"]}
    return loads


# --- the contract -----------------------------------------------------------------------


@endpoint("GET")
def openapi_document(request: HttpRequest) -> HttpResponse:
    """Serve the OpenAPI document; public, as a contract is."""
    return JsonResponse(openapi.document())


@csrf_exempt
@login_not_required
def not_found(request: HttpRequest, rest: str = "") -> HttpResponse:
    """Answer a path under /api/v1/ that names no endpoint, in JSON like the rest."""
    return JsonResponse({"error": f"no endpoint {request.path}"}, status=404)
