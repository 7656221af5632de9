"""GET /metrics answers only a scraper holding METRICS_TOKEN, and never asks for a login."""

from __future__ import annotations

import pytest
from django.urls import reverse
from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_om

from tests.metrics.conftest import TOKEN

pytestmark = pytest.mark.django_db


def get(client, authorization: str | None = None, **headers):
    if authorization is not None:
        headers["Authorization"] = authorization
    return client.get("/metrics", headers=headers)


def test_the_url_is_named_monitoring_metrics():
    assert reverse("monitoring:metrics") == "/metrics"


def test_without_a_configured_token_metrics_are_off(client, settings):
    settings.METRICS_TOKEN = ""
    response = get(client, f"Bearer {TOKEN}")
    assert response.status_code == 404
    assert b"ha_" not in response.content


def test_a_missing_token_is_refused_with_a_bearer_challenge(client, metrics_on):
    response = get(client)
    assert response.status_code == 401
    assert response["WWW-Authenticate"] == 'Bearer realm="metrics"'
    assert b"ha_" not in response.content


def test_a_wrong_token_is_refused(client, metrics_on):
    response = get(client, "Bearer not-the-token")
    assert response.status_code == 401
    assert 'error="invalid_token"' in response["WWW-Authenticate"]
    assert b"ha_" not in response.content


@pytest.mark.parametrize(
    "authorization", [f"Basic {TOKEN}", TOKEN, "Bearer", f"Bearer {TOKEN}x", f"Bearer {TOKEN[:-1]}"]
)
def test_anything_but_the_exact_bearer_token_is_refused(client, metrics_on, authorization):
    assert get(client, authorization).status_code == 401


def test_the_right_token_gets_the_metrics_without_a_session(client, metrics_on):
    response = get(client, f"Bearer {TOKEN}")
    # 200, not the login redirect every other page gives a stranger.
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/plain; version=0.0.4")
    assert response["Cache-Control"] == "no-store"
    assert "# TYPE ha_master_health gauge" in response.content.decode()


def test_the_scheme_is_case_insensitive(client, metrics_on):
    assert get(client, f"bearer {TOKEN}").status_code == 200


def test_a_logged_in_user_without_the_token_is_refused(client, metrics_on, viewer):
    client.force_login(viewer)
    assert get(client).status_code == 401


def test_only_get_is_allowed(client, metrics_on):
    response = client.post("/metrics", headers={"Authorization": f"Bearer {TOKEN}"})
    assert response.status_code == 405


def test_prometheus_asking_for_openmetrics_gets_it(client, metrics_on, known_state):
    response = get(client, f"Bearer {TOKEN}", Accept="application/openmetrics-text; version=1.0.0")
    assert response.status_code == 200
    assert response["Content-Type"].startswith("application/openmetrics-text")
    families = {f.name: f for f in parse_om(response.content.decode())}
    sent = {s.labels["master"]: s.value for s in families["ha_messages_sent"].samples}
    assert sent == {"alpha": 5, "beta": 0, "gamma": 0}
