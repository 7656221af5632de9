"""The gateway interface: picking a kind, keeping secrets out of logs, bad configs."""

from __future__ import annotations

import pytest

from ha_portal.lib.http import HttpClient
from masters.choices import GatewayKind, HealthStatus
from masters.gateways import GatewayConfig, gateway_for
from masters.gateways.cloud_api import CloudApiGateway
from masters.gateways.evolution import EvolutionGateway
from masters.gateways.waha import WahaGateway


@pytest.mark.parametrize(
    ("kind", "gateway_class"),
    [
        (GatewayKind.WAHA, WahaGateway),
        (GatewayKind.EVOLUTION, EvolutionGateway),
        (GatewayKind.CLOUD_API, CloudApiGateway),
    ],
)
def test_it_picks_the_gateway_for_each_kind(kind, gateway_class):
    config = GatewayConfig(kind=kind, url="http://gw.test", session="s")

    assert type(gateway_for(config, HttpClient(), timeout=1.5)) is gateway_class


def test_it_rejects_an_unknown_kind():
    config = GatewayConfig(kind="carrier-pigeon", url="http://gw.test", session="s")

    with pytest.raises(ValueError, match="unknown gateway kind 'carrier-pigeon'"):
        gateway_for(config, HttpClient())


def test_it_keeps_the_api_key_out_of_the_config_repr():
    config = GatewayConfig(kind=GatewayKind.WAHA, url="http://gw", session="s", api_key="hunter2")

    assert "hunter2" not in repr(config)


def test_it_marks_a_master_without_a_url_as_failed(check_health):
    config = GatewayConfig(kind=GatewayKind.WAHA, url="", session="default")

    result = check_health(config)

    assert result.status == HealthStatus.FAILED
    assert result.detail == "WAHA gateway has no url configured"
