"""POST a webhook safely: http(s) only, never to link-local or metadata addresses.

An admin types webhook URLs, and alerts go out from inside the network:
a URL pointing at a cloud metadata service (169.254.169.254 and friends)
would hand its answer to whoever reads the delivery log. So the host is
resolved first, every address it resolves to is checked, and the
connection goes to the checked address (a second lookup could answer
differently: DNS rebinding). Loopback and private addresses stay allowed:
self-hosted receivers live there, and the tests use 127.0.0.1.

A blocking client (http.client) because deliveries run in django-q2's
synchronous workers, one request per task. Redirects are not followed:
they would carry the signature or routing key to another host.
"""

from __future__ import annotations

import http.client
import ipaddress
import socket
import ssl
import time
from dataclasses import dataclass
from urllib.parse import urlsplit

METADATA_HOSTS = frozenset(
    {
        "metadata.google.internal",
        "metadata.goog",
        "metadata",
        "instance-data",
        "instance-data.ec2.internal",
    }
)
METADATA_ADDRESSES = frozenset(
    ipaddress.ip_address(address)
    for address in (
        "169.254.169.254",  # AWS, GCP, Azure, OpenStack
        "169.254.170.2",  # AWS ECS task metadata
        "fd00:ec2::254",  # AWS over IPv6
        "100.100.100.200",  # Alibaba Cloud
    )
)
NAT64 = ipaddress.ip_network("64:ff9b::/96")
# Replies are read for the delivery log only; a receiver has no business sending more.
MAX_REPLY_BYTES = 64 * 1024


class UnsafeURL(Exception):
    """The URL may not be called: the message says why (and holds no secret)."""


class DeliveryError(Exception):
    """The request failed before a response arrived (connection, timeout, TLS)."""


@dataclass(frozen=True)
class Reply:
    status: int
    body: bytes
    elapsed_ms: float

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300

    def preview(self, limit: int = 200) -> str:
        return self.body[:limit].decode("utf-8", errors="replace").strip()


@dataclass(frozen=True)
class Target:
    scheme: str
    host: str
    port: int
    path: str  # path and query, as sent
    addresses: tuple[str, ...]  # the vetted IPs, tried in order like create_connection does


def origin(url: str) -> str:
    """Return scheme://host[:port] of URL: what logs and pages may show of a webhook.

    Paths and query strings often are the secret (Slack's incoming webhooks)
    and user:password@ certainly is.
    """
    parts = urlsplit(url)
    try:
        port = parts.port
    except ValueError:
        port = None
    host = parts.hostname or "?"
    if ":" in host:
        host = f"[{host}]"
    return f"{parts.scheme}://{host}" + (f":{port}" if port else "")


def vet(url: str) -> Target:
    """Resolve URL's host and check every address; raise UnsafeURL if it may not be called."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https"):
        raise UnsafeURL(f"refused: only http and https URLs are allowed, not {parts.scheme!r}")
    host = (parts.hostname or "").rstrip(".").lower()
    if not host:
        raise UnsafeURL("refused: the URL has no host")
    if host in METADATA_HOSTS:
        raise UnsafeURL(f"refused: {host} is a cloud metadata service")
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        raise UnsafeURL("refused: the URL's port is not a number") from None
    addresses = resolve(host, port)
    for address in addresses:
        reason = unsafe_reason(address)
        if reason:
            raise UnsafeURL(f"refused: {host} resolves to {address}, {reason}")
    path = parts.path or "/"
    if parts.query:
        path += f"?{parts.query}"
    return Target(parts.scheme, host, port, path, tuple(dict.fromkeys(map(str, addresses))))


def resolve(host: str, port: int) -> list[ipaddress.IPv4Address | ipaddress.IPv6Address]:
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as error:
        raise DeliveryError(f"cannot resolve {host}: {error}") from error
    # getaddrinfo may add a scope id (fe80::1%eth0); the address is what counts.
    return [ipaddress.ip_address(info[4][0].split("%")[0]) for info in infos]


def unsafe_reason(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str:
    """Say why ADDRESS may not be called, or return "" when it may."""
    address = embedded_ipv4(address) or address
    if address in METADATA_ADDRESSES:
        return "a cloud metadata address"
    if address.is_link_local:
        return "a link-local address"
    if address.is_multicast or address.is_unspecified:
        return "not a unicast address"
    return ""


def embedded_ipv4(address: ipaddress.IPv4Address | ipaddress.IPv6Address):
    """Return the IPv4 address an IPv6 one carries (mapped, 6to4, NAT64), if any."""
    if isinstance(address, ipaddress.IPv4Address):
        return None
    if address.ipv4_mapped or address.sixtofour:
        return address.ipv4_mapped or address.sixtofour
    if address in NAT64:
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return None


def post(url: str, body: bytes, headers: dict[str, str], timeout: float) -> Reply:
    """POST BODY to URL after vetting it; raise UnsafeURL or DeliveryError, else return the reply.

    ``timeout`` bounds the connection and each read (http.client has no
    overall deadline; django-q2's task timeout is the backstop).
    """
    target = vet(url)
    connection = _connection(target, timeout)
    started = time.perf_counter()
    try:
        connection.request(
            "POST",
            target.path,
            body=body,
            headers={"Host": _host_header(target), "Content-Length": str(len(body))} | headers,
        )
        response = connection.getresponse()
        reply_body = response.read(MAX_REPLY_BYTES)
        return Reply(response.status, reply_body, (time.perf_counter() - started) * 1000)
    except TimeoutError:
        raise DeliveryError(f"timed out after {timeout:g}s") from None
    except ssl.SSLError as error:
        raise DeliveryError(f"TLS error: {error.reason or error}") from error
    except (OSError, http.client.HTTPException) as error:
        raise DeliveryError(f"{type(error).__name__}: {error}") from error
    finally:
        connection.close()


def _host_header(target: Target) -> str:
    host = f"[{target.host}]" if ":" in target.host else target.host
    default = 443 if target.scheme == "https" else 80
    return host if target.port == default else f"{host}:{target.port}"


def _connection(target: Target, timeout: float) -> http.client.HTTPConnection:
    if target.scheme == "https":
        return _PinnedHTTPSConnection(target, timeout)
    return _PinnedHTTPConnection(target, timeout)


def connect_pinned(addresses: tuple[str, ...], port: int, timeout: float) -> socket.socket:
    """Connect to the first vetted address that answers, never to a fresh lookup's answer."""
    error = OSError("no address to connect to")
    for address in addresses:
        try:
            return socket.create_connection((address, port), timeout)
        except OSError as failed:
            error = failed
    raise error


class _PinnedHTTPConnection(http.client.HTTPConnection):
    def __init__(self, target: Target, timeout: float) -> None:
        super().__init__(target.host, target.port, timeout=timeout)
        self.addresses = target.addresses

    def connect(self) -> None:
        self.sock = connect_pinned(self.addresses, self.port, self.timeout)


class _PinnedHTTPSConnection(http.client.HTTPSConnection):
    """Connect to a vetted address and check its certificate against the host name."""

    def __init__(self, target: Target, timeout: float) -> None:
        super().__init__(
            target.host, target.port, timeout=timeout, context=ssl.create_default_context()
        )
        self.addresses = target.addresses

    def connect(self) -> None:
        sock = connect_pinned(self.addresses, self.port, self.timeout)
        self.sock = self._context.wrap_socket(sock, server_hostname=self.host)
