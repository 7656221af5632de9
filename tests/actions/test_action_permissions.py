"""Only operators act: a viewer sees the pages but every action answers 403, on GET and POST."""

from __future__ import annotations

import pytest
from django.urls import reverse
from django.utils import timezone

from masters.choices import FailoverStatus
from masters.models import Event, FailoverEvent, Master
from monitoring.models import Alert
from tests.conftest import make_master

pytestmark = pytest.mark.django_db


@pytest.fixture
def targets(trio):
    """Every action URL, with something real behind each."""
    a, b, _ = trio
    Master.objects.filter(pk=a.pk).update(breaker_tripped_at=timezone.now())
    failover = FailoverEvent.objects.create(
        failed_master=a,
        backup_master=b,
        reason="test",
        status=FailoverStatus.COMPLETED,
        started_at=timezone.now(),
    )
    now = timezone.now()
    alert = Alert.objects.create(
        dedup_key="master.down:a", rule="master_down", severity="critical", master=a,
        title="a is down", fired_at=now, last_seen_at=now,
    )  # fmt: skip
    return [
        reverse("monitoring:failover", args=["a"]),
        reverse("monitoring:maintenance", args=["a"]),
        reverse("monitoring:reset-breaker", args=["a"]),
        reverse("monitoring:rollback", args=[failover.pk]),
        reverse("monitoring:acknowledge", args=[alert.pk]),
    ]


def state() -> tuple:
    return (
        sorted(Master.objects.values_list("pk", "health_status", "role", "breaker_tripped_at")),
        sorted(FailoverEvent.objects.values_list("pk", "status")),
        sorted(Alert.objects.values_list("pk", "state")),
        Event.objects.count(),
    )


def test_a_viewer_gets_403_on_every_action_and_nothing_changes(viewer_client, targets):
    before = state()
    for url in targets:
        assert viewer_client.get(url).status_code == 403, url
        response = viewer_client.post(url, {"state": "on", "drain": "on", "reason": "x"})
        assert response.status_code == 403, url
    assert state() == before


def test_a_viewer_can_still_see_the_master_page(viewer_client, targets):
    assert viewer_client.get(reverse("monitoring:master", args=["a"])).status_code == 200


def test_an_account_without_a_role_gets_403_too(client, stranger, targets):
    client.force_login(stranger)
    for url in targets:
        assert client.post(url).status_code == 403, url


def test_logged_out_people_are_sent_to_the_login_and_nothing_changes(client, targets):
    before = state()
    for url in targets:
        response = client.post(url, {"state": "on"})
        assert response.status_code == 302 and "/login/" in response["Location"], url
    assert state() == before


def test_an_operator_sees_every_confirmation_page(operator_client, targets):
    for url in targets:
        response = operator_client.get(url)
        assert response.status_code == 200, url
        assert 'id="preview"' in response.content.decode(), url


def test_actions_answer_only_get_and_post(operator_client, targets):
    for url in targets:
        assert operator_client.put(url).status_code == 405, url
        assert operator_client.delete(url).status_code == 405, url


def test_an_unknown_master_is_404_for_operators(operator_client):
    make_master("z")
    for name in ("monitoring:failover", "monitoring:maintenance", "monitoring:reset-breaker"):
        assert operator_client.get(reverse(name, args=["nobody"])).status_code == 404
    assert operator_client.get(reverse("monitoring:rollback", args=[999])).status_code == 404
