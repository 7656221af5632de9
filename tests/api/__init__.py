"""Tests of the bot's REST API (masters.api), with helpers the modules share."""

from __future__ import annotations

import json
from typing import Any

from django.test import Client

from masters.models import ApiToken

API = "/api/v1"


def issue_token(name: str = "bot", **fields: Any) -> str:
    """Create an API token the way create_api_token does; return the token itself."""
    return ApiToken.issue(name, **fields)[1]


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def post_json(client: Client, path: str, body: Any, token: str, **extra: Any):
    """POST ``body`` (serialised unless already str or bytes) as JSON with the token."""
    data = body if isinstance(body, str | bytes) else json.dumps(body)
    # Set in the environ too: the test client leaves it out when the body is empty.
    extra.setdefault("CONTENT_TYPE", "application/json")
    return client.post(
        f"{API}{path}", data, content_type="application/json", headers=bearer(token), **extra
    )


def get_json(client: Client, path: str, token: str, **params: Any):
    return client.get(f"{API}{path}", params, headers=bearer(token))
