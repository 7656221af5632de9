"""The demo that `make run` loads: three masters on the built-in simulator and an admin."""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model

DEMO_SESSIONS = ("a", "b", "c")
DEMO_USERNAME = "admin"


def demo_bots_config(simulator_url: str) -> dict[str, Any]:
    """Return a bots-config.json document for three demo masters on the simulator."""
    masters = [
        ("linda-master", "+971505760056", "Linda-Master", "primary", "UAE"),
        ("omar-master", "+971505760057", "Omar-Master", "secondary", "UAE"),
        ("sara-master", "+966501234567", "Sara-Master", "tertiary", "KSA"),
    ]
    return {
        "version": "4.0",
        "masters": [
            {
                "id": external_id,
                "phoneNumber": phone,
                "displayName": name,
                "role": role,
                "priority": index + 1,
                "region": region,
                "failoverPriority": index + 1,
                "isActive": True,
                "gateway": {"type": "waha", "url": simulator_url, "session": session},
            }
            for index, ((external_id, phone, name, role, region), session) in enumerate(
                zip(masters, DEMO_SESSIONS, strict=True)
            )
        ],
    }


def ensure_demo_admin() -> tuple[str, str | None]:
    """Create the demo superuser once; return its username and password if known.

    The password is random per checkout and kept in var/ (mode 600) so that
    `make run` can print it again on every start.
    """
    password_file: Path = settings.VAR_DIR / "demo-admin-password"
    users = get_user_model().objects
    if users.filter(username=DEMO_USERNAME).exists():
        known = password_file.read_text().strip() if password_file.exists() else None
        return DEMO_USERNAME, known
    password = secrets.token_urlsafe(12)
    users.create_superuser(DEMO_USERNAME, email="", password=password)
    settings.VAR_DIR.mkdir(exist_ok=True)
    password_file.write_text(password + "\n")
    password_file.chmod(0o600)
    return DEMO_USERNAME, password
