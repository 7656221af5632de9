"""Idempotency keys move to their own table; the unique index on Message goes.

Every change of a message's master or status (a failover moves thousands)
added an entry to that index; the key table is written once per message.
The existing keys are copied before the old constraint is dropped, so a key
is never left unguarded.
"""

import django.db.models.deletion
from django.db import migrations, models


def copy_keys(apps, schema_editor):
    message = apps.get_model("masters", "Message")._meta.db_table
    key = apps.get_model("masters", "IdempotencyKey")._meta.db_table
    quote = schema_editor.quote_name
    schema_editor.execute(
        f"INSERT INTO {quote(key)} ({quote('key')}, message_id) "
        f"SELECT idempotency_key, id FROM {quote(message)} WHERE idempotency_key IS NOT NULL"
    )


def copy_back(apps, schema_editor):
    """Nothing to do: the keys are still on the messages."""


class Migration(migrations.Migration):
    dependencies = [
        ("masters", "0011_dead_messages_index"),
    ]

    operations = [
        migrations.CreateModel(
            name="IdempotencyKey",
            fields=[
                ("key", models.CharField(max_length=200, primary_key=True, serialize=False)),
                (
                    "message",
                    models.OneToOneField(
                        on_delete=django.db.models.deletion.CASCADE,
                        related_name="+",
                        to="masters.message",
                    ),
                ),
            ],
        ),
        migrations.RunPython(copy_keys, copy_back),
        migrations.RemoveConstraint(
            model_name="message",
            name="message_idempotency_key_uniq",
        ),
    ]
