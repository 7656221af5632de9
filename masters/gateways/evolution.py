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


# WhatsApp refused the login: only scanning a new QR code on the phone helps.
RELINK_STATES = frozenset({"refused"})


class EvolutionGateway(Gateway):
    kind = GatewayKind.EVOLUTION
    label = "Evolution"
    session_noun = "instance"
    state_table = STATE_TABLE
    state_hints = STATE_HINTS
    supports_restart = True
    relink_states = RELINK_STATES

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

    def restart_url(self) -> str:
        # Evolution v2 takes POST; some v1 releases took PUT on the same path.
        return f"{self.base_url}/instance/restart/{self.session_in_path}"

    def read_restart(self, payload: Any) -> str:
        # v2 answers with the connection state, as GET /instance/connectionState does.
        instance = payload.get("instance") if isinstance(payload, dict) else None
        state = instance.get("state") if isinstance(instance, dict) else None
        return state if isinstance(state, str) else ""
