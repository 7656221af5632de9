"""Operator actions: manual failover, rollback, maintenance, breaker reset, acknowledge.

Each answers GET with a confirmation page showing what would happen (the
dry run) and acts on POST (CSRF-protected by the middleware), then
redirects to the master's page, or to a same-site ``next``, with a message.
Both need ``monitoring.operate``: a viewer gets 403 before anything is read.
The domain functions record the acting user on their Event rows.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable

from django.contrib import messages
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.utils import timezone
from django.utils.http import url_has_allowed_host_and_scheme
from django.views.decorators.http import require_http_methods

from masters import failover as failovers
from masters.choices import FailoverStatus, HealthStatus, MessageStatus
from masters.models import ConversationAffinity, FailoverEvent, Master, Message
from monitoring.actions.forms import ON, FailoverForm, MaintenanceForm
from monitoring.alerts.engine import acknowledge as acknowledge_alert
from monitoring.models import Alert, AlertState
from monitoring.roles import OPERATE

logger = logging.getLogger(__name__)

# How long a drain from the dashboard waits for in-flight sends: a web request
# cannot wait a whole dispatcher lease. Sends still open move with their lease.
DRAIN_WAIT_S = 5.0

View = Callable[..., HttpResponse]


def operator_required(view: View) -> View:
    """Allow GET (the preview) and POST (the action) to operators only; others get 403."""

    @require_http_methods(["GET", "HEAD", "POST"])
    @functools.wraps(view)
    def wrapper(request: HttpRequest, *args, **kwargs) -> HttpResponse:
        if not request.user.has_perm(OPERATE):
            raise PermissionDenied
        return view(request, *args, **kwargs)

    return wrapper


def next_url(request: HttpRequest, default: str) -> str:
    """Return ``next`` from the form or query if it points to this site, else ``default``."""
    target = request.POST.get("next") or request.GET.get("next") or ""
    safe = url_has_allowed_host_and_scheme(
        target, allowed_hosts={request.get_host()}, require_https=request.is_secure()
    )
    return target if target and safe else default


def master_page(master: Master) -> str:
    return reverse("monitoring:master", args=[master.external_id])


# --- failover ------------------------------------------------------------------------------


@operator_required
def failover(request: HttpRequest, external_id: str) -> HttpResponse:
    """Preview a manual failover (the backup it would choose and why), or run it."""
    master = get_object_or_404(Master, external_id=external_id)
    if request.method == "POST":
        form = FailoverForm(request.POST, master=master)
        if form.is_valid():
            return run_failover(request, master, form.cleaned_data)
    else:
        form = FailoverForm(request.GET if "backup" in request.GET else None, master=master)
    chosen = form.cleaned_data.get("backup") if form.is_bound and form.is_valid() else None
    automatic = failovers.plan_failover(master, list_work=chosen is None)
    plan = failovers.plan_failover(master, chosen.pk) if chosen else automatic
    others = Master.objects.exclude(pk=master.pk).order_by("failover_priority", "external_id")
    context = {
        "master": master,
        "form": form,
        "plan": plan,
        "backup": next((m for m in others if m.pk == plan.backup_id), None),
        "chosen": chosen,
        "candidates": [
            (other, automatic.reasons.get(str(other.pk), ""), other.pk == automatic.backup_id)
            for other in others
        ],
        "chosen_reason": plan.reasons.get(str(chosen.pk), "") if chosen else "",
        "next": next_url(request, ""),
    }
    return render(request, "actions/failover.html", context, status=400 if form.errors else 200)


def run_failover(request: HttpRequest, master: Master, data: dict) -> HttpResponse:
    """Fail ``master`` over as the operator confirmed; say how it went."""
    backup: Master | None = data["backup"]
    back = next_url(request, master_page(master))
    if backup is not None:
        # A named backup that cannot take the work would leave the messages unassigned
        # in the queue: refuse instead, and change nothing.
        check = failovers.plan_failover(master, backup.pk, list_work=False)
        if check.backup_id is None:
            why = check.reasons.get(str(backup.pk), "not eligible")
            messages.error(
                request, f"{backup.display_name} cannot take the work ({why}). Nothing changed."
            )
            return redirect(back)
    reason = data["reason"] or "manual failover from the dashboard"
    try:
        event = failovers.execute_failover(
            master.pk, reason=reason, backup_id=backup.pk if backup else None, actor=request.user
        )
    except failovers.FailoverRefused as refused:
        messages.error(request, f"Failover refused: {refused}. Nothing changed.")
        return redirect(back)
    logger.info("manual failover %s of %s by %s", event.pk, master.external_id, request.user)
    if event.status == FailoverStatus.COMPLETED:
        messages.success(
            request,
            f"Failover {event.pk} complete: {event.moved_messages} messages and "
            f"{event.moved_affinities} conversations moved from {master.display_name} to "
            f"{event.backup_master.display_name}.",
        )
    elif event.status == FailoverStatus.FAILED:
        messages.warning(
            request,
            f"No backup could take the work: {event.moved_messages} messages went back to the "
            "queue and go out through the first master that can send.",
        )
    else:
        messages.error(
            request, f"Failover rolled back, nothing moved: {event.detail.get('error', '')}"
        )
    return redirect(back)


# --- rollback ------------------------------------------------------------------------------


@operator_required
def rollback(request: HttpRequest, failover_id: int) -> HttpResponse:
    """Preview what rolling a failover back would move, or roll it back."""
    event = get_object_or_404(
        FailoverEvent.objects.select_related("failed_master", "backup_master", "initiated_by"),
        pk=failover_id,
    )
    back = next_url(request, master_page(event.failed_master))
    if request.method == "POST":
        try:
            done = failovers.rollback_failover(event.pk, actor=request.user)
        except failovers.FailoverRefused as refused:
            messages.error(request, f"Rollback refused: {refused}. Nothing changed.")
            return redirect(back)
        moved = done.detail["rolled_back"]
        messages.success(
            request,
            f"Failover {event.pk} rolled back: {moved['messages']} messages and "
            f"{moved['affinities']} conversations back on {event.failed_master.display_name}.",
        )
        return redirect(back)
    context = {"event": event, "next": next_url(request, "")}
    if event.status == FailoverStatus.COMPLETED:
        context |= rollback_preview(event)
    return render(request, "actions/rollback.html", context)


def rollback_preview(event: FailoverEvent) -> dict[str, int]:
    """Count what a rollback would move back: what the failover moved and is still pending."""
    now = timezone.now()
    moved = Message.objects.filter(failover=event, master_id=event.backup_master_id)
    return {
        "movable": failovers.movable_messages(event.backup_master_id, now)
        .filter(failover=event)
        .count(),
        "already_sent": moved.filter(status=MessageStatus.SENT).count(),
        "affinities": ConversationAffinity.objects.filter(
            failover=event, master_id=event.backup_master_id
        ).count(),
    }


# --- maintenance and the circuit breaker ---------------------------------------------------


@operator_required
def maintenance(request: HttpRequest, external_id: str) -> HttpResponse:
    """Start maintenance (optionally draining the master to a backup) or end it."""
    master = get_object_or_404(Master, external_id=external_id)
    in_maintenance = master.health_status == HealthStatus.MAINTENANCE
    form = MaintenanceForm(request.POST if request.method == "POST" else None)
    if request.method == "POST" and form.is_valid():
        set_maintenance(request, master, **form.cleaned_data)
        return redirect(next_url(request, master_page(master)))
    context = {
        "master": master,
        "form": form,
        "in_maintenance": in_maintenance,
        "pending": failovers.movable_messages(master.pk, timezone.now()).count(),
        "next": next_url(request, ""),
    }
    return render(request, "actions/maintenance.html", context, status=400 if form.errors else 200)


def set_maintenance(request: HttpRequest, master: Master, state: str, reason: str, drain: bool):
    in_maintenance = master.health_status == HealthStatus.MAINTENANCE
    name = master.display_name
    if state == ON and drain:
        event = failovers.drain(master.pk, actor=request.user, wait_s=DRAIN_WAIT_S)
        if event is not None and event.status == FailoverStatus.COMPLETED:
            backup = event.backup_master.display_name
            messages.success(
                request,
                f"{name} is in maintenance and drained: {event.moved_messages} messages and "
                f"{event.moved_affinities} conversations moved to {backup}.",
            )
        else:
            messages.warning(
                request, f"{name} is in maintenance, but its work could not be moved to a backup."
            )
    elif state == ON and not in_maintenance:
        master.start_maintenance(actor=request.user, reason=reason)
        messages.success(request, f"{name} is in maintenance: it gets no new messages.")
    elif state != ON and in_maintenance:
        master.end_maintenance(actor=request.user, reason=reason)
        messages.success(request, f"Maintenance of {name} ended: the probes decide its health.")
    else:
        now = "in maintenance" if in_maintenance else "not in maintenance"
        messages.info(request, f"{name} is already {now}. Nothing changed.")


@operator_required
def reset_breaker(request: HttpRequest, external_id: str) -> HttpResponse:
    """Close a master's tripped circuit breaker, so automatic failover resumes."""
    master = get_object_or_404(Master, external_id=external_id)
    if request.method == "POST":
        if master.breaker_tripped_at is None:
            messages.info(
                request, f"The circuit breaker of {master.display_name} is closed. Nothing changed."
            )
        else:
            failovers.reset_breaker(master.pk, actor=request.user)
            messages.success(
                request,
                f"Circuit breaker of {master.display_name} reset: automatic failover resumes.",
            )
        return redirect(next_url(request, master_page(master)))
    context = {"master": master, "next": next_url(request, "")}
    return render(request, "actions/reset_breaker.html", context)


# --- alerts --------------------------------------------------------------------------------


@operator_required
def acknowledge(request: HttpRequest, alert_id: int) -> HttpResponse:
    """Acknowledge a firing alert: recipients are told, repeats stop until it resolves."""
    alert = get_object_or_404(
        Alert.objects.select_related("master", "acknowledged_by"), pk=alert_id
    )
    default = master_page(alert.master) if alert.master else reverse("home")
    if request.method != "POST":
        can = alert.state == AlertState.FIRING
        context = {"alert": alert, "can_acknowledge": can, "next": next_url(request, "")}
        return render(request, "actions/acknowledge.html", context)
    if alert.state != AlertState.FIRING:
        messages.info(request, f"The alert is already {alert.get_state_display().lower()}.")
        return redirect(next_url(request, default))
    if acknowledge_alert(alert, request.user):
        messages.success(request, f"Alert acknowledged: {alert.title}.")
    else:  # acknowledged or resolved since this page was read
        messages.info(request, "The alert is no longer firing. Nothing changed.")
    return redirect(next_url(request, default))
