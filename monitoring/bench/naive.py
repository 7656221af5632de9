"""The throughput benchmark's baseline: one django-q2 task per message, as a naive design would.

``send_one`` is the task: load the message, pick a healthy master in turn,
send through its gateway on a fresh HTTP client, mark the message sent.
Nothing is batched or pooled, which is the point: it is what the dispatcher
(masters.dispatcher) is measured against.

``python -m monitoring.bench.naive`` runs ``manage.py qcluster`` with
django-q2's own defaults for the two options the project tunes
(``save_limit`` and ``bulk``, see ha_portal/settings.py), so the baseline is
the design the issue describes rather than a tuned cluster. Run that way,
this module is executed before Django is set up: Django imports stay inside
the functions.
"""

from __future__ import annotations

import os
import sys
from typing import Any

# The options ha_portal/settings.py sets for speed; dropping them gives django-q2's
# defaults (save_limit 250: prune stored results on every save; bulk 1).
TUNED_OPTIONS = ("save_limit", "bulk")
SEND_TIMEOUT_S = 10.0


def send_one(message_id: int) -> str:
    """Send one queued message through a healthy master; return the gateway's message id."""
    from django.utils import timezone

    from ha_portal.lib.http import run
    from masters.choices import HealthStatus, MessageStatus
    from masters.models import Master, Message

    message = Message.objects.get(pk=message_id)
    if message.status == MessageStatus.SENT:
        return message.gateway_message_id  # a re-run task (django-q2 is at-least-once)
    masters = list(
        Master.objects.filter(is_active=True, health_status=HealthStatus.HEALTHY).order_by("pk")
    )
    if not masters:
        raise RuntimeError("no healthy master")
    master = masters[message_id % len(masters)]  # round robin by id: no shared state
    gateway_id = run(send_through(master.gateway_config(), message))
    now = timezone.now()
    Message.objects.filter(pk=message_id).update(
        status=MessageStatus.SENT,
        master=master,
        gateway_message_id=gateway_id,
        sent_at=now,
        updated_at=now,
    )
    return gateway_id


async def send_through(config: Any, message: Any) -> str:
    from ha_portal.lib.http import HttpClient
    from masters.gateways import gateway_for

    async with HttpClient() as http:
        gateway = gateway_for(config, http, timeout=SEND_TIMEOUT_S)
        return await gateway.send(message.to, message.text, message.gateway_idempotency_key)


def default_cluster(tuned: dict[str, Any]) -> dict[str, Any]:
    """Return the project's Q_CLUSTER without the options that make it fast."""
    return {key: value for key, value in tuned.items() if key not in TUNED_OPTIONS}


def main() -> None:
    """Run a qcluster with django-q2's defaults for save_limit and bulk."""
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "ha_portal.settings")
    from django.conf import settings

    # django_q.conf reads Q_CLUSTER once, when Django sets the app up: change it before.
    settings.Q_CLUSTER = default_cluster(settings.Q_CLUSTER)
    import django
    from django.core.management import call_command

    django.setup()
    call_command("qcluster")


if __name__ == "__main__":
    sys.exit(main())
