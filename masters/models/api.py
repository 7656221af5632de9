"""Tokens for the REST API the bot calls."""

from __future__ import annotations

import hashlib
import secrets

from django.db import models
from django.utils import timezone

TOKEN_PREFIX = "hap_"


def hash_token(token: str) -> str:
    # Tokens carry 256 bits of randomness: a fast hash is enough, and lets
    # every request find its token by an indexed lookup.
    return hashlib.sha256(token.encode()).hexdigest()


class ApiToken(models.Model):
    """A bearer token; only its hash is stored, the token is shown once."""

    name = models.CharField(max_length=100, unique=True)
    token_hash = models.CharField(max_length=64, unique=True, editable=False)
    # The first characters, so an operator can tell tokens apart in the admin.
    hint = models.CharField(max_length=12, editable=False)
    can_operate = models.BooleanField(
        default=False, help_text="Operator rights: failover and rollback through the API."
    )
    is_active = models.BooleanField(default=True)
    created_at = models.DateTimeField(auto_now_add=True)
    last_used_at = models.DateTimeField(null=True, blank=True, editable=False)

    def __str__(self) -> str:
        return f"{self.name} ({self.hint}…)"

    @classmethod
    def issue(cls, name: str, *, can_operate: bool = False) -> tuple[ApiToken, str]:
        """Create a token; return the row and the token itself (never stored)."""
        token = TOKEN_PREFIX + secrets.token_urlsafe(32)
        row = cls.objects.create(
            name=name, token_hash=hash_token(token), hint=token[:8], can_operate=can_operate
        )
        return row, token

    @classmethod
    def authenticate(cls, token: str) -> ApiToken | None:
        """Return the active token row for ``token``, or None."""
        row = cls.objects.filter(token_hash=hash_token(token), is_active=True).first()
        if row is not None and (
            row.last_used_at is None
            or timezone.now() - row.last_used_at > timezone.timedelta(minutes=1)
        ):
            # Touched at most once a minute: not a write per API call.
            cls.objects.filter(pk=row.pk).update(last_used_at=timezone.now())
        return row
