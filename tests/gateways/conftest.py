"""A real local HTTP server that plays a gateway, and helpers to call gateways against it.

The server runs an aiohttp app on its own event loop in a background thread,
so sync tests can drive the client with ``run(...)`` on a loop of their own.
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiohttp import web

from ha_portal.lib.http import HttpClient, run
from masters.gateways import GatewayConfig, HealthResult, gateway_for

# Long enough for loopback on a busy CI runner; the timeout tests use SHORT_TIMEOUT.
TIMEOUT = 2.0
SHORT_TIMEOUT = 0.3

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass
class ReceivedRequest:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: bytes
    json: Any


@dataclass
class FakeGateway:
    """A live HTTP server whose routes a test sets with ``reply``, ``hang`` or ``on``."""

    url: str
    routes: dict[tuple[str, str], Handler] = field(default_factory=dict)
    requests: list[ReceivedRequest] = field(default_factory=list)
    # Set at teardown so handlers that never answer can finish and the server can stop.
    release: asyncio.Event = field(default_factory=asyncio.Event)
    loop: asyncio.AbstractEventLoop | None = None

    def on(self, method: str, path: str, handler: Handler) -> None:
        """Serve ``method path`` with a custom aiohttp handler."""
        self.routes[(method, path)] = handler

    def reply(
        self,
        method: str,
        path: str,
        *,
        status: int = 200,
        json: Any = None,
        body: bytes | None = None,
        delay: float = 0.0,
    ) -> None:
        """Serve ``method path`` with a fixed JSON (or raw) reply, optionally after a delay."""

        async def handler(request: web.Request) -> web.StreamResponse:
            if delay:
                await asyncio.sleep(delay)  # the slowness under test, not synchronisation
            if body is not None:
                return web.Response(status=status, body=body, content_type="text/html")
            return web.json_response(json, status=status)

        self.on(method, path, handler)

    def hang(self, method: str, path: str) -> None:
        """Accept ``method path`` and never answer (until teardown)."""

        async def handler(request: web.Request) -> web.StreamResponse:
            await self.release.wait()
            return web.json_response({})

        self.on(method, path, handler)

    @property
    def last(self) -> ReceivedRequest:
        assert self.requests, "the gateway received no request"
        return self.requests[-1]

    async def dispatch(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        self.requests.append(
            ReceivedRequest(
                method=request.method,
                path=request.path,
                query=dict(request.query),
                headers=dict(request.headers),
                body=body,
                json=decode(body),
            )
        )
        handler = self.routes.get((request.method, request.path))
        if handler is None:
            return web.json_response({"message": "no route in test"}, status=599)
        return await handler(request)


def decode(body: bytes) -> Any:
    """Decode a request body as JSON, or None when it is empty or not JSON."""
    try:
        return json.loads(body) if body else None
    except ValueError:
        return None


@pytest.fixture
def fake_gateway() -> Iterator[FakeGateway]:
    """Start a real HTTP server on a free 127.0.0.1 port for the test's duration."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = FakeGateway(url=f"http://127.0.0.1:{sock.getsockname()[1]}")
    ready = threading.Event()
    thread = threading.Thread(target=asyncio.run, args=(serve(server, sock, ready),), daemon=True)
    thread.start()
    assert ready.wait(timeout=5), "the fake gateway did not start"
    try:
        yield server
    finally:
        assert server.loop is not None
        server.loop.call_soon_threadsafe(server.release.set)
        thread.join(timeout=5)


async def serve(server: FakeGateway, sock: socket.socket, ready: threading.Event) -> None:
    """Serve until ``server.release`` is set, then shut down inside asyncio.run.

    Shutting down inside asyncio.run (not by stopping a bare loop) lets the
    closed connections finish closing before the loop goes away.
    """
    server.loop = asyncio.get_running_loop()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", server.dispatch)
    runner = web.AppRunner(app, shutdown_timeout=1)
    await runner.setup()
    await web.SockSite(runner, sock).start()
    ready.set()
    await server.release.wait()
    await runner.cleanup()


@pytest.fixture
def refused_url() -> Iterator[str]:
    """Return a URL whose port is bound but not listening, so connecting is refused."""
    # Holding the bound socket keeps another process from taking the port meanwhile.
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"


def probe(config: GatewayConfig, timeout: float = TIMEOUT) -> HealthResult:
    """Probe a gateway from sync code, the way the prober does."""

    async def go() -> HealthResult:
        async with HttpClient() as http:
            return await gateway_for(config, http, timeout).health()

    return run(go())


def deliver(
    config: GatewayConfig,
    to: str = "+971505760056",
    text: str = "Your table is ready",
    idempotency_key: str = "msg-42",
    timeout: float = TIMEOUT,
) -> str:
    """Send through a gateway from sync code, the way the dispatcher does."""

    async def go() -> str:
        async with HttpClient() as http:
            return await gateway_for(config, http, timeout).send(to, text, idempotency_key)

    return run(go())


@pytest.fixture
def check_health() -> Callable[..., HealthResult]:
    """Return ``probe(config, timeout=...)``: one health() call over a fresh client."""
    return probe


@pytest.fixture
def send_text() -> Callable[..., str]:
    """Return ``deliver(config, to=..., text=..., idempotency_key=..., timeout=...)``."""
    return deliver
