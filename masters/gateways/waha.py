"""WAHA (WhatsApp HTTP API): one WAHA session per master.

The built-in simulator speaks this protocol too, so the demo and the tests
exercise this module over real HTTP.
"""

from __future__ import annotations

from typing import Any

from ha_portal.lib.http import HttpResponse
from masters.choices import GatewayKind, HealthStatus
from masters.gateways.base import (
    RETRYABLE_HTTP_STATUSES,
    Gateway,
    MalformedReply,
    dig,
    text_at,
)

# GET /api/sessions/{session} -> {"status": ...}
STATE_TABLE = {
    "WORKING": HealthStatus.HEALTHY,
    # A session starts for a few seconds after every restart: not a failure yet.
    "STARTING": HealthStatus.DEGRADED,
    "SCAN_QR_CODE": HealthStatus.FAILED,
    "FAILED": HealthStatus.FAILED,
    "STOPPED": HealthStatus.FAILED,
}

STATE_HINTS = {
    "STARTING": "starting up, not sending yet",
    "SCAN_QR_CODE": "logged out, needs re-linking (scan the QR code)",
    "FAILED": "session crashed, restart it",
    "STOPPED": "session is stopped, start it",
}


# A logged-out session: restarting brings it back to the QR code, not to WORKING.
RELINK_STATES = frozenset({"SCAN_QR_CODE"})


class WahaGateway(Gateway):
    kind = GatewayKind.WAHA
    label = "WAHA"
    state_table = STATE_TABLE
    state_hints = STATE_HINTS
    supports_restart = True
    relink_states = RELINK_STATES
    supports_qr = True

    def auth_headers(self) -> dict[str, str]:
        return {"X-Api-Key": self.config.api_key} if self.config.api_key else {}

    def health_url(self) -> str:
        return f"{self.base_url}/api/sessions/{self.session_in_path}"

    def read_health(self, payload: Any) -> tuple[str, str]:
        state = text_at(payload, "status")
        return state, f"WAHA status {state}"

    def send_url(self) -> str:
        return f"{self.base_url}/api/sendText"

    def send_body(self, digits: str, text: str) -> dict[str, Any]:
        return {"session": self.config.session, "chatId": f"{digits}@c.us", "text": text}

    def read_message_id(self, payload: Any) -> str:
        """Read ``id`` as a string or ``id._serialized`` (engines differ); NOWEB uses ``key.id``."""
        if isinstance(payload, dict) and "id" not in payload and "key" in payload:
            return text_at(payload, "key", "id")
        message_id = dig(payload, "id")
        if isinstance(message_id, dict):
            return text_at(payload, "id", "_serialized")
        if isinstance(message_id, str) and message_id:
            return message_id
        raise MalformedReply("id is neither a string nor an object with _serialized")

    def restart_url(self) -> str:
        return f"{self.base_url}/api/sessions/{self.session_in_path}/restart"

    def read_restart(self, payload: Any) -> str:
        # WAHA answers a restart with the session, as GET /api/sessions/{session} does.
        state = payload.get("status") if isinstance(payload, dict) else None
        return state if isinstance(state, str) else ""

    def qr_url(self) -> str:
        return f"{self.base_url}/api/{self.session_in_path}/auth/qr"

    def qr_headers(self) -> dict[str, str]:
        # The image form; WAHA answers JSON {"mimetype", "data"} to application/json,
        # which read_qr_image also reads. ?format=raw would give the QR text instead.
        return {**self.auth_headers(), "Accept": "image/png"}

    def is_retryable(self, status: int, payload: Any) -> bool:
        # WAHA answers 422 when the session is not WORKING: the master's fault.
        return status >= 500 or status in RETRYABLE_HTTP_STATUSES or status == 422

    def describe_http_failure(self, response: HttpResponse, payload: Any) -> str:
        detail = super().describe_http_failure(response, payload)
        session_status = payload.get("status") if isinstance(payload, dict) else None
        if isinstance(session_status, str):
            detail = f"{detail} (session status {session_status})"
        return detail
