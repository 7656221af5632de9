"""The outbound queue (a transactional outbox) and conversation affinity."""

from __future__ import annotations

from datetime import datetime, timedelta

from django.conf import settings
from django.db import connection, models
from django.db.models import Q

from masters.choices import (
    HealthStatus,
    MessagePriority,
    MessageStatus,
)
from masters.validators import validate_e164

# Referenced by name: this module is imported before masters.models.master.
MASTER = "masters.Master"


class Message(models.Model):
    """One outgoing message: the queue is this table (a transactional outbox)."""

    # NULL for "no key". Unique through IdempotencyKey, not an index here:
    # see that model.
    idempotency_key = models.CharField(max_length=200, null=True, blank=True)  # noqa: DJ001
    body_hash = models.CharField(max_length=64, help_text="SHA-256 of the request body fields.")
    to = models.CharField(max_length=16, validators=[validate_e164])
    text = models.TextField()
    region = models.CharField(max_length=50, blank=True)
    priority = models.CharField(
        max_length=8, choices=MessagePriority, default=MessagePriority.NORMAL
    )
    status = models.CharField(max_length=16, choices=MessageStatus, default=MessageStatus.QUEUED)
    master = models.ForeignKey(
        MASTER,
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="messages",
        # The (master, status) and (master, sent_at) indexes below lead with it:
        # a third would only cost every failover one more entry per moved row.
        db_index=False,
        # Enforced by Django (PROTECT: a master with messages cannot be
        # deleted), not by a database constraint: PostgreSQL checks a deferred
        # foreign key once per changed row at commit, and that check was a
        # third of the time a failover of 10,000 messages took.
        db_constraint=False,
    )
    # Fencing number: bumped whenever the assignment moves, so a dispatcher
    # holding a stale claim cannot record a send after a failover.
    epoch = models.PositiveIntegerField(default=0)
    attempts = models.PositiveIntegerField(default=0)
    next_attempt_at = models.DateTimeField(null=True, blank=True)
    expires_at = models.DateTimeField(null=True, blank=True)
    lease_owner = models.CharField(max_length=100, blank=True)
    lease_expires_at = models.DateTimeField(null=True, blank=True)
    # Set when a send through ``master`` may have been delivered without an
    # answer (its reply was lost, or its dispatcher died): until then the
    # message goes out through that master only, whose gateway knows its
    # idempotency key, and no failover moves it: another master would
    # deliver it a second time.
    in_doubt_until = models.DateTimeField(null=True, blank=True)
    last_error = models.TextField(blank=True)
    # The failover that last moved this message here, so a rollback moves back
    # exactly what it moved.
    failover = models.ForeignKey(
        "masters.FailoverEvent",
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
        # A pointer for rollback, not a constraint: checking it for every moved
        # row at commit cost a failover of 10,000 messages a third of its time.
        db_constraint=False,
        # Rollback finds these through the backup's (master, status) index.
        db_index=False,
    )
    gateway_message_id = models.CharField(max_length=200, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)
    sent_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        indexes = [
            # The dispatcher's claim: pending messages due now, high priority
            # first ("high" sorts before "normal"), then oldest first. It also
            # carries expires_at, so the expiry sweep reads the pending rows
            # from this index alone instead of keeping an index of its own,
            # which every claim, result and failover would have to update.
            models.Index(
                fields=["priority", "next_attempt_at", "id"],
                name="message_due_idx",
                condition=Q(status__in=["queued", "retrying"]),
                include=["expires_at"],
            ),
            # Load metrics: what each master sent in the last interval. Sent rows
            # only: a failover moves unsent ones and need not touch this index.
            models.Index(
                fields=["master", "sent_at"],
                name="message_master_sent_idx",
                condition=Q(sent_at__isnull=False),
            ),
            # Failover: a master's pending and in-flight work; dashboard counts.
            models.Index(fields=["master", "status"], name="message_master_status_idx"),
            # The dashboard's "dead in the last hour": dead rows only (few), so
            # no other update ever touches it.
            models.Index(
                fields=["updated_at"],
                name="message_dead_idx",
                condition=Q(status="dead"),
            ),
            # Lease reclaim: claimed messages whose lease ran out.
            models.Index(
                fields=["lease_expires_at"],
                name="message_lease_idx",
                condition=Q(status="sending"),
            ),
        ]

    def __str__(self) -> str:
        return f"message {self.pk} to {self.to} ({self.status})"

    def in_doubt(self, now: datetime) -> bool:
        """Say whether only this message's master may send it now (see in_doubt_until)."""
        return self.in_doubt_until is not None and self.in_doubt_until > now

    @staticmethod
    def doubted(now: datetime) -> Q:
        """``in_doubt`` as a query filter."""
        return Q(in_doubt_until__gt=now)

    @property
    def gateway_idempotency_key(self) -> str:
        """The key the gateway sees: the bot's own, or one derived from the row."""
        return self.idempotency_key or f"ha-portal-{self.pk}"


class IdempotencyKey(models.Model):
    """A bot's idempotency key and the message it queued: one message per key.

    A table of its own rather than a unique index on Message: a row written
    once at enqueue and never again, where an index on Message gains an entry
    every time a message changes master or status (a failover of 10,000
    messages spent a fifth of its time on this one index).
    """

    key = models.CharField(max_length=200, primary_key=True)
    message = models.OneToOneField(Message, on_delete=models.CASCADE, related_name="+")

    def __str__(self) -> str:
        return self.key


class ConversationAffinity(models.Model):
    """A contact's current master: the same contact keeps the same sender."""

    # The key itself: a failover rewrites every row of the failed master, and
    # each index costs an entry per row; a surrogate id would be one more.
    contact = models.CharField(max_length=16, primary_key=True, validators=[validate_e164])
    # Soft state (a routing preference): Django cascades deletes, and no
    # database constraint is checked for each of the thousands of rows a
    # failover moves at once.
    master = models.ForeignKey(
        MASTER,
        on_delete=models.CASCADE,
        related_name="affinities",
        db_constraint=False,
        db_index=False,  # see Meta.indexes
    )
    expires_at = models.DateTimeField()
    updated_at = models.DateTimeField(auto_now=True)
    failover = models.ForeignKey(
        "masters.FailoverEvent",
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
        # A pointer for rollback, not a constraint: checking it for every moved
        # row at commit cost a failover of 10,000 messages a third of its time.
        db_constraint=False,
        db_index=False,
    )

    class Meta:
        verbose_name_plural = "conversation affinities"
        # No index on master, on purpose: a failover changes only the master
        # (and its pointer), so with no index on either PostgreSQL rewrites
        # each row in place (a HOT update, helped by the table's fillfactor,
        # see migration 0009) instead of adding an entry to every index for
        # every moved conversation. Finding a master's rows is a scan of a
        # table that retention keeps to the live conversations.
        indexes = [models.Index(fields=["expires_at"], name="affinity_expiry_idx")]

    def __str__(self) -> str:
        return f"{self.contact} -> {self.master_id}"

    @classmethod
    def remember(cls, senders: dict[str, int], now: datetime) -> int:
        """Point each contact at the master that just sent to it; return the rows written.

        The general path (SQLite, and sends PostgreSQL's one-statement record
        left over); ``remember_sql`` is the same rule in SQL. Only routable
        masters are remembered: a late send through a master that has since
        failed must not pull its contacts back to it. A row is written only
        when it is new, moved, or expires within half the TTL
        (``affinities_to_write``), so a steady conversation costs no write.
        """
        from masters.balancing import affinities_to_write

        master_model = cls._meta.get_field("master").related_model
        routable = set(
            master_model.objects.filter(
                pk__in=set(senders.values()),
                is_active=True,
                health_status__in=HealthStatus.ROUTABLE,
            ).values_list("pk", flat=True)
        )
        senders = {c: m for c, m in senders.items() if m in routable}
        if not senders:
            return 0
        existing = {
            contact: (master_id, expires_at)
            for contact, master_id, expires_at in cls.objects.filter(
                contact__any=list(senders)
            ).values_list("contact", "master_id", "expires_at")
        }
        ttl_s = settings.BALANCING["affinity_ttl_s"]
        stale = affinities_to_write(senders, existing, now=now, ttl_s=ttl_s)
        if stale:
            cls.upsert({c: senders[c] for c in stale}, now + timedelta(seconds=ttl_s), now)
        return len(stale)

    @classmethod
    def remember_sql(cls, sent: str, now: datetime) -> tuple[str, list]:
        """``remember`` as one INSERT over ``sent``, a CTE of ("to", master_id, id) rows.

        For PostgreSQL's record of sent messages, so remembering a conversation
        costs no extra statement and no second trip of the contacts. The
        latest message to a contact wins; rows are written in contact order
        (no deadlock between concurrent records); the ON CONFLICT condition
        skips steady conversations.
        """
        quote = connection.ops.quote_name
        masters = quote(cls._meta.get_field("master").related_model._meta.db_table)
        ttl_s = settings.BALANCING["affinity_ttl_s"]
        routable = sorted(HealthStatus.ROUTABLE)
        sql = (
            f"INSERT INTO {quote(cls._meta.db_table)} AS a (contact, master_id, expires_at, "
            "updated_at) "
            'SELECT DISTINCT ON (s."to") s."to", s.master_id, %s, %s '
            f"FROM {sent} AS s JOIN {masters} AS ma ON ma.id = s.master_id "
            f"WHERE ma.is_active AND ma.health_status IN ({', '.join(['%s'] * len(routable))}) "
            'ORDER BY s."to", s.id DESC '
            "ON CONFLICT (contact) DO UPDATE SET master_id = EXCLUDED.master_id, "
            "expires_at = EXCLUDED.expires_at, updated_at = EXCLUDED.updated_at "
            "WHERE a.master_id <> EXCLUDED.master_id OR a.expires_at < %s"
        )
        params = [
            now + timedelta(seconds=ttl_s),
            now,
            *routable,
            now + timedelta(seconds=ttl_s / 2),
        ]
        return sql, params

    @classmethod
    def upsert(cls, masters: dict[str, int], expires_at: datetime, now: datetime) -> None:
        """Point each contact at its master until ``expires_at``, in one statement.

        Rows are written in contact order, so concurrent upserts lock them in
        the same order and cannot deadlock. On PostgreSQL the rows travel as
        two arrays: building a model instance and ten parameters per row cost
        the dispatcher more than the database's own work.
        """
        contacts = sorted(masters)
        if connection.vendor != "postgresql":
            cls.objects.bulk_create(
                [cls(contact=c, master_id=masters[c], expires_at=expires_at) for c in contacts],
                update_conflicts=True,
                unique_fields=["contact"],
                update_fields=["master", "expires_at", "updated_at"],
            )
            return
        with connection.cursor() as cursor:
            cursor.execute(
                f"INSERT INTO {connection.ops.quote_name(cls._meta.db_table)} "
                "(contact, master_id, expires_at, updated_at) "
                "SELECT contact, master_id, %s, %s "
                "FROM unnest(%s::varchar[], %s::bigint[]) AS row (contact, master_id) "
                "ORDER BY contact "
                "ON CONFLICT (contact) DO UPDATE SET master_id = EXCLUDED.master_id, "
                "expires_at = EXCLUDED.expires_at, updated_at = EXCLUDED.updated_at",
                [expires_at, now, contacts, [masters[c] for c in contacts]],
            )
