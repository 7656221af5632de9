"""Malformed and hostile bots-config.json files through ``manage.py import_bots_config``.

Each is refused with an error that names the file and what is wrong with it
(the JSON path where there is one), and the database is left exactly as it was.
tests/test_config_import.py covers the ordinary mistakes (a bad number, a
wrong role, an id twice); these are the files someone makes on purpose, or
that a broken editor or a bad paste leaves behind.
"""

from __future__ import annotations

import copy
import json
import time
import tracemalloc
from pathlib import Path
from typing import Any

import pytest
from django.core.management import CommandError, call_command
from django.db import connection

from masters.config import import_bots_config
from masters.management.commands.import_bots_config import MAX_FILE_BYTES
from masters.models import AlertRecipient, Event, Master, RuntimeSettings

pytestmark = pytest.mark.django_db

BASELINE = {
    "version": "4.0",
    "failoverSettings": {"enabled": True, "healthCheckInterval": 5000},
    "masters": [
        {
            "id": "a",
            "phoneNumber": "+971505760056",
            "displayName": "A",
            "role": "primary",
            "gateway": {"type": "waha", "url": "http://127.0.0.1:3000", "session": "a"},
        },
        {
            "id": "b",
            "phoneNumber": "+971505760057",
            "displayName": "B",
            "role": "secondary",
            "gateway": {"type": "waha", "url": "http://127.0.0.1:3000", "session": "b"},
        },
    ],
    "alertRecipients": {"email": ["ops@example.com"], "webhooks": []},
}


def database() -> dict[str, Any]:
    """Everything an import may write."""
    return {
        "masters": list(Master.objects.order_by("pk").values()),
        "settings": list(RuntimeSettings.objects.values()),
        "recipients": list(AlertRecipient.objects.order_by("pk").values()),
        "events": Event.objects.count(),
    }


@pytest.fixture
def before() -> dict[str, Any]:
    """A configured portal, as it stands before the hostile file arrives."""
    import_bots_config(BASELINE)
    return database()


def refused(path: Path) -> str:
    """Run the import on ``path``; return its error, which must name the file."""
    with pytest.raises(CommandError) as caught:
        call_command("import_bots_config", str(path))
    message = str(caught.value)
    assert message.startswith(f"{path}: "), message
    return message


def write(tmp_path: Path, content: bytes | dict) -> Path:
    path = tmp_path / "bots-config.json"
    path.write_bytes(content if isinstance(content, bytes) else json.dumps(content).encode())
    return path


def with_master(**fields: Any) -> dict:
    """The baseline with master "a" changed (a None value removes the key)."""
    changed = copy.deepcopy(BASELINE)
    changed["masters"][0].update(fields)
    changed["masters"][0] = {k: v for k, v in changed["masters"][0].items() if v is not None}
    return changed


# --- not JSON, or not the JSON we read ---------------------------------------------------

LATIN_1 = '{"masters": [{"id": "a", "displayName": "Café"}]}'.encode("latin-1")
DIGITS = b'{"masters": [{"id": "a", "priority": ' + b"9" * 5000 + b"}]}"


@pytest.mark.parametrize(
    ("content", "error"),
    [
        pytest.param(b"", "not valid JSON: Expecting value: line 1 column 1 (char 0)", id="empty"),
        pytest.param(
            b'{"version": "4.0",\n "masters": [',
            "not valid JSON: Expecting value: line 2 column 14 (char 32)",
            id="cut off",
        ),
        pytest.param(
            b'{"masters": [],}',
            "not valid JSON: Expecting property name enclosed in double quotes: line 1 column 16",
            id="trailing comma",
        ),
        pytest.param(
            LATIN_1, f"not UTF-8: byte 0xe9 at offset {LATIN_1.index(0xE9)}", id="latin-1"
        ),
        pytest.param(
            json.dumps(BASELINE).encode("utf-16"), "not UTF-8: byte 0xff at offset 0", id="utf-16"
        ),
        pytest.param(b"[" * 100_000 + b"]" * 100_000, "nested too deeply", id="deeply nested"),
        pytest.param(
            b'{"masters": [{"id": "a", "weight": NaN}]}', "NaN is not JSON", id="NaN weight"
        ),
        pytest.param(
            b'{"failoverSettings": {"failoverTimeout": Infinity}}',
            "Infinity is not JSON",
            id="Infinity",
        ),
        pytest.param(DIGITS, "Exceeds the limit (4300 digits)", id="a 5000-digit number"),
        pytest.param(
            b'{"masters": [{"id": "a", "phoneNumber": "+971505760056"}], "masters": []}',
            "key 'masters' appears twice",
            id="a key twice at the top",
        ),
        pytest.param(
            b'{"masters": [{"id": "a", "isActive": true, "isActive": false}]}',
            "key 'isActive' appears twice",
            id="a key twice in a master",
        ),
    ],
)
def test_a_file_that_is_not_strict_utf8_json_is_refused_and_changes_nothing(
    tmp_path, before, content, error
):
    message = refused(write(tmp_path, content))

    assert error in message
    assert database() == before


def test_an_oversized_file_is_refused_without_being_read_whole(tmp_path, before):
    path = tmp_path / "bots-config.json"
    with path.open("wb") as file:
        file.truncate(5 * MAX_FILE_BYTES)  # sparse: 50 MiB on paper, nothing on disk

    tracemalloc.start()
    try:
        message = refused(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    assert message == f"{path}: over {MAX_FILE_BYTES} bytes: not a bots-config.json"
    assert peak < 2 * MAX_FILE_BYTES
    assert database() == before


def test_a_file_that_never_ends_is_cut_off_at_the_cap(before):
    # /dev/zero answers every read: without the cap the import would read until memory ran out.
    started = time.monotonic()

    message = refused(Path("/dev/zero"))

    assert message == f"/dev/zero: over {MAX_FILE_BYTES} bytes: not a bots-config.json"
    assert time.monotonic() - started < 10
    assert database() == before


def test_a_directory_is_refused_as_unreadable(tmp_path, before):
    assert refused(tmp_path) == f"{tmp_path}: cannot read: Is a directory"
    assert database() == before


# --- JSON of the wrong shape -------------------------------------------------------------


def nested_recipients(**fields: Any) -> dict:
    changed = copy.deepcopy(BASELINE)
    changed["alertRecipients"].update(fields)
    return changed


@pytest.mark.parametrize(
    ("content", "error"),
    [
        pytest.param([BASELINE], "(file): expected a JSON object, got a list", id="a list"),
        pytest.param("4.0", "(file): expected a JSON object, got a string", id="a string"),
        pytest.param(
            {**BASELINE, "version": 4.0},
            'version: expected a string such as "4.0", got a number',
            id="version as a number",
        ),
        pytest.param(
            {**BASELINE, "failoverSettings": [5000]},
            "failoverSettings: expected an object, got a list",
            id="settings as a list",
        ),
        pytest.param(
            {**BASELINE, "failoverSettings": {"healthCheckInterval": "5000"}},
            "failoverSettings.healthCheckInterval: expected a whole number, got a string",
            id="a number in quotes",
        ),
        pytest.param(
            {**BASELINE, "failoverSettings": {"enabled": "false"}},
            "failoverSettings.enabled: expected true or false, got a string",
            id='"false" in quotes',
        ),
        pytest.param(
            {**BASELINE, "masters": [42, None]},
            "masters[0]: expected an object, got a number",
            id="a master that is a number",
        ),
        pytest.param(
            with_master(id=7), "masters[0].id: required: a non-empty string", id="id as a number"
        ),
        pytest.param(
            with_master(gateway="http://127.0.0.1:3000"),
            "masters[0].gateway: expected an object, got a string",
            id="gateway as a url",
        ),
        pytest.param(
            {**BASELINE, "masters": [{**BASELINE["masters"][0], "displayName": None}]},
            "masters[0].displayName: expected a string, got null",
            id="null name",
        ),
        pytest.param(
            with_master(weight="heavy"),
            "masters[0].weight: expected a whole number or a number, got a string",
            id="weight as a word",
        ),
        pytest.param(
            with_master(priority=10**20),
            # The bound is the database's: 2**31 - 1 on PostgreSQL, 2**63 - 1 on SQLite.
            "masters[0].priority: Ensure this value is less than or equal to ",
            id="a priority past 32 bits",
        ),
        pytest.param(
            nested_recipients(email="ops@example.com"),
            "alertRecipients.email: expected a list, got a string",
            id="one e-mail, not a list",
        ),
        pytest.param(
            nested_recipients(webhooks=[{"url": "https://h.example.com", "severities": [{}]}]),
            "alertRecipients.webhooks[0].severities: expected a list of critical, warning, info",
            id="severities holding an object",
        ),
        pytest.param(
            {**BASELINE, "alertRecipients": []},
            "alertRecipients: expected an object, got a list",
            id="recipients as a list",
        ),
    ],
)
def test_json_of_the_wrong_shape_is_refused_naming_the_path(tmp_path, before, content, error):
    message = refused(write(tmp_path, json.dumps(content).encode()))

    assert f"\n  {error}" in message, message
    assert database() == before


# --- masters that collide ----------------------------------------------------------------


def test_a_number_held_by_a_master_the_file_does_not_list_is_refused(tmp_path, before):
    newcomer = {"id": "c", "phoneNumber": "+971505760057", "displayName": "C"}
    content = {"masters": [BASELINE["masters"][0], newcomer]}

    message = refused(write(tmp_path, content))

    assert (
        "masters[1].phoneNumber: '+971505760057' belongs to master 'b', "
        "which this file does not list"
    ) in message
    assert database() == before


def test_two_listed_masters_may_swap_their_numbers(tmp_path, before):
    swapped = copy.deepcopy(BASELINE)
    swapped["masters"][0]["phoneNumber"] = "+971505760057"
    swapped["masters"][1]["phoneNumber"] = "+971505760056"

    call_command("import_bots_config", str(write(tmp_path, swapped)))

    assert dict(Master.objects.values_list("external_id", "phone_number")) == {
        "a": "+971505760057",
        "b": "+971505760056",
    }


def test_a_master_listed_twice_under_one_id_is_refused_even_when_both_copies_agree(
    tmp_path, before
):
    content = {"masters": [BASELINE["masters"][0], BASELINE["masters"][0]]}

    message = refused(write(tmp_path, content))

    assert "masters[1].id: 'a' repeats masters[0]" in message
    assert database() == before


# --- injection-like strings --------------------------------------------------------------


@pytest.mark.parametrize(
    ("content", "error"),
    [
        pytest.param(
            with_master(id="a'; DROP TABLE masters_master; --"),
            "masters[0].id: Enter a valid “slug”",
            id="sql in the id",
        ),
        pytest.param(
            with_master(id="../../etc/passwd"),
            "masters[0].id: Enter a valid “slug”",
            id="a path in the id",
        ),
        pytest.param(
            with_master(displayName="A\x00B"),
            "masters[0].displayName: must not contain control characters",
            id="NUL in a name",
        ),
        pytest.param(
            with_master(displayName="\x1b[2J\x1b[31mALL MASTERS DOWN"),
            "masters[0].displayName: must not contain control characters",
            id="terminal escapes in a name",
        ),
        pytest.param(
            with_master(gateway={"type": "waha", "url": "http://127.0.0.1:3000/\r\nX-Injected: 1"}),
            "masters[0].gateway.url: must not contain control characters",
            id="a header in the url",
        ),
        pytest.param(
            with_master(gateway={"type": "waha", "url": "http://127.0.0.1:3000", "apiKey": "k\n"}),
            "masters[0].gateway.apiKey: must not contain control characters",
            id="a pasted key ending in a newline",
        ),
        pytest.param(
            with_master(gateway={"type": "waha", "url": "javascript:alert(1)"}),
            "masters[0].gateway.url: must be an http:// or https:// URL",
            id="a javascript url",
        ),
        pytest.param(
            nested_recipients(email=["ops@example.com\r\nBcc: all@example.com"]),
            "alertRecipients.email[0]: must not contain control characters",
            id="a header in an e-mail address",
        ),
    ],
)
def test_injection_like_strings_are_refused_naming_the_field(tmp_path, before, content, error):
    message = refused(write(tmp_path, content))

    assert error in message
    assert database() == before


def test_a_lone_surrogate_is_refused_not_stored(tmp_path, before):
    # JSON may escape half of a surrogate pair; neither database can store it.
    raw = json.dumps(with_master()).replace('"A"', r'"\ud800"').encode()

    message = refused(write(tmp_path, raw))

    assert "masters[0].displayName: must be valid Unicode (no lone surrogates)" in message
    assert database() == before


def test_markup_and_sql_in_a_name_are_stored_as_text_and_run_nowhere(tmp_path, before):
    name = "<script>alert(1)</script>'); DROP TABLE masters_master;--"

    call_command("import_bots_config", str(write(tmp_path, with_master(displayName=name))))

    assert Master.objects.get(external_id="a").display_name == name
    assert "masters_master" in connection.introspection.table_names()


def test_an_error_quotes_a_huge_value_cut_short(tmp_path, before):
    content = with_master(gateway={"type": "w" * 1_000_000, "url": "http://127.0.0.1:3000"})

    message = refused(write(tmp_path, content))

    [line] = [line for line in message.splitlines() if "gateway.type" in line]
    assert line.startswith("  masters[0].gateway.type: expected one of waha, evolution, cloud_api")
    assert len(line) < 200
    assert database() == before


def test_more_problems_than_a_screen_holds_are_counted_not_all_printed(tmp_path, before):
    content = {"masters": [{"id": f"m{i}", "phoneNumber": f"12{i}"} for i in range(500)]}

    message = refused(write(tmp_path, content))

    assert message.count("phoneNumber: not a valid E.164 number") == 50
    assert message.endswith("... and 450 more")
    assert database() == before


# --- unknown fields ----------------------------------------------------------------------


def test_unknown_fields_named_like_columns_are_named_in_warnings_and_never_written(
    tmp_path, before, capsys
):
    # The format only ever gains keys, so an unknown one is a warning, not an error
    # (a newer export still imports). What must never happen is that it lands anyway.
    sneaky = {
        "health_status": "healthy",
        "webhook_secret": "attacker-chosen",
        "gateway_secret": "attacker-chosen",
        "consecutive_failures": 0,
        "pk": 999,
        "\x1b[2Jmasters[0].id": "forged warning",
    }
    content = with_master(**sneaky)
    Master.objects.filter(external_id="a").update(health_status="failed")

    call_command("import_bots_config", str(write(tmp_path, content)))

    warnings = capsys.readouterr().err.splitlines()
    for key in ("health_status", "webhook_secret", "gateway_secret", "consecutive_failures", "pk"):
        assert f"warning: masters[0].{key}: unknown key, ignored" in warnings
    assert "warning: masters[0].'\\x1b[2Jmasters[0].id': unknown key, ignored" in warnings
    a = Master.objects.get(external_id="a")
    assert (a.health_status, a.webhook_secret, a.gateway_secret) == ("failed", "", "")
    assert Master.objects.filter(pk=999).exists() is False
