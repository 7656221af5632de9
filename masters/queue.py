"""Putting messages on the queue: idempotent, atomic, nothing else.

The API calls these; the dispatcher (masters.dispatcher) takes it from there.
A message is accepted unassigned: the dispatcher picks its master when it
sends, so a master that fails between accept and send never gets it.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass

from django.conf import settings
from django.db import IntegrityError, transaction
from django.utils import timezone

from masters.choices import MessagePriority, MessageStatus
from masters.models import IdempotencyKey, Message


@dataclass(frozen=True)
class NewMessage:
    """A validated request to send one message."""

    to: str
    text: str
    idempotency_key: str | None = None
    region: str = ""
    priority: str = MessagePriority.NORMAL
    ttl_seconds: int | None = None

    def body_hash(self) -> str:
        """Hash what the sender asked for, so a reused key with another body is caught."""
        fields = asdict(self)
        fields.pop("idempotency_key")
        # Leaving the TTL out and sending the default are the same request.
        if fields["ttl_seconds"] is None:
            fields["ttl_seconds"] = settings.QUEUE["default_ttl_s"]
        return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()


class IdempotencyConflict(Exception):
    """The idempotency key was used before with a different body."""

    def __init__(self, index: int, key: str, existing: Message) -> None:
        super().__init__(f"idempotency_key {key!r} was used for a different message")
        self.index, self.key, self.existing = index, key, existing


@dataclass(frozen=True)
class Accepted:
    message: Message
    created: bool


def enqueue(new: NewMessage) -> Accepted:
    """Queue one message, or return the one already queued under its idempotency key."""
    return enqueue_batch([new])[0]


def enqueue_batch(batch: list[NewMessage]) -> list[Accepted]:
    """Queue messages in one transaction: all are accepted or, on a conflict, none.

    A key seen before with the same body returns the earlier message; with a
    different body it raises IdempotencyConflict and nothing is written.
    """
    for attempt in range(2):
        try:
            return _enqueue_once(batch)
        except IntegrityError:
            # Another request inserted one of our keys between the read and the
            # insert; the second pass finds it and treats it as a replay.
            if attempt:
                raise
    raise AssertionError("unreachable")


def _enqueue_once(batch: list[NewMessage]) -> list[Accepted]:
    keys = [new.idempotency_key for new in batch if new.idempotency_key]
    now = timezone.now()
    with transaction.atomic():
        existing = {
            row.key: row.message
            for row in IdempotencyKey.objects.filter(key__in=keys).select_related("message")
        }
        results: list[Accepted | None] = []
        fresh: list[Message] = []
        seen_in_batch: dict[str, Message] = {}
        for index, new in enumerate(batch):
            key = new.idempotency_key
            earlier = existing.get(key) or seen_in_batch.get(key) if key else None
            if earlier is not None:
                if earlier.body_hash != new.body_hash():
                    raise IdempotencyConflict(index, key, earlier)
                results.append(Accepted(earlier, created=False))
                continue
            message = _build(new, now)
            fresh.append(message)
            if key:
                seen_in_batch[key] = message
            results.append(None)
        Message.objects.bulk_create(fresh)
        # A key another request took since the read fails here, rolling the
        # whole batch back for enqueue_batch's second pass.
        IdempotencyKey.objects.bulk_create(
            IdempotencyKey(key=message.idempotency_key, message=message)
            for message in fresh
            if message.idempotency_key
        )
    created = iter(fresh)
    return [result or Accepted(next(created), created=True) for result in results]


def _build(new: NewMessage, now) -> Message:
    ttl = new.ttl_seconds if new.ttl_seconds is not None else settings.QUEUE["default_ttl_s"]
    return Message(
        idempotency_key=new.idempotency_key,
        body_hash=new.body_hash(),
        to=new.to,
        text=new.text,
        region=new.region,
        priority=new.priority,
        status=MessageStatus.QUEUED,
        next_attempt_at=now,
        expires_at=now + timezone.timedelta(seconds=ttl),
    )
