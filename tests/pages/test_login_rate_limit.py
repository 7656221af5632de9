"""Login attempts are rate-limited per username and per address; security headers are sent."""

from __future__ import annotations

import pytest
from django.contrib.auth.signals import user_login_failed
from django.core.cache import cache
from django.test import Client

pytestmark = pytest.mark.django_db

RIGHT, WRONG = "correct horse battery", "wrong"


@pytest.fixture(autouse=True)
def limit(settings):
    settings.LOGIN_RATE_LIMIT = {"attempts": 3, "window_s": 300}
    cache.clear()
    yield
    cache.clear()


def log_in(client: Client, username: str, password: str, address: str = "10.0.0.1"):
    return client.post("/login/", {"username": username, "password": password}, REMOTE_ADDR=address)


@pytest.fixture
def checked_passwords():
    """Count password checks that failed (Django signals each one)."""
    seen: list[str] = []

    def record(sender, credentials, **kwargs):
        seen.append(credentials.get("username"))

    user_login_failed.connect(record)
    yield seen
    user_login_failed.disconnect(record)


def test_it_locks_after_n_failures_even_for_the_right_password(client, viewer, checked_passwords):
    for _ in range(3):
        assert log_in(client, "viewer", WRONG).status_code == 200
    assert len(checked_passwords) == 3
    response = log_in(client, "viewer", RIGHT)
    assert response.status_code == 429
    assert "Too many failed log-in attempts" in response.content.decode()
    assert "_auth_user_id" not in client.session
    response = log_in(client, "viewer", WRONG)
    assert response.status_code == 429
    assert len(checked_passwords) == 3  # locked attempts never reach the password check


def test_the_lock_follows_the_username_to_another_address(client, viewer):
    for n in range(3):
        log_in(client, "viewer", WRONG, address=f"10.0.0.{n}")
    assert log_in(client, "viewer", RIGHT, address="10.9.9.9").status_code == 429
    assert log_in(client, "VIEWER ", RIGHT, address="10.9.9.9").status_code == 429


def test_the_lock_follows_the_address_to_other_usernames(client, viewer):
    for name in ("alice", "bob", "carol"):
        log_in(client, name, WRONG, address="10.0.0.7")
    assert log_in(client, "viewer", RIGHT, address="10.0.0.7").status_code == 429
    assert log_in(client, "viewer", RIGHT, address="10.0.0.8").status_code == 302


def test_a_success_resets_the_count(client, viewer):
    for _ in range(2):
        log_in(client, "viewer", WRONG)
    assert log_in(client, "viewer", RIGHT).status_code == 302
    client.logout()
    for _ in range(2):
        log_in(client, "viewer", WRONG)
    assert log_in(client, "viewer", RIGHT).status_code == 302


def test_the_lock_lifts_when_the_window_ends(client, viewer):
    for _ in range(3):
        log_in(client, "viewer", WRONG)
    assert log_in(client, "viewer", RIGHT).status_code == 429
    cache.clear()  # what the window's end does to the counters
    assert log_in(client, "viewer", RIGHT).status_code == 302


def test_the_admin_login_goes_through_the_rate_limited_one(client):
    response = client.get("/admin/login/?next=/admin/")
    assert response.status_code == 302
    assert response["Location"] == "/login/?next=/admin/"


def test_pages_carry_a_content_security_policy_without_inline_scripts(client):
    policy = client.get("/login/")["Content-Security-Policy"]
    assert "script-src 'self';" in policy  # no 'unsafe-inline' or 'unsafe-eval' for scripts
    assert "style-src 'self' 'unsafe-inline'" in policy  # htmx injects its indicator styles
    assert "frame-ancestors 'none'" in policy


def test_hsts_is_sent_over_https_only(client):
    assert client.get("/login/", secure=True)["Strict-Transport-Security"].startswith(
        "max-age=31536000"
    )
    assert "Strict-Transport-Security" not in client.get("/login/")
