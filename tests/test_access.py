"""Everything but the login page needs a login; the admin keeps gateway secrets write-only."""

from __future__ import annotations

import logging

import pytest

from masters.models import Master
from tests.conftest import make_master

pytestmark = pytest.mark.django_db


@pytest.mark.parametrize("url", ["/", "/admin/", "/admin/masters/master/"])
def test_pages_redirect_strangers_to_the_login(client, url):
    response = client.get(url)
    assert response.status_code == 302
    assert "/login/" in response["Location"]


def test_the_login_page_is_open_and_logs_people_in(client, viewer):
    assert client.get("/login/").status_code == 200
    response = client.post("/login/", {"username": "viewer", "password": "correct horse battery"})
    assert response.status_code == 302
    assert client.get("/").status_code == 200


def test_a_wrong_password_is_refused(client, viewer):
    response = client.post("/login/", {"username": "viewer", "password": "nope"})
    assert response.status_code == 200
    assert b"didn&#x27;t match" in response.content or b"didn't match" in response.content


def test_the_home_page_lists_masters_with_their_health(client, viewer):
    make_master("linda", "+971505760056", display_name="Linda-Master", health_status="failed")
    client.force_login(viewer)
    page = client.get("/").content.decode()
    assert "Linda-Master" in page
    assert "status-red" in page and "Failed" in page


def test_the_admin_never_shows_a_stored_gateway_secret(client, admin_user):
    master = make_master(gateway_secret="waha-secret-123")
    client.force_login(admin_user)
    page = client.get(f"/admin/masters/master/{master.pk}/change/").content.decode()
    assert "waha-secret-123" not in page
    assert "Stored; leave blank to keep it." in page


def post_master_form(client, master: Master, **overrides):
    data = {
        "external_id": master.external_id,
        "display_name": master.display_name,
        "phone_number": master.phone_number,
        "region": master.region,
        "role": master.role,
        "priority": master.priority,
        "weight": "",
        "failover_priority": master.failover_priority,
        "is_active": "on",
        "gateway_kind": master.gateway_kind,
        "gateway_url": master.gateway_url,
        "gateway_session": master.gateway_session,
        "gateway_api_version": "",
        "gateway_secret": "",
        "max_messages_per_second": master.max_messages_per_second,
        "max_recipients_per_day": master.max_recipients_per_day,
    } | overrides
    return client.post(f"/admin/masters/master/{master.pk}/change/", data)


def test_saving_the_admin_form_with_a_blank_secret_keeps_it(client, admin_user):
    master = make_master(gateway_secret="keep-me")
    client.force_login(admin_user)
    response = post_master_form(client, master, priority=5)
    assert response.status_code == 302, response.content.decode()[:2000]
    master.refresh_from_db()
    assert (master.priority, master.gateway_secret) == (5, "keep-me")


def test_the_admin_can_replace_or_clear_the_secret(client, admin_user):
    master = make_master(gateway_secret="old")
    client.force_login(admin_user)
    post_master_form(client, master, gateway_secret="new")
    master.refresh_from_db()
    assert master.gateway_secret == "new"
    post_master_form(client, master, clear_gateway_secret="on")
    master.refresh_from_db()
    assert master.gateway_secret == ""


def test_the_admin_rejects_an_invalid_phone_number(client, admin_user):
    master = make_master()
    client.force_login(admin_user)
    response = post_master_form(client, master, phone_number="0501234")
    assert response.status_code == 200
    assert "not a valid E.164 number" in response.content.decode()
    master.refresh_from_db()
    assert master.phone_number == "+971505760056"


def test_admin_edits_do_not_log_the_secret(client, admin_user, caplog):
    master = make_master()
    client.force_login(admin_user)
    with caplog.at_level(logging.DEBUG):
        post_master_form(client, master, gateway_secret="never-logged-777")
    assert "never-logged-777" not in caplog.text
    from django.contrib.admin.models import LogEntry

    assert not any("never-logged-777" in str(e.change_message) for e in LogEntry.objects.all())


def test_the_admin_filters_and_searches_masters(client, admin_user):
    make_master("linda", "+971505760056", display_name="Linda", region="UAE")
    make_master("sara", "+966501234567", display_name="Sara", region="KSA", health_status="failed")
    client.force_login(admin_user)
    page = client.get("/admin/masters/master/?health_status__exact=failed").content.decode()
    assert "Sara" in page and ">Linda<" not in page
    page = client.get("/admin/masters/master/?q=Linda").content.decode()
    assert "Linda" in page and ">Sara<" not in page
