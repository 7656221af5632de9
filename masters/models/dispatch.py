"""Which dispatchers are running: they share each master's send rate."""

from __future__ import annotations

from datetime import datetime, timedelta

from django.db import models
from django.utils import timezone

# A dispatcher checks in every second (masters.dispatcher.MASTERS_EVERY_S); one
# unheard of for this long has died or stalled and no longer takes a share.
LIVE_FOR = timedelta(seconds=5)
# Rows of dispatchers gone this long are deleted by whoever checks in next.
FORGET_AFTER = timedelta(minutes=10)


class DispatcherNode(models.Model):
    """One running dispatcher, as last heard of.

    A master's ``max_messages_per_second`` is what WhatsApp may see from it in
    all, so each of the live dispatchers sends at most its share. A dispatcher
    that stops cleanly checks out, and the others take the full rate at their
    next check-in; one that dies leaves the others on a smaller share (slower,
    never faster) for ``LIVE_FOR``.
    """

    name = models.CharField(max_length=100, unique=True)
    started_at = models.DateTimeField()
    seen_at = models.DateTimeField(db_index=True)

    def __str__(self) -> str:
        return self.name

    @classmethod
    def check_in(cls, name: str, now: datetime | None = None) -> int:
        """Say ``name`` is alive; return how many dispatchers are (itself included)."""
        now = now or timezone.now()
        cls.objects.update_or_create(
            name=name,
            defaults={"seen_at": now},
            create_defaults={"started_at": now, "seen_at": now},
        )
        cls.objects.filter(seen_at__lt=now - FORGET_AFTER).delete()
        return cls.objects.filter(seen_at__gt=now - LIVE_FOR).count()

    @classmethod
    def check_out(cls, name: str) -> None:
        """Leave at a clean stop, so the others take the full rate at once."""
        cls.objects.filter(name=name).delete()


def rate_share(rate: float, dispatchers: int) -> float:
    """One dispatcher's share of a master's messages-per-second limit."""
    return rate / max(1, dispatchers)
