"""A gateway that misbehaves on purpose: a raw asyncio TCP server on 127.0.0.1.

Raw, not aiohttp: it must be able to send what no HTTP library would (bytes
that are not HTTP, a body shorter than its length, a body that never ends).
A test picks the behaviour with ``behave(...)`` and may change it while the
product talks to it, e.g. garbage first, then a working WAHA.
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

CHUNK = b"\0" * (64 * 1024)


@dataclass
class Exchange:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    # How the gateway behaved when this request came.
    mode: str = ""


@dataclass
class HostileGateway:
    """What it does now (``mode``), what it was asked, and how much it managed to send."""

    url: str
    mode: str = "waha"
    reply: tuple[int, Any] = (200, {})
    received: list[Exchange] = field(default_factory=list)
    bytes_sent: int = 0
    loop: asyncio.AbstractEventLoop | None = None
    stopping: asyncio.Event | None = None

    def behave(self, mode: str, status: int = 200, body: Any = None) -> None:
        """Switch: waha, slow, json, garbage, close, hang, drip, endless, declared, short."""
        self.mode, self.reply = mode, (status, body)

    def sends(self) -> list[Exchange]:
        return [e for e in self.received if e.method == "POST" and e.path == "/api/sendText"]

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            exchange = await read_request(reader)
            exchange.mode = self.mode
            self.received.append(exchange)
            await getattr(self, f"do_{self.mode}")(exchange, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass  # the client hung up first: what these tests expect of it
        finally:
            writer.close()

    async def write(self, writer: asyncio.StreamWriter, data: bytes) -> None:
        writer.write(data)
        await writer.drain()
        self.bytes_sent += len(data)

    async def answer(self, writer: asyncio.StreamWriter, status: int, body: bytes) -> None:
        head = (
            f"HTTP/1.1 {status} X\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
        )
        await self.write(writer, head.encode() + body)

    async def do_waha(self, exchange: Exchange, writer: asyncio.StreamWriter) -> None:
        """A working WAHA session: probes say WORKING, sends get an id."""
        if exchange.method == "POST":
            body = {"id": f"true_{len(self.sends())}@c.us"}
        else:
            body = {"name": "x", "status": "WORKING"}
        await self.answer(writer, 200, json.dumps(body).encode())

    async def do_slow(self, exchange: Exchange, writer: asyncio.StreamWriter) -> None:
        """A working WAHA session that takes its time (``reply[1]`` seconds) to answer."""
        await asyncio.sleep(self.reply[1])  # the slowness under test
        await self.do_waha(exchange, writer)

    async def do_json(self, exchange: Exchange, writer: asyncio.StreamWriter) -> None:
        """Answer with the reply set in behave(): bytes as they are, anything else as JSON."""
        status, body = self.reply
        await self.answer(
            writer, status, body if isinstance(body, bytes) else json.dumps(body).encode()
        )

    async def do_garbage(self, exchange: Exchange, writer: asyncio.StreamWriter) -> None:
        await self.write(writer, b"\x16\x03\x01\x02\x00 not http at all \xff\xfe\r\n\r\n")

    async def do_close(self, exchange: Exchange, writer: asyncio.StreamWriter) -> None:
        """Read the request, then hang up without a word."""

    async def do_hang(self, exchange: Exchange, writer: asyncio.StreamWriter) -> None:
        """Read the request, then neither answer nor close (until the server stops)."""
        assert self.stopping is not None
        await self.stopping.wait()

    async def do_drip(self, exchange: Exchange, writer: asyncio.StreamWriter) -> None:
        """Answer at once, then one byte of body at a time, never finishing."""
        head = (
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 1000000\r\n\r\n"
        )
        await self.write(writer, head + b"{")
        assert self.stopping is not None
        while not self.stopping.is_set():
            await self.write(writer, b" ")
            await asyncio.sleep(0.02)  # the drip under test: a server too slow to finish

    async def do_endless(self, exchange: Exchange, writer: asyncio.StreamWriter) -> None:
        """A body with no length, read until the connection closes, that never closes."""
        await self.write(writer, b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\r\n")
        while True:
            await self.write(writer, CHUNK)

    async def do_declared(self, exchange: Exchange, writer: asyncio.StreamWriter) -> None:
        """Declare ten gigabytes, then start sending them."""
        head = b"HTTP/1.1 200 OK\r\nContent-Length: 10000000000\r\n\r\n"
        await self.write(writer, head)
        while True:
            await self.write(writer, CHUNK)

    async def do_short(self, exchange: Exchange, writer: asyncio.StreamWriter) -> None:
        """Promise a thousand bytes, send ten, hang up."""
        await self.write(writer, b'HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n{"id": "x')


async def read_request(reader: asyncio.StreamReader) -> Exchange:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    method, path, _ = lines[0].split(" ", 2)
    headers = {
        name.lower(): value
        for name, value in (line.split(": ", 1) for line in lines[1:] if ": " in line)
    }
    length = int(headers.get("content-length", "0"))
    body = await reader.readexactly(length) if length else b""
    return Exchange(method, path, headers, body)


def serve(gateway: HostileGateway, sock: socket.socket, ready: threading.Event) -> None:
    async def main() -> None:
        gateway.loop = asyncio.get_running_loop()
        gateway.stopping = asyncio.Event()
        server = await asyncio.start_server(gateway.handle, sock=sock)
        ready.set()
        await gateway.stopping.wait()
        server.close()
        # Handlers that never end on their own (endless, declared) end with the loop.

    asyncio.run(main())


def running_gateway() -> Iterator[HostileGateway]:
    """Start a HostileGateway on a free 127.0.0.1 port; stop it when the generator closes."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    gateway = HostileGateway(url=f"http://127.0.0.1:{sock.getsockname()[1]}")
    ready = threading.Event()
    thread = threading.Thread(target=serve, args=(gateway, sock, ready), daemon=True)
    thread.start()
    assert ready.wait(5), "the hostile gateway did not start"
    try:
        yield gateway
    finally:
        assert gateway.loop is not None and gateway.stopping is not None
        gateway.loop.call_soon_threadsafe(gateway.stopping.set)
        thread.join(10)
