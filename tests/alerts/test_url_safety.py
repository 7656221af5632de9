"""Webhooks go only to http(s), never to link-local or cloud metadata addresses."""

from __future__ import annotations

import ipaddress

import pytest

from masters.choices import HealthStatus
from masters.models import AlertRecipient, Master
from monitoring.alerts import transport
from monitoring.alerts.engine import evaluate
from monitoring.models import AlertDelivery, DeliveryStatus
from tests.alerts.conftest import webhook
from tests.conftest import make_master


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("http://169.254.169.254/latest/meta-data/", "a cloud metadata address"),
        ("http://169.254.10.1/hook", "a link-local address"),
        ("http://[fd00:ec2::254]/latest/meta-data/", "a cloud metadata address"),
        ("http://[fe80::1]/hook", "a link-local address"),
        ("http://[::ffff:169.254.169.254]/", "a cloud metadata address"),
        ("http://metadata.google.internal/computeMetadata/v1/", "a cloud metadata service"),
        ("http://METADATA.google.internal./x", "a cloud metadata service"),
        ("ftp://127.0.0.1/hook", "only http and https"),
        ("file:///etc/passwd", "only http and https"),
        ("http://0.0.0.0:8080/hook", "not a unicast address"),
    ],
)
def test_unsafe_urls_are_refused_before_connecting(url, reason):
    with pytest.raises(transport.UnsafeURL, match=reason):
        transport.vet(url)


@pytest.mark.parametrize(
    ("url", "address"),
    [
        ("http://127.0.0.1:8080/hook", "127.0.0.1"),
        ("https://[::1]/hook", "::1"),
        ("http://10.1.2.3/hook", "10.1.2.3"),
        ("http://localhost:8080/hook", None),
    ],
)
def test_loopback_and_private_addresses_stay_allowed(url, address):
    resolved = [ipaddress.ip_address(ip) for ip in transport.vet(url).addresses]
    assert resolved == [ipaddress.ip_address(address)] if address else resolved[0].is_loopback


def test_a_nat64_address_of_the_metadata_service_is_refused():
    assert transport.unsafe_reason(ipaddress.ip_address("64:ff9b::a9fe:a9fe")) != ""


def test_the_origin_shows_no_path_query_or_credentials():
    url = "https://user:pw@hooks.slack.com:8443/services/T0/B0/SECRET?token=x"
    assert transport.origin(url) == "https://hooks.slack.com:8443"


@pytest.mark.usefixtures("alerting")
def test_a_refused_webhook_is_recorded_as_failed_with_the_reason(receiver):
    a = make_master("a", "+971505760056")
    make_master("b", "+971505760057")
    evaluate()
    # Saved directly, as an old row or a raw import could be: the check is at send time.
    AlertRecipient.objects.create(kind="webhook", url="http://169.254.169.254/latest/meta-data/")
    webhook(f"{receiver.url}/fine")
    Master.objects.filter(pk=a.pk).update(health_status=HealthStatus.FAILED)
    evaluate()
    refused = AlertDelivery.objects.get(target="webhook (json) to http://169.254.169.254")
    assert (refused.status, refused.attempts) == (DeliveryStatus.FAILED, 1), "never retried"
    assert refused.last_result == (
        "refused: 169.254.169.254 resolves to 169.254.169.254, a cloud metadata address"
    )
    assert AlertDelivery.objects.exclude(pk=refused.pk).get().status == DeliveryStatus.SENT
