"""Import and export bots-config.json (v4.0, and the older v3 shape).

The file format is a contract with the bot's own tooling: keys are spelled as
in the plan (camelCase) and only ever added to. Import is all-or-nothing: the
whole file is checked first, every problem is reported with its JSON path
(``masters[1].phoneNumber: not a valid E.164 number``), and nothing is written
unless the file is good.
"""

from __future__ import annotations

import math
import re
import reprlib
from dataclasses import dataclass, field
from typing import Any

from django.core.exceptions import ValidationError
from django.db import transaction

from masters.choices import GatewayKind, HealthStatus, RecipientKind, Strategy, WebhookFormat
from masters.models import CLOUD_API_DEFAULT_URL, AlertRecipient, Event, Master, RuntimeSettings

EXPORT_VERSION = "4.0"
SUPPORTED_MAJOR_VERSIONS = {"3", "4"}

# JSON key -> (model field, expected type). bool is checked before int on purpose:
# in Python True is an int, and "priority": true is a mistake worth naming.
MASTER_FIELDS: dict[str, tuple[str, type | tuple[type, ...]]] = {
    "phoneNumber": ("phone_number", str),
    "displayName": ("display_name", str),
    "role": ("role", str),
    "priority": ("priority", int),
    "weight": ("weight", (int, float)),
    "region": ("region", str),
    "failoverPriority": ("failover_priority", int),
    "isActive": ("is_active", bool),
    "maxMessagesPerSecond": ("max_messages_per_second", int),
    "maxRecipientsPerDay": ("max_recipients_per_day", int),
}
# Accepted and validated, but never written: health comes from probes, not files.
MASTER_INFO_KEYS = {"id", "healthStatus", "gateway"}

SETTINGS_FIELDS: dict[str, tuple[str, type]] = {
    "enabled": ("failover_enabled", bool),
    "healthCheckInterval": ("health_check_interval_ms", int),
    "failoverTimeout": ("failover_timeout_ms", int),
    "maxRecoveryAttempts": ("max_recovery_attempts", int),
    "loadBalancingStrategy": ("load_balancing_strategy", str),
    "alertCriticalEnabled": ("alert_critical_enabled", bool),
    "alertWarningEnabled": ("alert_warning_enabled", bool),
}

# Per gateway kind: JSON key -> model field. "type" and the secret are handled apart.
GATEWAY_FIELDS: dict[str, dict[str, str]] = {
    GatewayKind.WAHA: {"url": "gateway_url", "session": "gateway_session"},
    GatewayKind.EVOLUTION: {"url": "gateway_url", "instance": "gateway_session"},
    GatewayKind.CLOUD_API: {
        "url": "gateway_url",
        "apiVersion": "gateway_api_version",
        "phoneNumberId": "gateway_session",
    },
}
GATEWAY_SECRET_KEY = {
    GatewayKind.WAHA: "apiKey",
    GatewayKind.EVOLUTION: "apiKey",
    GatewayKind.CLOUD_API: "accessToken",
}
GATEWAY_DEFAULTS = {
    GatewayKind.WAHA: {"session": "default"},
    GatewayKind.EVOLUTION: {},
    GatewayKind.CLOUD_API: {"url": CLOUD_API_DEFAULT_URL, "apiVersion": "v21.0"},
}
SEVERITY_KEYS = {"critical": "wants_critical", "warning": "wants_warning", "info": "wants_info"}

# No field of the file holds a control character: a NUL cannot be stored on
# PostgreSQL, and a newline in a key or URL is a paste error (or a header injection).
CONTROL_CHARACTERS = re.compile(r"[\x00-\x1f\x7f]")
PLAIN_KEY = re.compile(r"[A-Za-z0-9_.-]{1,80}")
# Values quoted in errors are cut short: a hostile file must not flood the terminal.
_SHORT = reprlib.Repr()
_SHORT.maxstring = _SHORT.maxother = 60


class ConfigError(Exception):
    """A config file that cannot be imported; ``errors`` lists every problem by path."""

    def __init__(self, errors: list[str]) -> None:
        self.errors = errors
        super().__init__("\n".join(errors))


@dataclass
class ImportResult:
    created: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    untouched: list[str] = field(default_factory=list)
    recipients: int = 0
    warnings: list[str] = field(default_factory=list)


class _Checker:
    """Collects errors with their JSON paths while reading a file."""

    def __init__(self) -> None:
        self.errors: list[str] = []
        self.warnings: list[str] = []

    def error(self, path: str, message: str) -> None:
        self.errors.append(f"{path}: {message}")

    def typed(self, path: str, value: Any, expected: type | tuple[type, ...]) -> bool:
        types = expected if isinstance(expected, tuple) else (expected,)
        # bool is an int in Python, but "priority": true is a mistake worth naming.
        ok = isinstance(value, types) and (bool in types or not isinstance(value, bool))
        if not ok:
            self.error(path, f"expected {_type_name(types)}, got {_json_type(value)}")
            return False
        problem = _unstorable(value)
        if problem:
            self.error(path, problem)
        return not problem

    def unknown_keys(self, path: str, data: dict, known: set[str]) -> None:
        for key in sorted(set(data) - known):
            self.warnings.append(f"{path}.{_key(key)}: unknown key, ignored")


def _unstorable(value: Any) -> str:
    """Say what the database or a gateway could not take in a value of the right type."""
    if isinstance(value, float) and not math.isfinite(value):
        # NaN slips past range validators (every comparison with it is false).
        return "expected a finite number"
    if not isinstance(value, str):
        return ""
    if CONTROL_CHARACTERS.search(value):
        return "must not contain control characters (NUL, tab, newline, escape)"
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return "must be valid Unicode (no lone surrogates)"
    return ""


def _shown(value: Any) -> str:
    """Quote a value from the file for an error message, cut short."""
    return _SHORT.repr(value)


def _key(key: str) -> str:
    """Name a key from the file in a message: as is when plain, else quoted and cut short."""
    return key if PLAIN_KEY.fullmatch(key) else _shown(key)


def _type_name(types: tuple[type, ...]) -> str:
    names = {
        bool: "true or false",
        int: "a whole number",
        float: "a number",
        str: "a string",
        list: "a list",
    }
    return " or ".join(dict.fromkeys(names.get(t, t.__name__) for t in types))


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    return {
        bool: "true/false",
        int: "a number",
        float: "a number",
        str: "a string",
        list: "a list",
        dict: "an object",
    }.get(type(value), type(value).__name__)


# --- import -------------------------------------------------------------------------


def import_bots_config(data: Any) -> ImportResult:
    """Check the whole file, then apply it in one transaction; raise ConfigError if bad."""
    check = _Checker()
    if not isinstance(data, dict):
        raise ConfigError([f"(file): expected a JSON object, got {_json_type(data)}"])
    _check_version(check, data.get("version"))
    check.unknown_keys(
        "(file)", data, {"version", "failoverSettings", "masters", "alertRecipients"}
    )

    with transaction.atomic():
        runtime = RuntimeSettings.objects.select_for_update().get(pk=RuntimeSettings.current().pk)
        settings_changed = _read_failover_settings(check, data.get("failoverSettings"), runtime)
        masters = _read_masters(check, data.get("masters"))
        recipients = _read_recipients(check, data.get("alertRecipients"))
        if check.errors:
            raise ConfigError(check.errors)
        result = ImportResult(warnings=check.warnings)
        if settings_changed:
            runtime.save()
        _save_masters(masters, result)
        if recipients is not None:
            result.recipients = _save_recipients(recipients)
        Event.record(
            "config.imported",
            f"bots-config imported: {len(result.created)} created, {len(result.updated)} updated",
            created=result.created,
            updated=result.updated,
        )
    return result


def _check_version(check: _Checker, version: Any) -> None:
    if version is None:
        return  # the v3 shape may carry no version
    if not isinstance(version, str):
        check.error("version", f'expected a string such as "4.0", got {_json_type(version)}')
    elif version.split(".")[0] not in SUPPORTED_MAJOR_VERSIONS:
        check.error("version", f"unsupported version {_shown(version)} (expected 3.x or 4.0)")


def _read_failover_settings(check: _Checker, data: Any, runtime: RuntimeSettings) -> bool:
    if data is None:
        return False  # v3 shape: keep what we have (seeded from the environment)
    if not isinstance(data, dict):
        check.error("failoverSettings", f"expected an object, got {_json_type(data)}")
        return False
    check.unknown_keys("failoverSettings", data, set(SETTINGS_FIELDS))
    for key, (name, expected) in SETTINGS_FIELDS.items():
        if key in data and check.typed(f"failoverSettings.{key}", data[key], expected):
            setattr(runtime, name, data[key])
    if "loadBalancingStrategy" in data and data["loadBalancingStrategy"] not in Strategy.values:
        check.error(
            "failoverSettings.loadBalancingStrategy",
            f"expected one of {', '.join(Strategy.values)}, "
            f"got {_shown(data['loadBalancingStrategy'])}",
        )
        return False
    _model_errors(check, "failoverSettings", runtime, {v[0]: k for k, v in SETTINGS_FIELDS.items()})
    return True


def _read_masters(check: _Checker, data: Any) -> list[Master]:
    if data is None:
        return []
    if not isinstance(data, list):
        check.error("masters", f"expected a list, got {_json_type(data)}")
        return []
    existing = {m.external_id: m for m in Master.objects.select_for_update()}
    seen_ids: dict[str, int] = {}
    seen_phones: dict[str, int] = {}
    masters = []
    for index, item in enumerate(data):
        path = f"masters[{index}]"
        master = _read_master(check, path, item, existing)
        if master is None:
            continue
        for seen, value, key in (
            (seen_ids, master.external_id, "id"),
            (seen_phones, master.phone_number, "phoneNumber"),
        ):
            if value in seen:
                check.error(f"{path}.{key}", f"{_shown(value)} repeats masters[{seen[value]}]")
            seen[value] = index
        masters.append(master)
    # Checked here, not by the database: its unique check would also trip over
    # numbers that change hands within the file (_save_masters frees those first).
    for held in existing.values():
        index = seen_phones.get(held.phone_number)
        if index is not None and held.external_id not in seen_ids:
            check.error(
                f"masters[{index}].phoneNumber",
                f"{_shown(held.phone_number)} belongs to master {_shown(held.external_id)}, "
                "which this file does not list",
            )
    return masters


def _read_master(
    check: _Checker, path: str, item: Any, existing: dict[str, Master]
) -> Master | None:
    if not isinstance(item, dict):
        check.error(path, f"expected an object, got {_json_type(item)}")
        return None
    external_id = item.get("id")
    if not isinstance(external_id, str) or not external_id:
        check.error(f"{path}.id", "required: a non-empty string")
        return None
    if "phoneNumber" not in item and external_id not in existing:
        check.error(f"{path}.phoneNumber", "required for a new master")
    check.unknown_keys(path, item, set(MASTER_FIELDS) | MASTER_INFO_KEYS)
    master = existing.get(external_id) or Master(external_id=external_id, display_name=external_id)
    errors_before = len(check.errors)
    for key, (name, expected) in MASTER_FIELDS.items():
        if key in item and check.typed(f"{path}.{key}", item[key], expected):
            setattr(master, name, item[key])
    if "healthStatus" in item and item["healthStatus"] not in HealthStatus.values:
        check.error(
            f"{path}.healthStatus",
            f"expected one of {', '.join(HealthStatus.values)}, got {_shown(item['healthStatus'])}",
        )
    if "gateway" in item:
        _read_gateway(check, f"{path}.gateway", item["gateway"], master)
    if len(check.errors) == errors_before:
        names = {v[0]: k for k, v in MASTER_FIELDS.items()} | {"external_id": "id"}
        names |= {name: f"gateway.{key}" for name, key in _gateway_keys(master).items()}
        # Uniqueness is checked against the file above; the database check would
        # trip over masters that swap numbers within one import.
        _model_errors(check, path, master, names, validate_unique=False)
    return master


def _gateway_keys(master: Master) -> dict[str, str]:
    kind = master.gateway_kind if master.gateway_kind in GATEWAY_FIELDS else GatewayKind.WAHA
    keys = dict(GATEWAY_FIELDS[kind])
    keys[GATEWAY_SECRET_KEY[kind]] = "gateway_secret"
    return {name: key for key, name in keys.items()} | {"gateway_kind": "type"}


def _read_gateway(check: _Checker, path: str, data: Any, master: Master) -> None:
    if not isinstance(data, dict):
        check.error(path, f"expected an object, got {_json_type(data)}")
        return
    kind = data.get("type")
    if kind not in GatewayKind.values:
        check.error(
            f"{path}.type", f"expected one of {', '.join(GatewayKind.values)}, got {_shown(kind)}"
        )
        return
    fields = GATEWAY_FIELDS[kind]
    secret_key = GATEWAY_SECRET_KEY[kind]
    check.unknown_keys(path, data, set(fields) | {"type", secret_key})
    values = GATEWAY_DEFAULTS[kind] | {k: v for k, v in data.items() if k in fields}
    for key in fields:
        if key not in values:
            check.error(f"{path}.{key}", f"required for a {kind} gateway")
        elif check.typed(f"{path}.{key}", values[key], str):
            setattr(master, fields[key], values[key].rstrip("/") if key == "url" else values[key])
    if "apiVersion" not in fields:
        master.gateway_api_version = ""
    master.gateway_kind = kind
    # A file without the secret keeps the stored one: exports omit secrets by default.
    if secret_key in data and check.typed(f"{path}.{secret_key}", data[secret_key], str):
        master.gateway_secret = data[secret_key]


def _read_recipients(check: _Checker, data: Any) -> list[AlertRecipient] | None:
    if data is None:
        return None
    if not isinstance(data, dict):
        check.error("alertRecipients", f"expected an object, got {_json_type(data)}")
        return None
    check.unknown_keys("alertRecipients", data, {"email", "webhooks"})
    recipients = []
    emails = data.get("email", [])
    if check.typed("alertRecipients.email", emails, list):
        for index, address in enumerate(emails):
            path = f"alertRecipients.email[{index}]"
            if check.typed(path, address, str):
                recipient = AlertRecipient(kind=RecipientKind.EMAIL, email=address)
                _model_errors(check, path, recipient, {"email": ""}, validate_unique=False)
                recipients.append(recipient)
    hooks = data.get("webhooks", [])
    if check.typed("alertRecipients.webhooks", hooks, list):
        for index, hook in enumerate(hooks):
            recipient = _read_webhook(check, f"alertRecipients.webhooks[{index}]", hook)
            if recipient is not None:
                recipients.append(recipient)
    return recipients


def _read_webhook(check: _Checker, path: str, hook: Any) -> AlertRecipient | None:
    if not isinstance(hook, dict):
        check.error(path, f"expected an object, got {_json_type(hook)}")
        return None
    check.unknown_keys(path, hook, {"url", "secret", "format", "severities"})
    recipient = AlertRecipient(kind=RecipientKind.WEBHOOK)
    for key in ("url", "secret"):
        if key in hook and check.typed(f"{path}.{key}", hook[key], str):
            setattr(recipient, key, hook[key])
    fmt = hook.get("format", WebhookFormat.JSON)
    if fmt not in WebhookFormat.values:
        check.error(f"{path}.format", f"expected one of {', '.join(WebhookFormat.values)}")
    recipient.format = fmt
    severities = hook.get("severities")
    if severities is not None:
        if not isinstance(severities, list) or not all(
            isinstance(name, str) and name in SEVERITY_KEYS for name in severities
        ):
            check.error(f"{path}.severities", "expected a list of critical, warning, info")
        else:
            for key, name in SEVERITY_KEYS.items():
                setattr(recipient, name, key in severities)
    _model_errors(check, path, recipient, {"url": "url"}, validate_unique=False)
    return recipient


def _model_errors(
    check: _Checker,
    path: str,
    instance: Any,
    names: dict[str, str],
    *,
    validate_unique: bool = True,
) -> None:
    """Run the model's own validation and report each error under its JSON key."""
    try:
        instance.full_clean(validate_unique=validate_unique, validate_constraints=validate_unique)
    except ValidationError as exc:
        for name, messages in exc.message_dict.items():
            key = names.get(name, name)
            where = f"{path}.{key}" if key else path
            for message in messages:
                check.error(where, message)


def _save_masters(masters: list[Master], result: ImportResult) -> None:
    # Numbers may change hands within one file (two masters swap theirs): park
    # each changing number on a placeholder first, or the unique constraint
    # trips on the first save. One transaction: nobody sees the placeholders.
    stored = dict(
        Master.objects.filter(pk__in=[m.pk for m in masters if m.pk is not None]).values_list(
            "pk", "phone_number"
        )
    )
    for master in masters:
        if master.pk is not None and stored.get(master.pk) != master.phone_number:
            Master.objects.filter(pk=master.pk).update(phone_number=f"~{master.pk}")
    in_file = set()
    for master in masters:
        is_new = master.pk is None
        master.save()
        in_file.add(master.pk)
        (result.created if is_new else result.updated).append(master.external_id)
    result.untouched = list(
        Master.objects.exclude(pk__in=in_file).values_list("external_id", flat=True)
    )


def _save_recipients(recipients: list[AlertRecipient]) -> int:
    """Make the file's recipients the active set; others are switched off, not deleted."""
    kept = []
    for recipient in recipients:
        lookup = (
            {"kind": RecipientKind.EMAIL, "email": recipient.email}
            if recipient.kind == RecipientKind.EMAIL
            else {"kind": RecipientKind.WEBHOOK, "url": recipient.url}
        )
        values = {
            name: getattr(recipient, name)
            for name in ("format", "wants_critical", "wants_warning", "wants_info")
        } | {"is_active": True}
        if recipient.secret:
            values["secret"] = recipient.secret
        saved, _ = AlertRecipient.objects.update_or_create(**lookup, defaults=values)
        kept.append(saved.pk)
    AlertRecipient.objects.exclude(pk__in=kept).update(is_active=False)
    return len(kept)


# --- export -------------------------------------------------------------------------


def export_bots_config(*, include_secrets: bool = False) -> dict[str, Any]:
    """Return the current configuration as a bots-config.json v4.0 document."""
    runtime = RuntimeSettings.current()
    return {
        "version": EXPORT_VERSION,
        "failoverSettings": {
            key: getattr(runtime, name) for key, (name, _) in SETTINGS_FIELDS.items()
        },
        "masters": [
            _export_master(master, include_secrets) for master in Master.objects.order_by("pk")
        ],
        "alertRecipients": _export_recipients(include_secrets),
    }


def _export_master(master: Master, include_secrets: bool) -> dict[str, Any]:
    data: dict[str, Any] = {"id": master.external_id}
    for key, (name, _) in MASTER_FIELDS.items():
        value = getattr(master, name)
        if value is not None:
            data[key] = value
    data["healthStatus"] = master.health_status
    if master.has_gateway:
        gateway = {"type": master.gateway_kind}
        for key, name in GATEWAY_FIELDS[master.gateway_kind].items():
            gateway[key] = getattr(master, name)
        if include_secrets and master.gateway_secret:
            gateway[GATEWAY_SECRET_KEY[master.gateway_kind]] = master.gateway_secret
        data["gateway"] = gateway
    return data


def _export_recipients(include_secrets: bool) -> dict[str, Any]:
    active = AlertRecipient.objects.filter(is_active=True).order_by("pk")
    hooks = []
    for recipient in active.filter(kind=RecipientKind.WEBHOOK):
        hook: dict[str, Any] = {"url": recipient.url, "format": recipient.format}
        hook["severities"] = [key for key in SEVERITY_KEYS if recipient.wants(key)]
        if include_secrets and recipient.secret:
            hook["secret"] = recipient.secret
        hooks.append(hook)
    emails = active.filter(kind=RecipientKind.EMAIL).values_list("email", flat=True)
    return {"email": list(emails), "webhooks": hooks}
