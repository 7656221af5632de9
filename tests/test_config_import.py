"""bots-config.json import and export: good files, the v3 shape, bad files, round trips."""

from __future__ import annotations

import copy
import json

import pytest
from django.core.management import CommandError, call_command

from masters.choices import GatewayKind, HealthStatus, Strategy
from masters.config import ConfigError, export_bots_config, import_bots_config
from masters.models import AlertRecipient, Event, Master, RuntimeSettings

pytestmark = pytest.mark.django_db

GOOD = {
    "version": "4.0",
    "failoverSettings": {
        "enabled": True,
        "healthCheckInterval": 4000,
        "failoverTimeout": 20000,
        "maxRecoveryAttempts": 3,
        "loadBalancingStrategy": "least-loaded",
    },
    "masters": [
        {
            "id": "linda-master",
            "phoneNumber": "+971505760056",
            "displayName": "Linda-Master",
            "role": "primary",
            "priority": 1,
            "region": "UAE",
            "failoverPriority": 1,
            "isActive": True,
            "healthStatus": "healthy",
            "gateway": {
                "type": "waha",
                "url": "http://127.0.0.1:3000",
                "session": "default",
                "apiKey": "waha-key",
            },
        },
        {
            "id": "omar-master",
            "phoneNumber": "+971505760057",
            "displayName": "Omar-Master",
            "role": "secondary",
            "priority": 2,
            "region": "UAE",
            "failoverPriority": 2,
            "isActive": True,
            "healthStatus": "healthy",
            "gateway": {
                "type": "evolution",
                "url": "http://127.0.0.1:8080",
                "instance": "omar",
                "apiKey": "evo-key",
            },
        },
        {
            "id": "sara-master",
            "phoneNumber": "+966501234567",
            "displayName": "Sara-Master",
            "role": "tertiary",
            "priority": 3,
            "region": "KSA",
            "failoverPriority": 3,
            "isActive": False,
            "healthStatus": "failed",
            "gateway": {"type": "cloud_api", "phoneNumberId": "1234567890", "accessToken": "tok"},
        },
    ],
    "alertRecipients": {
        "email": ["ops@example.com"],
        "webhooks": [
            {"url": "https://hooks.example.com/ha", "secret": "hmac-key", "format": "json"}
        ],
    },
}

V3 = {
    "version": "3.0",
    "masters": [
        {
            "id": "linda-master",
            "phoneNumber": "+971505760056",
            "displayName": "Linda-Master",
            "role": "primary",
            "priority": 1,
        }
    ],
}


def database_snapshot() -> dict:
    """Everything an import may write, as plain data."""
    return {
        "masters": list(Master.objects.order_by("pk").values()),
        "settings": list(RuntimeSettings.objects.values()),
        "recipients": list(AlertRecipient.objects.order_by("pk").values()),
        "events": Event.objects.count(),
    }


def test_it_imports_masters_settings_and_recipients():
    result = import_bots_config(GOOD)

    assert result.created == ["linda-master", "omar-master", "sara-master"]
    linda = Master.objects.get(external_id="linda-master")
    assert (linda.phone_number, linda.role, linda.region) == ("+971505760056", "primary", "UAE")
    assert (linda.gateway_kind, linda.gateway_url, linda.gateway_session) == (
        GatewayKind.WAHA,
        "http://127.0.0.1:3000",
        "default",
    )
    assert linda.gateway_secret == "waha-key"
    sara = Master.objects.get(external_id="sara-master")
    assert sara.gateway_kind == GatewayKind.CLOUD_API
    assert sara.gateway_url == "https://graph.facebook.com"
    assert sara.gateway_api_version == "v21.0"
    assert sara.gateway_session == "1234567890"
    assert sara.is_active is False
    runtime = RuntimeSettings.current()
    assert runtime.health_check_interval_ms == 4000
    assert runtime.failover_timeout_ms == 20000
    assert runtime.load_balancing_strategy == Strategy.LEAST_LOADED
    emails = AlertRecipient.objects.filter(kind="email").values_list("email", flat=True)
    assert list(emails) == ["ops@example.com"]
    assert AlertRecipient.objects.get(kind="webhook").secret == "hmac-key"
    assert Event.objects.filter(kind="config.imported").count() == 1


def test_health_in_the_file_is_not_taken_as_truth():
    import_bots_config(GOOD)
    # Only probes decide health: a file saying "healthy" must not route traffic.
    assert set(Master.objects.values_list("health_status", flat=True)) == {HealthStatus.UNKNOWN}


def test_a_v3_file_without_failover_settings_imports_with_defaults():
    before = RuntimeSettings.current()
    import_bots_config(V3)
    after = RuntimeSettings.current()
    assert after.health_check_interval_ms == before.health_check_interval_ms == 5000
    assert after.failover_timeout_ms == 30000
    master = Master.objects.get(external_id="linda-master")
    assert master.has_gateway is False


def test_reimport_updates_by_id_and_is_idempotent():
    import_bots_config(GOOD)
    first = database_snapshot()
    import_bots_config(GOOD)
    second = database_snapshot()
    for rows in (first["masters"], second["masters"]):
        for row in rows:
            row.pop("updated_at")
    assert second["masters"] == first["masters"]

    changed = copy.deepcopy(GOOD)
    changed["masters"][0]["priority"] = 7
    result = import_bots_config(changed)
    assert "linda-master" in result.updated
    assert Master.objects.count() == 3
    assert Master.objects.get(external_id="linda-master").priority == 7


def test_a_file_without_secrets_keeps_the_stored_ones():
    import_bots_config(GOOD)
    without = copy.deepcopy(GOOD)
    del without["masters"][0]["gateway"]["apiKey"]
    del without["alertRecipients"]["webhooks"][0]["secret"]
    import_bots_config(without)
    assert Master.objects.get(external_id="linda-master").gateway_secret == "waha-key"
    assert AlertRecipient.objects.get(kind="webhook").secret == "hmac-key"


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (
            lambda d: d["masters"][1].update(phoneNumber="12345"),
            "masters[1].phoneNumber: not a valid E.164 number",
        ),
        (
            lambda d: d["masters"][1].update(phoneNumber="+97150"),
            "masters[1].phoneNumber: not a valid E.164 number",
        ),
        (lambda d: d["masters"][0].update(role="boss"), "masters[0].role:"),
        (
            lambda d: d["masters"][2].update(priority="high"),
            "masters[2].priority: expected a whole number, got a string",
        ),
        (
            lambda d: d["masters"][0].update(isActive="yes"),
            "masters[0].isActive: expected true or false",
        ),
        (
            lambda d: d["masters"][1].update(id="linda-master"),
            "masters[1].id: 'linda-master' repeats masters[0]",
        ),
        (
            lambda d: d["masters"][1].update(phoneNumber="+971505760056"),
            "masters[1].phoneNumber: '+971505760056' repeats masters[0]",
        ),
        (
            lambda d: d["masters"][0]["gateway"].update(type="telegram"),
            "masters[0].gateway.type: expected one of waha, evolution, cloud_api",
        ),
        (
            lambda d: d["masters"][1]["gateway"].pop("instance"),
            "masters[1].gateway.instance: required for a evolution gateway",
        ),
        (
            lambda d: d["masters"][0]["gateway"].update(url="ftp://x"),
            "masters[0].gateway.url: must be an http:// or https:// URL",
        ),
        (
            lambda d: d["masters"][2]["gateway"].update(apiVersion="21"),
            "masters[2].gateway.apiVersion: must look like v21.0",
        ),
        (lambda d: d["masters"][0].pop("id"), "masters[0].id: required"),
        (lambda d: d["masters"][0].update(healthStatus="great"), "masters[0].healthStatus:"),
        (
            lambda d: d["failoverSettings"].update(healthCheckInterval=100),
            "failoverSettings.healthCheckInterval:",
        ),
        (
            lambda d: d["failoverSettings"].update(loadBalancingStrategy="random"),
            "failoverSettings.loadBalancingStrategy: expected one of",
        ),
        (lambda d: d.update(version="9.0"), "version: unsupported version '9.0'"),
        (lambda d: d.update(masters={"a": 1}), "masters: expected a list, got an object"),
        (
            lambda d: d["alertRecipients"]["email"].append("not-an-email"),
            "alertRecipients.email[1]:",
        ),
        (
            lambda d: d["alertRecipients"]["webhooks"][0].update(url="file:///etc/passwd"),
            "alertRecipients.webhooks[0].url: must be an http:// or https:// URL",
        ),
        (
            lambda d: d["alertRecipients"]["webhooks"][0].update(format="xml"),
            "alertRecipients.webhooks[0].format: expected one of json, slack, pagerduty",
        ),
    ],
)
def test_a_bad_file_changes_nothing_and_names_the_field(mutate, expected):
    import_bots_config(V3)
    before = database_snapshot()
    bad = copy.deepcopy(GOOD)
    mutate(bad)

    with pytest.raises(ConfigError) as caught:
        import_bots_config(bad)

    assert any(error.startswith(expected) for error in caught.value.errors), caught.value.errors
    assert database_snapshot() == before


def test_every_problem_is_reported_at_once():
    bad = copy.deepcopy(GOOD)
    bad["masters"][0]["phoneNumber"] = "nope"
    bad["masters"][2]["priority"] = -1
    with pytest.raises(ConfigError) as caught:
        import_bots_config(bad)
    paths = [error.split(":")[0] for error in caught.value.errors]
    assert "masters[0].phoneNumber" in paths
    assert "masters[2].priority" in paths


def test_export_then_import_round_trips(tmp_path):
    import_bots_config(GOOD)
    exported = export_bots_config(include_secrets=True)
    assert exported["version"] == "4.0"
    before = database_snapshot()

    Master.objects.all().delete()
    AlertRecipient.objects.all().delete()
    import_bots_config(exported)

    assert export_bots_config(include_secrets=True) == exported
    after = database_snapshot()
    strip = ("id", "created_at", "updated_at")
    assert [{k: v for k, v in row.items() if k not in strip} for row in after["masters"]] == [
        {k: v for k, v in row.items() if k not in strip} for row in before["masters"]
    ]


def test_export_leaves_secrets_out_unless_asked():
    import_bots_config(GOOD)
    text = json.dumps(export_bots_config())
    assert "waha-key" not in text and "hmac-key" not in text and '"tok"' not in text
    assert "waha-key" in json.dumps(export_bots_config(include_secrets=True))


def test_the_commands_import_and_export_files(tmp_path, capsys):
    source = tmp_path / "bots-config.json"
    source.write_text(json.dumps(GOOD))
    call_command("import_bots_config", str(source))
    assert Master.objects.count() == 3

    target = tmp_path / "out.json"
    call_command("export_bots_config", str(target))
    assert json.loads(target.read_text())["masters"][0]["id"] == "linda-master"
    assert target.stat().st_mode & 0o777 == 0o600


def test_the_import_command_reports_errors_and_bad_json(tmp_path):
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    with pytest.raises(CommandError, match="not valid JSON"):
        call_command("import_bots_config", str(broken))
    bad = copy.deepcopy(GOOD)
    bad["masters"][1]["phoneNumber"] = "12"
    broken.write_text(json.dumps(bad))
    with pytest.raises(CommandError, match=r"masters\[1\]\.phoneNumber: not a valid E\.164 number"):
        call_command("import_bots_config", str(broken))
    assert Master.objects.count() == 0
