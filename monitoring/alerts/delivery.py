"""Tell recipients about alerts: one AlertDelivery per notice and recipient, each its own task.

``queue_notices`` (called by the engine inside its transaction) writes one
``AlertDelivery`` per notice and active recipient that wants the alert's
severity, unless delivery of that severity is switched off, and enqueues
one django-q2 task per row after commit. ``deliver`` (the task) claims the
row with a compare-and-set, sends once with a timeout, and records the
attempt: sent, retrying at ``next_attempt_at`` (exponential backoff), or
failed after ``ALERTS["delivery_attempts"]`` attempts or an error no retry
can fix. The evaluator re-enqueues due retries (``enqueue_due``), so a
killed worker's delivery is retried once its claim lapses. Notices about
one alert reach one recipient in order: a notice waits while an earlier
one to the same recipient is unfinished (PagerDuty must see trigger before
resolve).

Email
    Subject, text and HTML from templates/alerts/email_subject.txt,
    email.txt and email.html, over Django's SMTP settings.

Webhook, ``format = json`` (payload version 1)
    POST, ``Content-Type: application/json``, body::

        {
          "version": 1,
          "notice": "trigger" | "repeat" | "acknowledge" | "resolve",
          "delivery": {"id": 17, "attempt": 1},
          "alert": {
            "id": 5, "dedup_key": "master.down:3", "rule": "master_down",
            "severity": "critical" | "warning" | "info",
            "state": "firing" | "acknowledged" | "resolved",
            "title": "...", "detail": "...", "data": {...},
            "master": {"id": 3, "external_id": "linda-master",
                       "display_name": "Linda-Master", "phone_number": "+971..."} | null,
            "fired_at": "ISO 8601", "last_seen_at": "...", "acknowledged_at": "..." | null,
            "acknowledged_by": "username" | null, "resolved_at": "..." | null,
            "notify_count": 1
          },
          "links": {"dashboard": "https://portal/", "alert": "https://portal/admin/..."},
          "sent_at": "ISO 8601"
        }

    Headers: ``X-HA-Portal-Delivery`` (the delivery id: the same on every
    retry, for receivers to drop duplicates), ``X-HA-Portal-Notice``,
    ``X-HA-Portal-Timestamp`` (Unix seconds) and, when the recipient has a
    secret, ``X-HA-Portal-Signature: sha256=<hex>`` where hex is
    HMAC-SHA256(secret, timestamp + "." + raw body). Receivers recompute it
    over the raw bytes, compare in constant time and reject timestamps more
    than 5 minutes old (replays).

Webhook, ``format = slack``
    A Slack incoming-webhook message: ``{"text": ..., "blocks": [...]}``.

Webhook, ``format = pagerduty``
    PagerDuty Events API v2 (POST to the recipient's URL, normally
    https://events.pagerduty.com/v2/enqueue): ``routing_key`` = the
    recipient's secret, ``dedup_key`` = the alert's dedup key,
    ``event_action`` trigger (also for repeats) / acknowledge / resolve, and
    for triggers a ``payload`` with summary, severity, source, component,
    group, class, timestamp and custom_details.

Secrets (HMAC keys, routing keys, webhook URL paths) never reach a log line,
``AlertDelivery.target`` or ``last_result``.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import smtplib
import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import partial

from django.conf import settings
from django.core.mail import EmailMultiAlternatives, get_connection
from django.db import transaction
from django.db.models import Exists, F, OuterRef, Q
from django.template.loader import render_to_string
from django.urls import reverse
from django.utils import timezone
from django_q.tasks import async_task

from masters.choices import RecipientKind, Severity, WebhookFormat
from masters.models import AlertRecipient, RuntimeSettings
from monitoring.alerts import transport
from monitoring.models import Alert, AlertDelivery, DeliveryStatus, Notice

logger = logging.getLogger(__name__)

TASK = "monitoring.alerts.tasks.deliver"
OPEN = (DeliveryStatus.PENDING, DeliveryStatus.RETRYING)
MAX_BACKOFF = timedelta(hours=1)
UNCLAIMED_GRACE = timedelta(seconds=60)
# HTTP statuses worth a retry; any other non-2xx reply is final (a bad
# payload, a revoked key or a wrong URL does not heal by itself).
RETRYABLE_STATUSES = frozenset({408, 425, 429})
PAGERDUTY_ACTIONS = {
    Notice.TRIGGER: "trigger",
    Notice.REPEAT: "trigger",
    Notice.ACKNOWLEDGE: "acknowledge",
    Notice.RESOLVE: "resolve",
}
SLACK_ICONS = {Severity.CRITICAL: ":red_circle:", Severity.WARNING: ":warning:"}


@dataclass(frozen=True)
class Outcome:
    sent: bool
    result: str
    retry: bool = False


# --- queueing ---------------------------------------------------------------------------


def delivery_enabled(severity: str, runtime: RuntimeSettings) -> bool:
    """Say whether notices of SEVERITY go out (ALERT_CRITICAL_ENABLED / ALERT_WARNING_ENABLED)."""
    if severity == Severity.CRITICAL:
        return runtime.alert_critical_enabled
    if severity == Severity.WARNING:
        return runtime.alert_warning_enabled
    return True  # info goes only to recipients who ask for it


def target_of(recipient: AlertRecipient) -> str:
    """Describe a recipient without its secret: "email to a@b.c", "webhook (slack) to https://host"."""
    if recipient.kind == RecipientKind.EMAIL:
        return f"email to {recipient.email}"
    return f"webhook ({recipient.format}) to {transport.origin(recipient.url)}"


def queue_notices(notices: Iterable[tuple[Alert, str]], now: datetime) -> list[int]:
    """Write the deliveries for NOTICES and enqueue them after commit; return their ids.

    Call inside the transaction that changed the alerts: the rows commit with
    the change, and no task runs for a change that rolled back.
    """
    notices = list(notices)
    if not notices:
        return []
    runtime = RuntimeSettings.current()
    recipients = list(AlertRecipient.objects.filter(is_active=True).order_by("pk"))
    rows = [
        AlertDelivery(
            alert=alert,
            recipient=recipient,
            notice=notice,
            target=target_of(recipient),
            # Its task is enqueued at commit; only if no worker took it by then
            # does the sweep (enqueue_due) enqueue it again.
            next_attempt_at=now + UNCLAIMED_GRACE,
        )
        for alert, notice in notices
        if delivery_enabled(alert.severity, runtime)
        for recipient in recipients
        if recipient.wants(alert.severity) and not _pagerduty_info(recipient, alert)
    ]
    created = AlertDelivery.objects.bulk_create(rows)
    ids = [row.pk for row in created]
    for pk in ids:
        transaction.on_commit(partial(async_task, TASK, pk, now))
    return ids


def _pagerduty_info(recipient: AlertRecipient, alert: Alert) -> bool:
    """Info alerts never go to PagerDuty: born resolved, they would open an
    incident that no resolve ever closes (info is the plan's "log only")."""
    return alert.severity == Severity.INFO and recipient.format == WebhookFormat.PAGERDUTY


def enqueue_due(now: datetime) -> list[int]:
    """Enqueue deliveries whose retry is due (or whose claim lapsed with a dead worker).

    A delivery waiting behind an unfinished earlier notice to the same
    recipient is left until that one finishes.
    """
    earlier_open = AlertDelivery.objects.filter(
        alert=OuterRef("alert"),
        recipient=OuterRef("recipient"),
        pk__lt=OuterRef("pk"),
        status__in=OPEN,
    )
    due = list(
        AlertDelivery.objects.filter(status__in=OPEN, next_attempt_at__lte=now)
        .exclude(Exists(earlier_open))
        .order_by("pk")
        .values_list("pk", flat=True)[:500]
    )
    for pk in due:
        async_task(TASK, pk, now)
    return due


# --- one delivery -------------------------------------------------------------------------


def deliver(delivery_id: int, at: datetime | None = None) -> str:
    """Make one attempt at one delivery (the django-q2 task); return its status.

    ``at`` is the enqueuer's clock: a retry enqueued as due is due, even if
    this worker's clock is a little behind (tests pass a clock of their own).
    """
    now = max(timezone.now(), at) if at else timezone.now()
    if not claim(delivery_id, now):
        return "not claimed"
    delivery = AlertDelivery.objects.select_related(
        "alert__master", "alert__acknowledged_by", "recipient"
    ).get(pk=delivery_id)
    outcome = attempt(delivery)
    record(delivery, outcome, max(timezone.now(), at) if at else timezone.now())
    return delivery.status


def claim(delivery_id: int, now: datetime) -> bool:
    """Take the delivery for one attempt (compare-and-set); False if not due or taken."""
    row = AlertDelivery.objects.filter(pk=delivery_id).values("alert_id", "recipient_id").first()
    if row is None:
        return False
    waiting = AlertDelivery.objects.filter(
        alert_id=row["alert_id"],
        recipient_id=row["recipient_id"],
        pk__lt=delivery_id,
        status__in=OPEN,
    ).exists()
    if waiting:
        return False
    lease = timedelta(seconds=2 * settings.ALERTS["delivery_timeout_s"] + 30)
    # Due: never tried yet (its first task), or its retry time (or lapsed claim) has come.
    due = Q(attempts=0) | Q(next_attempt_at__lte=now)
    claimed = AlertDelivery.objects.filter(due, pk=delivery_id, status__in=OPEN).update(
        attempts=F("attempts") + 1, next_attempt_at=now + lease
    )
    return bool(claimed)


def attempt(delivery: AlertDelivery) -> Outcome:
    """Send the notice once; never raise for a failure the delivery log should show."""
    recipient = delivery.recipient
    if recipient is None or not recipient.is_active:
        return Outcome(False, "not sent: the recipient was deleted or deactivated")
    severity = delivery.alert.severity
    if not delivery_enabled(severity, RuntimeSettings.current()):
        return Outcome(False, f"not sent: delivery of {severity} alerts is switched off")
    try:
        if recipient.kind == RecipientKind.EMAIL:
            return send_email(delivery)
        return send_webhook(delivery)
    except transport.UnsafeURL as refused:
        return Outcome(False, str(refused))


def record(delivery: AlertDelivery, outcome: Outcome, now: datetime) -> None:
    """Store the attempt's result: sent, retrying with backoff, or failed for good."""
    delivery.last_result = outcome.result[:2000]
    # Every attempt's result, oldest first (the admin and the dashboard show them).
    delivery.history = [
        *delivery.history,
        {"at": now.isoformat(), "sent": outcome.sent, "result": outcome.result[:500]},
    ]
    if outcome.sent:
        delivery.status, delivery.finished_at, delivery.next_attempt_at = (
            DeliveryStatus.SENT,
            now,
            None,
        )
    elif outcome.retry and delivery.attempts < settings.ALERTS["delivery_attempts"]:
        delivery.status = DeliveryStatus.RETRYING
        delivery.next_attempt_at = now + backoff(delivery.attempts)
    else:
        delivery.status, delivery.finished_at, delivery.next_attempt_at = (
            DeliveryStatus.FAILED,
            now,
            None,
        )
    delivery.save(
        update_fields=["status", "last_result", "history", "next_attempt_at", "finished_at"]
    )
    if delivery.finished_at is not None:
        release_next(delivery, now)
    log = logger.info if outcome.sent else logger.warning
    log(
        "alert %s %s notice %s (attempt %d): %s",
        delivery.alert_id,
        delivery.notice,
        delivery.target,
        delivery.attempts,
        delivery.last_result,
    )


def release_next(delivery: AlertDelivery, now: datetime) -> None:
    """Enqueue the next notice of this alert to this recipient, which waited for this one."""
    waiting = (
        AlertDelivery.objects.filter(
            alert_id=delivery.alert_id,
            recipient_id=delivery.recipient_id,
            pk__gt=delivery.pk,
            status__in=OPEN,
        )
        .order_by("pk")
        .values_list("pk", flat=True)
        .first()
    )
    if waiting is not None:
        async_task(TASK, waiting, now)


def backoff(attempts: int) -> timedelta:
    """Wait base, 2 * base, 4 * base... after the 1st, 2nd, 3rd failed attempt (an hour at most)."""
    seconds = settings.ALERTS["retry_base_s"] * 2 ** max(attempts - 1, 0)
    return min(timedelta(seconds=seconds), MAX_BACKOFF)


# --- email --------------------------------------------------------------------------------


def send_email(delivery: AlertDelivery) -> Outcome:
    context = message_context(delivery)
    subject = " ".join(render_to_string("alerts/email_subject.txt", context).split())
    message = EmailMultiAlternatives(
        subject=subject,
        body=render_to_string("alerts/email.txt", context),
        from_email=settings.DEFAULT_FROM_EMAIL,
        to=[delivery.recipient.email],
        connection=get_connection(timeout=settings.ALERTS["delivery_timeout_s"]),
        headers={"X-HA-Portal-Delivery": str(delivery.pk)},
    )
    message.attach_alternative(render_to_string("alerts/email.html", context), "text/html")
    try:
        message.send()
    except smtplib.SMTPRecipientsRefused as refused:
        codes = [code for code, _ in refused.recipients.values()]
        return Outcome(False, f"SMTP refused the recipient: {codes}", retry=min(codes) < 500)
    except (smtplib.SMTPException, OSError) as error:
        return Outcome(False, f"SMTP error: {type(error).__name__}: {error}", retry=True)
    return Outcome(True, f"accepted by the SMTP server {settings.EMAIL_HOST}:{settings.EMAIL_PORT}")


def message_context(delivery: AlertDelivery) -> dict:
    alert = delivery.alert
    return {
        "alert": alert,
        "notice": delivery.notice,
        "notice_label": Notice(delivery.notice).label,
        "severity_label": Severity(alert.severity).label,
        "links": links(alert),
    }


def links(alert: Alert) -> dict[str, str]:
    base = settings.ALERTS["portal_url"].rstrip("/")
    return {
        "dashboard": base + reverse("home"),
        "alert": base + reverse("admin:monitoring_alert_change", args=[alert.pk]),
    }


# --- webhooks -----------------------------------------------------------------------------


def send_webhook(delivery: AlertDelivery) -> Outcome:
    recipient = delivery.recipient
    body, headers = webhook_request(delivery, int(time.time()))
    try:
        reply = transport.post(
            recipient.url, body, headers, timeout=settings.ALERTS["delivery_timeout_s"]
        )
    except transport.DeliveryError as error:
        return Outcome(False, redact(str(error), recipient), retry=True)
    said = f"HTTP {reply.status} in {reply.elapsed_ms:.0f} ms: {reply.preview()}"
    result = redact(said, recipient)
    if reply.ok:
        return Outcome(True, result.rstrip(": "))
    if 300 <= reply.status < 400:
        return Outcome(False, f"{result} (redirects are not followed)")
    return Outcome(False, result, retry=reply.status >= 500 or reply.status in RETRYABLE_STATUSES)


def webhook_request(delivery: AlertDelivery, timestamp: int) -> tuple[bytes, dict[str, str]]:
    """Return the raw body and headers of a webhook delivery in its recipient's format."""
    recipient = delivery.recipient
    builders = {
        WebhookFormat.JSON: json_payload,
        WebhookFormat.SLACK: slack_payload,
        WebhookFormat.PAGERDUTY: pagerduty_payload,
    }
    body = json.dumps(builders[WebhookFormat(recipient.format)](delivery)).encode()
    headers = {
        "Content-Type": "application/json",
        "User-Agent": "HA-Portal-Alerts/1",
        "X-HA-Portal-Delivery": str(delivery.pk),
        "X-HA-Portal-Notice": delivery.notice,
        "X-HA-Portal-Timestamp": str(timestamp),
    }
    if recipient.format == WebhookFormat.JSON and recipient.secret:
        headers["X-HA-Portal-Signature"] = "sha256=" + sign(recipient.secret, timestamp, body)
    return body, headers


def sign(secret: str, timestamp: int, body: bytes) -> str:
    """HMAC-SHA256 over "<timestamp>.<raw body>", hex: what X-HA-Portal-Signature carries."""
    return hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()


def json_payload(delivery: AlertDelivery) -> dict:
    alert = delivery.alert
    master = alert.master
    return {
        "version": 1,
        "notice": delivery.notice,
        "delivery": {"id": delivery.pk, "attempt": delivery.attempts},
        "alert": {
            "id": alert.pk,
            "dedup_key": alert.dedup_key,
            "rule": alert.rule,
            "severity": alert.severity,
            "state": alert.state,
            "title": alert.title,
            "detail": alert.detail,
            "data": alert.data,
            "master": _master(master),
            "fired_at": _iso(alert.fired_at),
            "last_seen_at": _iso(alert.last_seen_at),
            "acknowledged_at": _iso(alert.acknowledged_at),
            "acknowledged_by": _username(alert.acknowledged_by),
            "resolved_at": _iso(alert.resolved_at),
            "notify_count": alert.notify_count,
        },
        "links": links(alert),
        "sent_at": _iso(timezone.now()),
    }


def slack_payload(delivery: AlertDelivery) -> dict:
    alert = delivery.alert
    label = _headline(delivery)
    icon = (
        ":white_check_mark:"
        if delivery.notice == Notice.RESOLVE
        else SLACK_ICONS.get(alert.severity, ":information_source:")
    )
    text = f"{icon} *{_slack(label)}*: {_slack(alert.title)}"
    context = (
        f"{Severity(alert.severity).label} · `{_slack(alert.dedup_key)}` · fired "
        f"{alert.fired_at:%Y-%m-%d %H:%M:%S} UTC · <{links(alert)['dashboard']}|HA Portal>"
    )
    blocks = [{"type": "section", "text": {"type": "mrkdwn", "text": text}}]
    if alert.detail:
        blocks.append({"type": "section", "text": {"type": "mrkdwn", "text": _slack(alert.detail)}})
    blocks.append({"type": "context", "elements": [{"type": "mrkdwn", "text": context}]})
    return {"text": f"{label}: {alert.title}", "blocks": blocks}


def pagerduty_payload(delivery: AlertDelivery) -> dict:
    alert = delivery.alert
    event = {
        "routing_key": delivery.recipient.secret,
        "event_action": PAGERDUTY_ACTIONS[Notice(delivery.notice)],
        "dedup_key": alert.dedup_key,
    }
    if event["event_action"] != "trigger":
        return event
    master = alert.master
    return event | {
        "payload": {
            "summary": alert.title[:1024],
            "severity": alert.severity,  # critical / warning / info are PagerDuty's words too
            "source": master.display_name if master else "HA Portal",
            "component": master.external_id if master else alert.rule,
            "group": "ha-portal",
            "class": alert.rule,
            "timestamp": _iso(alert.fired_at),
            "custom_details": {"detail": alert.detail, **alert.data},
        },
        "client": "HA Portal",
        "client_url": links(alert)["dashboard"],
        "links": [{"href": links(alert)["alert"], "text": "Alert in HA Portal"}],
    }


def _master(master) -> dict | None:
    if master is None:
        return None
    return {
        "id": master.pk,
        "external_id": master.external_id,
        "display_name": master.display_name,
        "phone_number": master.phone_number,
    }


def _username(user) -> str | None:
    return user.get_username() if user is not None else None


def _headline(delivery: AlertDelivery) -> str:
    alert = delivery.alert
    if delivery.notice == Notice.RESOLVE:
        return "Resolved"
    if delivery.notice == Notice.ACKNOWLEDGE:
        return f"Acknowledged by {_username(alert.acknowledged_by) or 'an operator'}"
    if delivery.notice == Notice.REPEAT:
        return f"Still firing ({Severity(alert.severity).label})"
    return Severity(alert.severity).label


def _slack(text: str) -> str:
    """Escape the three characters Slack's mrkdwn treats as control characters."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


def redact(text: str, recipient: AlertRecipient) -> str:
    """Remove the recipient's secrets (key, URL) from text bound for logs and pages."""
    for secret in (recipient.secret, recipient.url):
        if secret:
            text = text.replace(secret, "***")
    return text
