"""The dispatcher's database side: claim, route, record, sweep.

Every function here is one short transaction and safe with any number of
dispatchers at once: claims take rows with ``SELECT … FOR UPDATE SKIP
LOCKED`` on PostgreSQL (on SQLite the write lock taken at BEGIN serialises
claimers instead), and results are recorded only while the claim is still
ours (same lease owner, same epoch): a claim that expired and moved on is
never overwritten by a late writer.
"""

from __future__ import annotations

import functools
import random
from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Protocol

from django.conf import settings
from django.db import connection, transaction
from django.db.models import F
from django.utils import timezone

from masters.choices import HealthStatus, MessageStatus
from masters.models import ConversationAffinity, Master, Message

if TYPE_CHECKING:
    from collections.abc import Mapping

    from masters.balancing import Decision

# A degraded master finishes what it already holds; only healthy ones get new work.
SENDABLE = (HealthStatus.HEALTHY, HealthStatus.DEGRADED)
ROUTABLE = tuple(HealthStatus.ROUTABLE)
PENDING = (MessageStatus.QUEUED, MessageStatus.RETRYING)


@dataclass(frozen=True)
class Claimed:
    """What a dispatcher needs to send one claimed message."""

    id: int
    to: str
    text: str
    region: str
    master_id: int | None
    epoch: int
    attempts: int
    idempotency_key: str
    lease_expires_at: datetime
    # True when this claim chose the master (the router's choice, not the row's).
    routed: bool = False


@dataclass(frozen=True)
class Outcome:
    """How one send ended; ``retryable`` only matters when ``error`` is set."""

    message_id: int
    epoch: int
    master_id: int | None
    gateway_message_id: str = ""
    error: str = ""
    retryable: bool = True
    # False for the dispatcher's own reasons not to send (a short lease): they
    # say nothing about the master's health.
    blame_master: bool = True
    # False when the send never started (no slot or rate token before the
    # claim ran short): the message goes back uncounted, to be claimed again.
    attempted: bool = True
    # True when the gateway may have taken the message though the answer was
    # lost (GatewayError.in_doubt): the retry stays on this master for a while.
    in_doubt: bool = False

    @property
    def sent(self) -> bool:
        return not self.error


# What the claim reads of each due message, in Claimed's order.
CLAIM_FIELDS = ("id", "to", "text", "region", "master_id", "epoch", "attempts", "idempotency_key")
# A message no master can take now waits this long before it is looked at again.
NO_MASTER_DELAY = timedelta(seconds=1)


class Routes(Protocol):
    """What the claim needs of a router (masters.routing.Router)."""

    def route_many(
        self,
        messages: list[tuple[int, str, str]],
        affinities: dict[str, int] | None = None,
        assigned: Mapping[int, int] | None = None,
    ) -> dict[int, Decision]: ...

    def invalidate(self) -> None: ...


def claim(owner: str, limit: int, lease: timedelta, router: Routes | None = None) -> list[Claimed]:
    """Claim up to ``limit`` due messages and route the unassigned ones, in one transaction.

    Messages that already have a master (retries, failed-over work) keep it if
    it can still send. Messages without one are routed by ``router`` while
    their rows are locked, and claimed with the chosen master in the same
    UPDATE, so balancing costs the claim no extra transaction. Without a
    router they are claimed as they are, master None (tests route by hand).
    A message no master can take stays queued and is looked at again after
    ``NO_MASTER_DELAY``.
    """
    now = timezone.now()
    at = connection.ops.adapt_datetimefield_value(now)  # what the ORM would send
    params = [*PENDING, at, *SENDABLE, limit]
    if router is not None:
        params.insert(0, at)
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(_claim_sql(connection.vendor, router is not None), params)
        rows = cursor.fetchall()
        if not rows:
            return []
        masters = {row[0]: row[4] for row in rows if row[4] is not None or router is None}
        unassigned = [row for row in rows if row[0] not in masters]
        picked = _route(router, unassigned, masters) if unassigned else {}
        expires = now + lease
        routed = _mark_claimed(masters, picked, owner, expires, now)
        if len(routed) < len(picked):
            router.invalidate()  # a master left rotation since the snapshot
        masters |= routed
        waiting = [row[0] for row in unassigned if row[0] not in masters]
        if waiting:
            Message.objects.filter(pk__any=waiting).update(
                next_attempt_at=now + NO_MASTER_DELAY,
                last_error="waiting: no master is routable",
                updated_at=now,
            )
    return [
        Claimed(
            id_,
            to,
            text,
            region,
            masters[id_],
            epoch,
            attempts + 1,
            key or f"ha-portal-{id_}",
            expires,
            routed=id_ in routed,
        )
        for id_, to, text, region, master_id, epoch, attempts, key, *_ in rows
        if id_ in masters
    ]


@functools.cache
def _claim_sql(vendor: str, with_affinity: bool) -> str:
    """The claim's SELECT: due messages in priority order, locked, waiting ones skipped.

    Written once per process: composed by the ORM it cost 1.7 ms a batch
    (2.9 ms with the affinity), as much as claiming a hundred messages.
    With ``with_affinity`` each unassigned row also brings its contact's
    current master, so routing a batch costs no query of its own. Retried and
    failed-over messages keep their master while it can send.
    """
    quote = connection.ops.quote_name
    message, master = quote(Message._meta.db_table), quote(Master._meta.db_table)
    affinity = quote(ConversationAffinity._meta.db_table)
    columns = ", ".join(f"m.{quote(Message._meta.get_field(f).column)}" for f in CLAIM_FIELDS)
    if with_affinity:
        columns += (
            f", CASE WHEN m.master_id IS NULL THEN (SELECT a.master_id FROM {affinity} AS a "
            'WHERE a.contact = m."to" AND a.expires_at > %s) END'
        )
    sql = (
        f"SELECT {columns} FROM {message} AS m "
        f"WHERE m.status IN ({', '.join(['%s'] * len(PENDING))}) AND m.next_attempt_at <= %s "
        f"AND (m.master_id IS NULL OR m.master_id IN (SELECT id FROM {master} "
        f"WHERE is_active AND health_status IN ({', '.join(['%s'] * len(SENDABLE))}))) "
        "ORDER BY m.priority, m.next_attempt_at, m.id LIMIT %s"
    )
    if connection.features.has_select_for_update_skip_locked:
        sql += " FOR UPDATE OF m SKIP LOCKED"
    return sql


def _mark_claimed(
    assigned: dict[int, int | None],
    picked: dict[int, int],
    owner: str,
    expires: datetime,
    now: datetime,
) -> dict[int, int]:
    """Mark messages as sending under this claim, each with its master; return the routed ones.

    ``assigned`` keep the master they have. ``picked`` are the router's
    choices, kept only if their master is still routable: the router's
    snapshot may be a moment old, and a master that left rotation since then
    gets no new message. On PostgreSQL one UPDATE joins the (id, master) pairs
    as two arrays and checks the masters in the same statement, so a balanced
    batch costs the statement a pre-assigned one does. Elsewhere, a query
    for the routable masters and one UPDATE per master (a handful).
    """
    claimed = {
        "status": MessageStatus.SENDING,
        "lease_owner": owner,
        "lease_expires_at": expires,
        "updated_at": now,
    }
    rows = assigned | picked
    if not rows:
        return {}
    if connection.vendor == "postgresql":
        quote = connection.ops.quote_name
        routable = sorted(ROUTABLE)
        # A row keeps its master, or takes a routable one.
        check = (
            " AND (m.master_id IS NOT DISTINCT FROM claim.master_id OR claim.master_id IN "
            f"(SELECT id FROM {quote(Master._meta.db_table)} WHERE is_active "
            f"AND health_status IN ({', '.join(['%s'] * len(routable))})))"
        )
        with connection.cursor() as cursor:
            cursor.execute(
                f"UPDATE {quote(Message._meta.db_table)} AS m SET status = %s, lease_owner = %s, "
                "lease_expires_at = %s, updated_at = %s, attempts = m.attempts + 1, "
                "master_id = claim.master_id "
                "FROM unnest(%s::bigint[], %s::bigint[]) AS claim (id, master_id) "
                # Redundant with the join, on purpose: it lets the planner read
                # the claimed rows through the primary key. Without it, the
                # routable check made it hash the whole table (a sequential
                # scan per claim, 8 ms at 20,000 queued rows and growing).
                "WHERE m.id = claim.id AND m.id = ANY(%s::bigint[])" + (check if picked else ""),
                [*claimed.values(), list(rows), list(rows.values()), list(rows)]
                + (routable if picked else []),
            )
            if cursor.rowcount == len(rows):
                return picked  # the common case: no RETURNING of every row to read
            # A master left rotation since the snapshot: read back which picked
            # rows were marked (they are still locked by this claim).
            cursor.execute(
                f"SELECT id FROM {quote(Message._meta.db_table)} "
                "WHERE id = ANY(%s::bigint[]) AND status = %s",
                [list(picked), MessageStatus.SENDING],
            )
            marked = {row[0] for row in cursor.fetchall()}
        return {m_id: master_id for m_id, master_id in picked.items() if m_id in marked}
    routable = set(
        Master.objects.filter(
            pk__in=set(picked.values()), is_active=True, health_status__in=ROUTABLE
        ).values_list("pk", flat=True)
    )
    routed = {m_id: master_id for m_id, master_id in picked.items() if master_id in routable}
    by_master: dict[int | None, list[int]] = {}
    for message_id, master_id in (assigned | routed).items():
        by_master.setdefault(master_id, []).append(message_id)
    for master_id, ids in by_master.items():
        Message.objects.filter(pk__any=ids).update(
            master_id=master_id, attempts=F("attempts") + 1, **claimed
        )
    return routed


def _route(router: Routes, rows: list[tuple], assigned: dict[int, int]) -> dict[int, int]:
    """Route unassigned claim rows: message id -> the router's choice of master.

    ``assigned`` are the claim's rows that keep their master: the router
    counts them in the batch it levels.
    """
    messages = [(row[0], row[1], row[3]) for row in rows]
    affinities = {row[1]: row[8] for row in rows if row[8] is not None}
    decisions = router.route_many(messages, affinities, Counter(assigned.values()))
    return {m_id: decision.candidate_id for m_id, decision in decisions.items()}


def record(owner: str, outcomes: list[Outcome], max_attempts: int) -> list[Outcome]:
    """Write send results for claims still ours; return the outcomes that were written.

    Each sent message also points its contact at the master that sent it
    (conversation affinity), in the same transaction: the contact's next
    message follows the number it just heard from, whichever way it was routed.
    """
    if not outcomes:
        return []
    now = timezone.now()
    by_id = {outcome.message_id: outcome for outcome in outcomes}
    with transaction.atomic():
        written = _record_sent_in_one_statement(owner, outcomes, now)
        for message_id in written:
            del by_id[message_id]
        if not by_id:
            return [outcome for outcome in outcomes if outcome.message_id in written]
        rows = list(
            Message.objects.select_for_update()
            .filter(pk__any=list(by_id), lease_owner=owner, status=MessageStatus.SENDING)
            .order_by("pk")
            .only("pk", "to", "epoch", "attempts", "expires_at", *RESULT_FIELDS)
        )
        # A row whose epoch moved on was taken by a failover or a reclaim while
        # we sent: not ours to write.
        ours = [row for row in rows if row.epoch == by_id[row.pk].epoch]
        sent = [row for row in ours if _plainly_sent(row, by_id[row.pk])]
        rest = [row for row in ours if not _plainly_sent(row, by_id[row.pk])]
        if sent:
            # The common case in bulk: what every sent row shares in one UPDATE,
            # and only the gateway's ids row by row (a per-field CASE over ten
            # fields made recording cost more than sending).
            Message.objects.filter(pk__any=[row.pk for row in sent]).update(
                status=MessageStatus.SENT,
                sent_at=now,
                last_error="",
                lease_owner="",
                lease_expires_at=None,
                in_doubt_until=None,
                updated_at=now,
            )
            for row in sent:
                row.gateway_message_id = by_id[row.pk].gateway_message_id
            Message.objects.bulk_update(sent, ["gateway_message_id"])
        failing = {by_id[row.pk].master_id for row in rest if by_id[row.pk].error}
        sendable = set(
            Master.objects.filter(
                pk__in=failing - {None}, is_active=True, health_status__in=SENDABLE
            ).values_list("pk", flat=True)
        )
        for row in rest:
            _apply(row, by_id[row.pk], now, max_attempts, sendable)
        Message.objects.bulk_update(rest, RESULT_FIELDS)
        # In id order, so a contact's latest message names its master.
        delivered = sorted(
            sent + [row for row in rest if row.status == MessageStatus.SENT], key=lambda r: r.pk
        )
        senders = {row.to: row.master_id for row in delivered}
        if senders:
            ConversationAffinity.remember(senders, now)
    ours_ids = {row.pk for row in ours} | written
    return [outcome for outcome in outcomes if outcome.message_id in ours_ids]


def _record_sent_in_one_statement(owner: str, outcomes: list[Outcome], now) -> set[int]:
    """Mark plainly sent messages sent, fenced, in one UPDATE; return the ids written.

    The common case in bulk, on PostgreSQL: the claim must still be ours (same
    lease owner, still sending, same epoch) and the send went through the
    master the row names; the (id, epoch, master, gateway id) tuples travel
    as arrays. Everything else (errors, stale claims, a master that changed)
    is left to the general path. Elsewhere it writes nothing.
    """
    sent = [o for o in outcomes if o.attempted and o.sent and o.master_id is not None]
    if not sent or connection.vendor != "postgresql":
        return set()
    table = connection.ops.quote_name(Message._meta.db_table)
    remember, remember_params = ConversationAffinity.remember_sql("sent", now)
    with connection.cursor() as cursor:
        cursor.execute(
            f"WITH sent AS (UPDATE {table} AS m SET status = %s, sent_at = %s, last_error = '', "
            "lease_owner = '', lease_expires_at = NULL, in_doubt_until = NULL, updated_at = %s, "
            "gateway_message_id = result.gateway_message_id "
            "FROM unnest(%s::bigint[], %s::bigint[], %s::bigint[], %s::varchar[]) "
            "AS result (id, epoch, master_id, gateway_message_id) "
            # m.id = ANY: read our rows by primary key (see _mark_claimed), not
            # every in-flight row of every dispatcher.
            "WHERE m.id = result.id AND m.id = ANY(%s::bigint[]) AND m.epoch = result.epoch "
            "AND m.master_id = result.master_id "
            "AND m.lease_owner = %s AND m.status = %s "
            'RETURNING m.id, m."to", m.master_id), '
            f"remembered AS ({remember}) "
            "SELECT id FROM sent",
            [
                MessageStatus.SENT,
                now,
                now,
                [o.message_id for o in sent],
                [o.epoch for o in sent],
                [o.master_id for o in sent],
                [o.gateway_message_id for o in sent],
                [o.message_id for o in sent],
                owner,
                MessageStatus.SENDING,
                *remember_params,
            ],
        )
        return {row[0] for row in cursor.fetchall()}


def _plainly_sent(row: Message, outcome: Outcome) -> bool:
    """A send that succeeded through the master the row already names."""
    return outcome.attempted and outcome.sent and row.master_id == outcome.master_id


RESULT_FIELDS = [
    "status",
    "master",
    "gateway_message_id",
    "last_error",
    "sent_at",
    "next_attempt_at",
    "lease_owner",
    "lease_expires_at",
    "in_doubt_until",
    "updated_at",
    "attempts",
]


def _apply(
    row: Message, outcome: Outcome, now: datetime, max_attempts: int, sendable: set[int]
) -> None:
    """Write one outcome onto its row; ``sendable``: the failing masters that can still send."""
    row.master_id = outcome.master_id
    row.lease_owner, row.lease_expires_at, row.updated_at = "", None, now
    if not outcome.attempted:
        # Never sent: back to the queue at once, the claim not counted.
        row.status, row.attempts = MessageStatus.RETRYING, max(0, row.attempts - 1)
        row.next_attempt_at, row.last_error = now, f"not sent yet: {outcome.error}"
    elif outcome.sent:
        row.status, row.sent_at = MessageStatus.SENT, now
        row.gateway_message_id, row.last_error = outcome.gateway_message_id, ""
        row.in_doubt_until = None
    elif not outcome.retryable:
        row.status, row.last_error = MessageStatus.DEAD, f"rejected: {outcome.error}"
    elif row.attempts >= max_attempts:
        row.status = MessageStatus.DEAD
        row.last_error = f"gave up after {row.attempts} attempts: {outcome.error}"
    elif row.expires_at is not None and row.expires_at <= now:
        row.status = MessageStatus.EXPIRED
        row.last_error = f"expired while retrying: {outcome.error}"
    else:
        row.status, row.last_error = MessageStatus.RETRYING, outcome.error
        row.next_attempt_at = now + backoff(row.attempts)
        if outcome.in_doubt:
            row.in_doubt_until = doubt_ends(now)
        if row.in_doubt(now):
            row.last_error = f"{outcome.error} (it may have gone out: {DOUBT_NOTE})"
        elif outcome.master_id not in sendable:
            # Its master failed (or went into maintenance) while the send was
            # under way: a failover of it may already have run, and will not
            # run again for this failure, so any master may take the retry.
            row.master_id = None


def backoff(attempts: int, rng: random.Random | None = None) -> timedelta:
    """Exponential backoff with full jitter, capped (attempt 1 waits up to the base)."""
    base = settings.QUEUE["retry_base_ms"]
    cap = settings.QUEUE["retry_max_ms"]
    ceiling = min(cap, base * 2 ** max(0, attempts - 1))
    # Full jitter keeps retries of a burst from arriving together; never less than half.
    millis = (rng or random).uniform(ceiling / 2, ceiling)
    return timedelta(milliseconds=millis)


def expire_overdue() -> int:
    """Expire pending messages past their TTL: late is worse than never for a bot.

    One whose earlier send may have gone out says so: it may have arrived.
    """
    now = timezone.now()
    overdue = Message.objects.filter(status__in=PENDING, expires_at__lte=now)
    expired = {"status": MessageStatus.EXPIRED, "updated_at": now}
    doubtful = overdue.filter(in_doubt_until__isnull=False).update(
        last_error="expired before it could be sent again: an earlier send through "
        "its master may have gone out, unconfirmed",
        **expired,
    )
    return doubtful + overdue.update(last_error="expired before it could be sent", **expired)


def reclaim_expired_leases(max_attempts: int | None = None) -> int:
    """Return messages whose dispatcher died mid-send to the queue, under a new epoch.

    The dead dispatcher may have sent them: each keeps its master, in doubt
    until ``doubt_hold_s`` after its lease ran out (the failover leaves it
    there as long), so only that master's gateway, which knows its
    idempotency key, sends it again; release_doubts frees it afterwards.
    With no hold it goes back unassigned if its master cannot send.
    The epoch bump fences the old claim. A message that has used up its attempts
    this way goes dead instead of looping until its TTL (a poison message
    that kills its dispatcher every time).
    """
    max_attempts = max_attempts or settings.QUEUE["max_attempts"]
    now = timezone.now()
    expired = Message.objects.filter(status=MessageStatus.SENDING, lease_expires_at__lt=now)
    fence = {
        "lease_owner": "",
        "lease_expires_at": None,
        "epoch": F("epoch") + 1,
        "updated_at": now,
    }
    dead = expired.filter(attempts__gte=max_attempts).update(
        status=MessageStatus.DEAD,
        last_error="gave up: its dispatcher's lease expired mid-send on the last attempt",
        **fence,
    )
    retry = {
        "status": MessageStatus.RETRYING,
        "next_attempt_at": now,
        "last_error": "reclaimed: the dispatcher's lease expired mid-send",
        **fence,
    }
    hold = doubt_hold()
    if hold:
        return dead + expired.update(
            in_doubt_until=F("lease_expires_at") + hold,
            **retry | {"last_error": f"{retry['last_error']} ({DOUBT_NOTE})"},
        )
    sendable = Master.objects.filter(is_active=True, health_status__in=SENDABLE).values("pk")
    kept = expired.filter(master__in=sendable).update(**retry)
    # A master that cannot send may have been failed over already: let any master take it.
    return dead + kept + expired.update(master=None, **retry)


DOUBT_NOTE = "only this master sends it again until the doubt ends"


def doubt_hold() -> timedelta:
    return timedelta(seconds=settings.QUEUE["doubt_hold_s"])


def doubt_ends(now: datetime) -> datetime | None:
    """When a send that may have gone out at ``now`` stops binding the message to its master."""
    hold = doubt_hold()
    return now + hold if hold else None


def release_doubts() -> int:
    """Unassign messages whose doubt ended on a master that still cannot send.

    Held so long, the message is sent by whichever master can: if the first
    send did go out, the contact gets it twice, which is better than never.
    """
    now = timezone.now()
    unsendable = Master.objects.exclude(is_active=True, health_status__in=SENDABLE).values("pk")
    return Message.objects.filter(
        master__in=unsendable, status=MessageStatus.RETRYING, in_doubt_until__lte=now
    ).update(
        master=None,
        in_doubt_until=None,
        epoch=F("epoch") + 1,
        next_attempt_at=now,
        last_error="released: its master stayed down past the doubt hold; any master may send it",
        updated_at=now,
    )
