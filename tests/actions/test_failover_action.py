"""Manual failover from the dashboard: preview the backup, confirm, see what moved."""

from __future__ import annotations

import pytest
from django.contrib.messages import get_messages
from django.test import Client
from django.urls import reverse

from masters.choices import EventKind, FailoverStatus, HealthStatus, MessageStatus
from masters.models import ConversationAffinity, Event, FailoverEvent, Master, Message
from tests.pages.conftest import add_messages

pytestmark = pytest.mark.django_db

URL = reverse("monitoring:failover", args=["a"])


@pytest.fixture
def work(trio):
    a, _, _ = trio
    add_messages(a, 4)
    ConversationAffinity.objects.create(
        contact="+971501234567", master=a, expires_at="2099-01-01T00:00:00Z"
    )
    return trio


def said(response) -> list[str]:
    return [str(message) for message in get_messages(response.wsgi_request)]


def test_the_preview_shows_the_chosen_backup_with_reasons_and_what_would_move(
    operator_client, work
):
    page = operator_client.get(URL).content.decode()
    assert 'class="chosen-backup">B<' in page
    assert "Would move 4 pending messages and 1 conversations" in page
    assert "chosen: failover priority 2, same region UAE" in page
    assert "ranked lower: failover priority 3 &gt; 2" in page  # c, and why it lost
    assert FailoverEvent.objects.count() == 0  # a preview changes nothing


def test_the_preview_of_a_named_backup_says_why_it_would_or_would_not_do(operator_client, work):
    page = operator_client.get(URL, {"backup": "c"}).content.decode()
    assert 'class="chosen-backup">C<' in page
    Master.objects.filter(external_id="c").update(health_status=HealthStatus.FAILED)
    page = operator_client.get(URL, {"backup": "c"}).content.decode()
    assert "C cannot take the work: not healthy (failed)" in page


def test_an_operator_fails_over_and_the_record_names_them(operator_client, operator, work):
    _, b, _ = work
    response = operator_client.post(URL, {"backup": "", "reason": "gateway host rebooting"})
    assert response.status_code == 302
    assert response["Location"] == reverse("monitoring:master", args=["a"])
    event = FailoverEvent.objects.get()
    assert event.status == FailoverStatus.COMPLETED
    assert (event.initiated_by, event.automatic) == (operator, False)
    assert (event.backup_master_id, event.moved_messages, event.moved_affinities) == (b.pk, 4, 1)
    assert event.reason == "gateway host rebooting"
    assert Message.objects.filter(master=b, status=MessageStatus.RETRYING).count() == 4
    started = Event.objects.get(kind=EventKind.FAILOVER_STARTED)
    assert started.actor == operator
    assert said(response) == [
        f"Failover {event.pk} complete: 4 messages and 1 conversations moved from A to B."
    ]


def test_the_operator_may_choose_the_backup(operator_client, work):
    _, _, c = work
    operator_client.post(URL, {"backup": "c"})
    assert FailoverEvent.objects.get().backup_master == c


def test_a_named_backup_that_cannot_take_the_work_is_refused_and_nothing_changes(
    operator_client, work
):
    Master.objects.filter(external_id="c").update(is_active=False)
    before = sorted(Message.objects.values_list("pk", "master_id", "status"))
    response = operator_client.post(URL, {"backup": "c"})
    assert response.status_code == 302
    assert said(response) == ["C cannot take the work (inactive). Nothing changed."]
    assert FailoverEvent.objects.count() == 0
    assert sorted(Message.objects.values_list("pk", "master_id", "status")) == before


def test_an_unknown_backup_is_a_form_error(operator_client, work):
    response = operator_client.post(URL, {"backup": "nobody"})
    assert response.status_code == 400
    assert "Select a valid choice" in response.content.decode()
    assert FailoverEvent.objects.count() == 0


def test_a_refused_failover_is_shown_and_nothing_changes(operator_client, work, monkeypatch):
    from masters import failover

    def refuse(*args, **kwargs):
        raise failover.FailoverRefused("a failover of master 1 is already running")

    monkeypatch.setattr(failover, "execute_failover", refuse)
    response = operator_client.post(URL)
    assert said(response) == [
        "Failover refused: a failover of master 1 is already running. Nothing changed."
    ]
    assert FailoverEvent.objects.count() == 0


def test_it_returns_to_a_same_site_next_but_never_to_another_site(operator_client, work):
    response = operator_client.post(URL, {"next": "/?view=compact"})
    assert response["Location"] == "/?view=compact"
    FailoverEvent.objects.all().delete()
    response = operator_client.post(URL, {"next": "https://evil.example/"})
    assert response["Location"] == reverse("monitoring:master", args=["a"])


def test_a_post_without_the_csrf_token_is_refused(operator, work):
    browser = Client(enforce_csrf_checks=True)
    browser.force_login(operator)
    assert browser.post(URL).status_code == 403
    assert FailoverEvent.objects.count() == 0
    browser.get(URL)  # the confirmation page sets the CSRF cookie
    token = browser.cookies["csrftoken"].value
    response = browser.post(URL, {"csrfmiddlewaretoken": token})
    assert response.status_code == 302
    assert FailoverEvent.objects.get().status == FailoverStatus.COMPLETED


def test_with_no_eligible_backup_it_says_the_work_went_back_to_the_queue(operator_client, work):
    Master.objects.exclude(external_id="a").update(health_status=HealthStatus.FAILED)
    page = operator_client.get(URL).content.decode()
    assert "No master is eligible as a backup" in page
    response = operator_client.post(URL)
    assert said(response)[0].startswith("No backup could take the work: 4 messages went back")
    assert FailoverEvent.objects.get().status == FailoverStatus.FAILED
