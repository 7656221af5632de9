"""Talk to the gateways that hold the masters' WhatsApp accounts.

``gateway_for(config, http)`` picks the module for a master's kind; callers
use only the interface in ``base``.
"""

from __future__ import annotations

from ha_portal.lib.http import HttpClient
from masters.choices import GatewayKind
from masters.gateways.base import Gateway, GatewayConfig, GatewayError, HealthResult
from masters.gateways.cloud_api import CloudApiGateway
from masters.gateways.evolution import EvolutionGateway
from masters.gateways.waha import WahaGateway

__all__ = [
    "GATEWAYS",
    "Gateway",
    "GatewayConfig",
    "GatewayError",
    "HealthResult",
    "gateway_for",
]

# The simulator speaks WAHA, so it needs no entry of its own.
GATEWAYS: dict[str, type[Gateway]] = {
    GatewayKind.WAHA: WahaGateway,
    GatewayKind.EVOLUTION: EvolutionGateway,
    GatewayKind.CLOUD_API: CloudApiGateway,
}


def gateway_for(config: GatewayConfig, http: HttpClient, timeout: float = 4.0) -> Gateway:
    """Return the gateway for a master's kind, or raise ValueError for an unknown kind."""
    try:
        gateway_class = GATEWAYS[config.kind]
    except KeyError:
        raise ValueError(f"unknown gateway kind {config.kind!r}") from None
    return gateway_class(config, http, timeout)
