"""Rollback, maintenance, circuit breaker reset and acknowledge, as an operator does them."""

from __future__ import annotations

import pytest
from django.contrib.messages import get_messages
from django.urls import reverse
from django.utils import timezone

from masters.choices import EventKind, FailoverStatus, HealthStatus, MessageStatus
from masters.failover import execute_failover
from masters.models import Event, FailoverEvent, Master, Message
from monitoring.models import Alert, AlertState
from tests.pages.conftest import add_messages

pytestmark = pytest.mark.django_db


def said(response) -> list[str]:
    return [str(message) for message in get_messages(response.wsgi_request)]


@pytest.fixture
def failed_over(trio, operator):
    a, b, _ = trio
    add_messages(a, 5)
    event = execute_failover(a.pk, reason="test", actor=operator)
    # One moved message went out through the backup meanwhile: it stays sent.
    Message.objects.filter(pk=Message.objects.filter(master=b).first().pk).update(
        status=MessageStatus.SENT, sent_at=timezone.now()
    )
    return event


# --- rollback --------------------------------------------------------------------------------


def test_the_rollback_preview_counts_what_would_move_back(operator_client, failed_over):
    page = operator_client.get(reverse("monitoring:rollback", args=[failed_over.pk]))
    html = page.content.decode()
    assert "Would move 4 messages and 0 conversations back" in html
    assert "1 of the moved messages were sent meanwhile and stay sent" in html


def test_an_operator_rolls_a_failover_back(operator_client, operator, failed_over):
    response = operator_client.post(reverse("monitoring:rollback", args=[failed_over.pk]))
    assert response["Location"] == reverse("monitoring:master", args=["a"])
    failed_over.refresh_from_db()
    assert failed_over.status == FailoverStatus.ROLLED_BACK
    assert Message.objects.filter(master__external_id="a").count() == 4
    assert Event.objects.get(kind=EventKind.FAILOVER_ROLLED_BACK).actor == operator
    assert said(response) == [
        f"Failover {failed_over.pk} rolled back: 4 messages and 0 conversations back on A."
    ]


def test_rolling_back_twice_is_refused_and_changes_nothing(operator_client, failed_over):
    url = reverse("monitoring:rollback", args=[failed_over.pk])
    operator_client.post(url)
    before = sorted(Message.objects.values_list("pk", "master_id", "epoch"))
    assert "nothing to roll back" in operator_client.get(url).content.decode()
    response = operator_client.post(url)
    assert said(response)[-1].startswith("Rollback refused: failover")
    assert sorted(Message.objects.values_list("pk", "master_id", "epoch")) == before


# --- maintenance ----------------------------------------------------------------------------


def test_an_operator_turns_maintenance_on_and_off(operator_client, operator, trio):
    url = reverse("monitoring:maintenance", args=["b"])
    assert (
        "Starting maintenance takes B out of rotation" in operator_client.get(url).content.decode()
    )
    response = operator_client.post(url, {"state": "on", "reason": "gateway upgrade"})
    assert said(response) == ["B is in maintenance: it gets no new messages."]
    assert Master.objects.get(external_id="b").health_status == HealthStatus.MAINTENANCE
    started = Event.objects.get(kind=EventKind.MAINTENANCE_STARTED)
    assert started.actor == operator and "gateway upgrade" in started.message
    assert "Ending maintenance hands B back" in operator_client.get(url).content.decode()
    operator_client.post(url, {"state": "off"})
    assert Master.objects.get(external_id="b").health_status == HealthStatus.UNKNOWN
    assert Event.objects.get(kind=EventKind.MAINTENANCE_ENDED).actor == operator


def test_maintenance_with_drain_moves_the_work_to_a_backup(operator_client, operator, trio):
    _, b, c = trio
    add_messages(b, 3)
    response = operator_client.post(
        reverse("monitoring:maintenance", args=["b"]), {"state": "on", "drain": "on"}
    )
    assert said(response)[0].startswith("B is in maintenance and drained: 3 messages")
    event = FailoverEvent.objects.get()
    assert (event.failed_master, event.backup_master, event.initiated_by) == (b, c, operator)
    assert Master.objects.get(pk=b.pk).health_status == HealthStatus.MAINTENANCE


def test_asking_for_the_state_it_is_in_changes_nothing(operator_client, trio):
    response = operator_client.post(reverse("monitoring:maintenance", args=["b"]), {"state": "off"})
    assert said(response) == ["B is already not in maintenance. Nothing changed."]
    assert not Event.objects.filter(kind=EventKind.MAINTENANCE_ENDED).exists()


def test_a_bad_maintenance_state_is_a_form_error(operator_client, trio):
    response = operator_client.post(reverse("monitoring:maintenance", args=["b"]), {"state": "x"})
    assert response.status_code == 400


# --- circuit breaker ------------------------------------------------------------------------


def test_an_operator_resets_a_tripped_breaker(operator_client, operator, trio):
    Master.objects.filter(external_id="a").update(breaker_tripped_at=timezone.now())
    url = reverse("monitoring:reset-breaker", args=["a"])
    assert (
        "Resetting it lets automatic failover act again"
        in operator_client.get(url).content.decode()
    )
    response = operator_client.post(url)
    assert said(response) == ["Circuit breaker of A reset: automatic failover resumes."]
    assert Master.objects.get(external_id="a").breaker_tripped_at is None
    assert Event.objects.get(kind=EventKind.BREAKER_RESET).actor == operator


def test_resetting_a_closed_breaker_changes_nothing(operator_client, trio):
    response = operator_client.post(reverse("monitoring:reset-breaker", args=["b"]))
    assert said(response) == ["The circuit breaker of B is closed. Nothing changed."]
    assert not Event.objects.filter(kind=EventKind.BREAKER_RESET).exists()


# --- acknowledge ----------------------------------------------------------------------------


@pytest.fixture
def alert(trio):
    now = timezone.now()
    return Alert.objects.create(
        dedup_key=f"master.down:{trio[0].pk}", rule="master_down", severity="critical",
        master=trio[0], title="A is down", fired_at=now, last_seen_at=now,
    )  # fmt: skip


def test_an_operator_acknowledges_a_firing_alert(operator_client, operator, alert):
    url = reverse("monitoring:acknowledge", args=[alert.pk])
    assert "A is down" in operator_client.get(url).content.decode()
    response = operator_client.post(url)
    assert response["Location"] == reverse("monitoring:master", args=["a"])
    alert.refresh_from_db()
    assert (alert.state, alert.acknowledged_by) == (AlertState.ACKNOWLEDGED, operator)
    assert said(response) == ["Alert acknowledged: A is down."]


def test_a_resolved_alert_is_not_acknowledged(operator_client, alert):
    Alert.objects.filter(pk=alert.pk).update(state=AlertState.RESOLVED)
    url = reverse("monitoring:acknowledge", args=[alert.pk])
    assert "Only a firing alert can be acknowledged" in operator_client.get(url).content.decode()
    response = operator_client.post(url)
    assert said(response) == ["The alert is already resolved."]
    alert.refresh_from_db()
    assert alert.acknowledged_by is None
