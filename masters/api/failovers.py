"""Operator actions in the API: list failovers, fail a master over, roll a failover back.

Any valid token may read the list; failing over and rolling back need a token
with operator rights (``ApiToken.can_operate``). masters.failover records
users as initiators, and an API token is not a user: the views pass
``actor=None``, prefix the reason with ``api:<token name>`` and mark the event
with the token's name in the same transaction, which is what ``initiated_by``
shows. The contract is docs/API.md "Operator actions" and the OpenAPI document.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from django.db import transaction
from django.db.models import Q, QuerySet
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.http.request import QueryDict

from masters.api.auth import operator_required, token_required
from masters.api.validation import (
    EXPECTED_STRING,
    UNKNOWN_FIELD,
    FieldErrors,
    Invalid,
    read_json_object,
    storable,
)
from masters.api.views import MAX_ID, endpoint, iso
from masters.failover import (
    FailoverRefused,
    Plan,
    execute_failover,
    plan_failover,
    rollback_failover,
)
from masters.models import ApiToken, FailoverEvent, Master

# A failover body holds three short fields: even a fully \u-escaped reason fits.
FAILOVER_BODY_BYTES = 8 * 1024
REASON_MAX = 500
DEFAULT_REASON = "manual failover via API"
LIST_LIMIT_DEFAULT = 50
LIST_LIMIT_MAX = 500
LIST_PARAMETERS = {"limit", "before", "master"}
FAILOVER_FIELDS = {"backup", "dry_run", "reason"}
EXPECTED_BOOLEAN = "expected true or false"
# FailoverEvent.detail key naming the API token that started (or rolled back) a failover.
API_TOKEN_KEY = "api_token"


def api_initiator(token: ApiToken) -> str:
    return f"api:{token.name}"


# --- the event, as the list and the operator actions show it ------------------------------


def master_ref(master: Master | None) -> dict[str, str] | None:
    if master is None:
        return None
    return {"id": master.external_id, "display_name": master.display_name}


def initiator(event: FailoverEvent) -> str:
    """Say who started a failover: a username, ``api:<token name>``, or ``automatic``."""
    if event.initiated_by is not None:
        return event.initiated_by.get_username()
    token = event.detail.get(API_TOKEN_KEY) if isinstance(event.detail, dict) else None
    if token:
        return f"api:{token}"
    # A person started it, but their user has since been deleted (SET_NULL).
    return "automatic" if event.automatic else "unknown"


def event_body(event: FailoverEvent) -> dict[str, Any]:
    return {
        "id": event.pk,
        "failed_master": master_ref(event.failed_master),
        "backup_master": master_ref(event.backup_master),
        "reason": event.reason,
        "status": event.status,
        "initiated_by": initiator(event),
        "started_at": iso(event.started_at),
        "finished_at": iso(event.finished_at),
        "duration_ms": event.duration_ms,
        "moved_messages": event.moved_messages,
        "moved_affinities": event.moved_affinities,
        "checksum": event.checksum or None,
    }


def events() -> QuerySet[FailoverEvent]:
    """Failover events newest first, with what ``event_body`` reads, in one query."""
    return FailoverEvent.objects.select_related(
        "failed_master", "backup_master", "initiated_by"
    ).order_by("-started_at", "-pk")


# --- GET /failovers -------------------------------------------------------------------------


@dataclass
class ListQuery:
    limit: int
    before: FailoverEvent | None
    master: Master | None


@endpoint("GET")
@token_required
def failover_list(request: HttpRequest) -> HttpResponse:
    """List failover events newest first, a page at a time, in queries that do not grow."""
    query = list_query(request.GET)
    found = events()
    if query.master is not None:
        found = found.filter(failed_master=query.master)
    if query.before is not None:
        # Keyset on (started_at, id): stable while new failovers are recorded.
        started = query.before.started_at
        found = found.filter(
            Q(started_at__lt=started) | Q(started_at=started, pk__lt=query.before.pk)
        )
    page = list(found[: query.limit + 1])
    more = len(page) > query.limit
    page = page[: query.limit]
    return JsonResponse(
        {
            "failovers": [event_body(event) for event in page],
            "next_before": page[-1].pk if more else None,
        }
    )


def list_query(params: QueryDict) -> ListQuery:
    """Return the list's parameters, or raise Invalid naming each bad one."""
    errors: FieldErrors = {name: [UNKNOWN_FIELD] for name in params if name not in LIST_PARAMETERS}
    limit, problems = whole_number(params.get("limit"), LIST_LIMIT_DEFAULT, LIST_LIMIT_MAX)
    if problems:
        errors["limit"] = problems
    before = None
    before_id, problems = whole_number(params.get("before"), 0, MAX_ID)
    if problems:
        errors["before"] = problems
    elif before_id:
        before = FailoverEvent.objects.filter(pk=before_id).first()
        if before is None:
            errors["before"] = [f"no failover {before_id}"]
    master = None
    if params.get("master") is not None:
        master = Master.objects.filter(external_id=params["master"]).first()
        if master is None:
            errors["master"] = [f"no master with id {params['master']!r}"]
    if errors:
        raise Invalid(f"invalid parameters: {', '.join(sorted(errors))}", fields=errors)
    return ListQuery(limit=limit, before=before, master=master)


def whole_number(value: str | None, default: int, maximum: int) -> tuple[int, list[str]]:
    """Read a query parameter as an integer from 1 to ``maximum``; absent gives ``default``."""
    if value is None:
        return default, []
    # isdigit alone accepts "²", which int() refuses.
    if not (value.isascii() and value.isdigit()) or not 1 <= int(value) <= maximum:
        return default, [f"must be an integer from 1 to {maximum}"]
    return int(value), []


# --- POST /masters/<id>/failover ------------------------------------------------------------


@dataclass
class FailoverOrder:
    backup: Master | None
    dry_run: bool
    reason: str


@endpoint("POST")
@token_required
@operator_required
def master_failover(request: HttpRequest, external_id: str) -> HttpResponse:
    """Fail a master over now (or preview it with ``dry_run``); answer with the event."""
    master = Master.objects.filter(external_id=external_id).first()
    if master is None:
        return JsonResponse({"error": f"no master {external_id}"}, status=404)
    order = failover_order(optional_json_object(request), master)
    backup_id = order.backup.pk if order.backup else None
    if order.dry_run:
        return JsonResponse(preview(master, plan_failover(master, backup_id)))
    if order.backup is not None:
        refuse_unusable_backup(master, order.backup)
    token = request.api_token
    try:
        with transaction.atomic():
            event = execute_failover(
                master.pk,
                reason=f"{api_initiator(token)}: {order.reason}",
                backup_id=backup_id,
                actor=None,
            )
            mark_started_by(event, token)
    except FailoverRefused as refused:
        return JsonResponse({"error": str(refused)}, status=409)
    return JsonResponse(event_body(events().get(pk=event.pk)))


def optional_json_object(request: HttpRequest) -> dict[str, Any]:
    """Return the body as a JSON object, or {} for a bare POST with no body at all."""
    declared = request.META.get("CONTENT_LENGTH") or "0"
    if declared == "0" and "Transfer-Encoding" not in request.headers:
        return {}
    return read_json_object(request, FAILOVER_BODY_BYTES)


def failover_order(data: dict[str, Any], master: Master) -> FailoverOrder:
    """Return what a failover body asks for, or raise Invalid naming each bad field."""
    errors: FieldErrors = {name: [UNKNOWN_FIELD] for name in data if name not in FAILOVER_FIELDS}
    dry_run = data.get("dry_run")
    if dry_run is not None and type(dry_run) is not bool:
        errors["dry_run"] = [EXPECTED_BOOLEAN]
    reason = data.get("reason")
    if reason is not None and (problems := reason_problems(reason)):
        errors["reason"] = problems
    backup, problems = named_backup(data.get("backup"), master)
    if problems:
        errors["backup"] = problems
    if errors:
        raise Invalid(f"invalid fields: {', '.join(sorted(errors))}", fields=errors)
    return FailoverOrder(backup=backup, dry_run=bool(dry_run), reason=reason or DEFAULT_REASON)


def reason_problems(value: Any) -> list[str]:
    if not isinstance(value, str):
        return [EXPECTED_STRING]
    if len(value) > REASON_MAX:
        return [f"over {REASON_MAX} characters ({len(value)})"]
    return storable(value)


def named_backup(value: Any, master: Master) -> tuple[Master | None, list[str]]:
    """Find the backup a body names (None when it names none), or say what is wrong."""
    if value is None:
        return None, []
    if not isinstance(value, str):
        return None, [EXPECTED_STRING]
    if value == master.external_id:
        return None, ["must be another master than the one failing over"]
    backup = Master.objects.filter(external_id=value).first()
    if backup is None:
        return None, [f"no master with id {value!r}"]
    return backup, []


def refuse_unusable_backup(master: Master, backup: Master) -> None:
    """Refuse (422) a named backup that cannot take the work now.

    Without this, masters.failover would find no backup and hand the work
    back to the queue: not what an operator who named a backup asked for.
    """
    plan = plan_failover(master, backup.pk)
    if plan.backup_id is None:
        why = plan.reasons.get(str(backup.pk), "cannot take the work now")
        problem = f"{backup.external_id} {why}"
        raise Invalid("invalid fields: backup", fields={"backup": [problem]})


def preview(master: Master, plan: Plan) -> dict[str, Any]:
    """Describe a plan by public ids: what would move, where, and why each candidate."""
    named = Master.objects.in_bulk([int(key) for key in plan.reasons])
    return {
        "dry_run": True,
        "failed_master": master_ref(master),
        "backup_master": master_ref(named.get(plan.backup_id)),
        "messages": len(plan.messages),
        "affinities": len(plan.affinities),
        "checksum": plan.checksum,
        "reasons": {
            named[int(key)].external_id: reason
            for key, reason in plan.reasons.items()
            if int(key) in named
        },
    }


def mark_started_by(event: FailoverEvent, token: ApiToken) -> None:
    """Record the API token that started a failover (masters.failover knows only users)."""
    event.automatic = False
    event.detail = {**event.detail, API_TOKEN_KEY: token.name}
    event.save(update_fields=["automatic", "detail"])


# --- POST /failovers/<id>/rollback ----------------------------------------------------------


@endpoint("POST")
@token_required
@operator_required
def failover_rollback(request: HttpRequest, failover_id: int) -> HttpResponse:
    """Move back what a completed failover moved; answer with the updated event."""
    if failover_id > MAX_ID:
        return no_failover(failover_id)
    try:
        with transaction.atomic():
            event = rollback_failover(failover_id, actor=None)
            mark_rolled_back_by(event, request.api_token)
    except FailoverEvent.DoesNotExist:
        return no_failover(failover_id)
    except FailoverRefused as refused:
        return JsonResponse({"error": str(refused)}, status=409)
    return JsonResponse(event_body(events().get(pk=event.pk)))


def no_failover(failover_id: int) -> JsonResponse:
    return JsonResponse({"error": f"no failover {failover_id}"}, status=404)


def mark_rolled_back_by(event: FailoverEvent, token: ApiToken) -> None:
    """Put the API token in the rollback record, which otherwise says "automatic"."""
    rolled_back = event.detail.get("rolled_back", {}) | {"by": api_initiator(token)}
    event.detail = event.detail | {"rolled_back": rolled_back}
    event.save(update_fields=["detail"])
