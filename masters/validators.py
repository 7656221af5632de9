"""Field validators shared by models, forms, the config import and the API."""

from __future__ import annotations

from urllib.parse import urlsplit

import phonenumbers
from django.core.exceptions import ValidationError

E164_ERROR = "not a valid E.164 number"


def normalise_e164(value: str) -> str:
    """Return VALUE as E.164 (+<country><number>), or raise ValidationError."""
    if not isinstance(value, str) or not value.startswith("+"):
        raise ValidationError(E164_ERROR, code="e164")
    try:
        number = phonenumbers.parse(value, None)
    except phonenumbers.NumberParseException:
        raise ValidationError(E164_ERROR, code="e164") from None
    if not phonenumbers.is_valid_number(number):
        raise ValidationError(E164_ERROR, code="e164")
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


def validate_e164(value: str) -> None:
    """Accept only a valid number already written in E.164, as stored."""
    if normalise_e164(value) != value:
        raise ValidationError(E164_ERROR, code="e164")


def validate_http_url(value: str) -> None:
    """Accept only an absolute http(s) URL with a host."""
    parts = urlsplit(value)
    if parts.scheme not in {"http", "https"} or not parts.hostname:
        raise ValidationError("must be an http:// or https:// URL", code="url")
