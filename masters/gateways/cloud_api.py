"""Meta's WhatsApp Cloud API: one business phone number per master."""

from __future__ import annotations

from typing import Any

from ha_portal.lib.http import HttpResponse
from masters.choices import GatewayKind, HealthStatus
from masters.gateways.base import Gateway, dig, flatten_words, text_at

DEFAULT_URL = "https://graph.facebook.com"

# GET /{version}/{phone_number_id}?fields=health_status -> health_status.can_send_message
STATE_TABLE = {
    "AVAILABLE": HealthStatus.HEALTHY,
    # Sending works but under a messaging limit or quality restriction.
    "LIMITED": HealthStatus.DEGRADED,
    "BLOCKED": HealthStatus.FAILED,
}

# Graph error codes that blame the sending account, its token or its
# throughput rather than the message: another master can still deliver it.
RETRYABLE_CODES = frozenset(
    {
        0,  # AuthException
        1,  # API unknown (transient on Meta's side)
        2,  # API service (temporary downtime)
        3,  # API method: the app lacks the capability
        4,  # API too many calls
        10,  # permission denied
        190,  # access token expired or invalid
        368,  # temporarily blocked for policy violations
        80007,  # WhatsApp Business Account rate limit
        130429,  # Cloud API throughput reached
        131000,  # something went wrong (Meta's words)
        131016,  # service unavailable
        131031,  # business account locked
        131042,  # payment problem on the business account
        131048,  # spam rate limit
        131056,  # pair rate limit: too many messages to this recipient from this number
        133010,  # phone number not registered on Cloud API
    }
)
# Code 100 with subcode 33: the phone number id does not exist (master misconfigured).
UNKNOWN_OBJECT = (100, 33)


class CloudApiGateway(Gateway):
    kind = GatewayKind.CLOUD_API
    label = "Cloud API"
    session_noun = "phone number id"
    state_table = STATE_TABLE
    # Meta runs the session: there is nothing to restart and no phone to re-link.
    supports_restart = False
    supports_qr = False

    def default_url(self) -> str:
        return DEFAULT_URL

    def auth_headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.config.api_key}"} if self.config.api_key else {}

    def health_url(self) -> str:
        return f"{self.phone_url}?fields=health_status"

    def read_health(self, payload: Any) -> tuple[str, str]:
        state = text_at(payload, "health_status", "can_send_message")
        detail = f"Cloud API can_send_message {state}"
        reasons = entity_errors(dig(payload, "health_status"))
        return state, f"{detail}: {reasons}" if reasons else detail

    def send_url(self) -> str:
        return f"{self.phone_url}/messages"

    def send_body(self, digits: str, text: str) -> dict[str, Any]:
        return {
            "messaging_product": "whatsapp",
            "recipient_type": "individual",
            "to": digits,
            "type": "text",
            "text": {"body": text},
        }

    def read_message_id(self, payload: Any) -> str:
        return text_at(payload, "messages", 0, "id")

    def is_retryable(self, status: int, payload: Any) -> bool:
        code, subcode = graph_error_codes(payload)
        if code in RETRYABLE_CODES or (code, subcode) == UNKNOWN_OBJECT:
            return True
        return super().is_retryable(status, payload)

    def describe_http_failure(self, response: HttpResponse, payload: Any) -> str:
        detail = super().describe_http_failure(response, payload)
        code, _ = graph_error_codes(payload)
        error_data = graph_error(payload).get("error_data")
        details = flatten_words(error_data.get("details")) if isinstance(error_data, dict) else ""
        if details:
            detail = f"{detail} ({details})"
        return f"{detail} [code {code}]" if code is not None else detail

    @property
    def phone_url(self) -> str:
        return f"{self.base_url}/{self.config.api_version}/{self.session_in_path}"


def graph_error(payload: Any) -> dict[str, Any]:
    """Return the ``error`` object of a Graph API error reply, or an empty dict."""
    error = payload.get("error") if isinstance(payload, dict) else None
    return error if isinstance(error, dict) else {}


def graph_error_codes(payload: Any) -> tuple[int | None, int | None]:
    """Return the (code, error_subcode) of a Graph API error reply."""
    error = graph_error(payload)
    code, subcode = error.get("code"), error.get("error_subcode")
    return (
        code if isinstance(code, int) else None,
        subcode if isinstance(subcode, int) else None,
    )


def entity_errors(health_status: Any) -> str:
    """Join the error descriptions Meta lists under each entity of a health status."""
    entities = health_status.get("entities") if isinstance(health_status, dict) else None
    descriptions = [
        error.get("error_description")
        for entity in entities or []
        if isinstance(entity, dict)
        for error in entity.get("errors") or []
        if isinstance(error, dict)
    ]
    return "; ".join(dict.fromkeys(filter(None, map(flatten_words, descriptions))))
