"""Evolution API: one Evolution instance per master."""

from __future__ import annotations

from typing import Any

from masters.choices import GatewayKind, HealthStatus
from masters.gateways.base import Gateway, text_at

# GET /instance/connectionState/{instance} -> {"instance": {"state": ...}}
STATE_TABLE = {
    "open": HealthStatus.HEALTHY,
    # Baileys reconnects on its own after a network blip.
    "connecting": HealthStatus.DEGRADED,
    "close": HealthStatus.FAILED,
    "refused": HealthStatus.FAILED,
}

STATE_HINTS = {
    "connecting": "reconnecting to WhatsApp",
    "close": "disconnected from WhatsApp",
    "refused": "WhatsApp refused the login, needs re-linking (scan the QR code)",
}


class EvolutionGateway(Gateway):
    kind = GatewayKind.EVOLUTION
    label = "Evolution"
    session_noun = "instance"
    state_table = STATE_TABLE
    state_hints = STATE_HINTS

    def auth_headers(self) -> dict[str, str]:
        return {"apikey": self.config.api_key} if self.config.api_key else {}

    def health_url(self) -> str:
        return f"{self.base_url}/instance/connectionState/{self.session_in_path}"

    def read_health(self, payload: Any) -> tuple[str, str]:
        state = text_at(payload, "instance", "state")
        return state, f"Evolution state {state}"

    def send_url(self) -> str:
        return f"{self.base_url}/message/sendText/{self.session_in_path}"

    def send_body(self, digits: str, text: str) -> dict[str, Any]:
        return {"number": digits, "text": text}

    def read_message_id(self, payload: Any) -> str:
        return text_at(payload, "key", "id")
