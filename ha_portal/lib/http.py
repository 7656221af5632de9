"""Make every outgoing HTTP call of the project, over one pooled aiohttp session.

Gateways (probes and sends) and webhooks go through here, so tests have one
place to point at a local server and one set of errors to handle. Headers are
never logged: they carry API keys and bearer tokens.
"""

from __future__ import annotations

import asyncio
import functools
import json as jsonlib
import logging
import re
import time
from collections.abc import Coroutine, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Any, TypeVar

import aiohttp
import yarl

logger = logging.getLogger(__name__)

T = TypeVar("T")

DEFAULT_CONNECTION_LIMIT = 200
# Gateway replies are a few hundred bytes; a megabyte means something is wrong.
DEFAULT_MAX_BODY_BYTES = 1024 * 1024
CHUNK_BYTES = 64 * 1024
CONTROL_CHARACTERS = re.compile(r"[\x00-\x1f\x7f]")
NO_AIOHTTP_TIMEOUT = aiohttp.ClientTimeout(total=None)


class HttpError(Exception):
    """An HTTP exchange failed before a usable response arrived."""


class HttpTimeout(HttpError):
    """The whole exchange took longer than its timeout (including a silent server)."""


class HttpConnectionError(HttpError):
    """The connection could not be made or was lost (refused, reset, DNS).

    ``request_sent`` is False only when no connection was ever made: then
    the server cannot have seen the request.
    """

    def __init__(self, detail: str, *, request_sent: bool = True) -> None:
        super().__init__(detail)
        self.request_sent = request_sent


class HttpDecodeError(HttpError):
    """A response body was not the JSON its caller expected."""


@dataclass(frozen=True)
class HttpResponse:
    status: int
    body: bytes
    elapsed_ms: float

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300

    def json(self) -> Any:
        """Decode the body as JSON, raising HttpDecodeError if it is not."""
        try:
            return jsonlib.loads(self.body)
        except ValueError:
            raise HttpDecodeError(
                f"response is not JSON (HTTP {self.status}, {len(self.body)} bytes: "
                f"{self.text_preview()!r})"
            ) from None
        except RecursionError:
            # Under the size cap a body can still nest deeper than the parser recurses.
            raise HttpDecodeError(
                f"response is not JSON we can read (HTTP {self.status}, nested too deeply)"
            ) from None

    def text_preview(self, limit: int = 120) -> str:
        """Return the start of the body as text, for error messages."""
        return self.body[:limit].decode("utf-8", errors="replace").strip()


class HttpClient:
    """Own one aiohttp session; use as ``async with HttpClient() as http``.

    One client per process loop: the connector pools connections, and its
    ``limit`` bounds how many requests run at once (the rest wait for a slot).
    """

    def __init__(
        self,
        *,
        limit: int = DEFAULT_CONNECTION_LIMIT,
        max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    ) -> None:
        self.limit = limit
        self.max_body_bytes = max_body_bytes
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> HttpClient:
        # The session must be created inside the running loop that will use it.
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=self.limit),
            raise_for_status=False,
            # request() bounds every exchange with asyncio.timeout: aiohttp's own
            # 5-minute default would only add a timer per request (the prober
            # makes 200 requests a second).
            timeout=NO_AIOHTTP_TIMEOUT,
        )
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def request(
        self,
        method: str,
        url: str,
        *,
        headers: Mapping[str, str] | None = None,
        json: Any = None,
        timeout: float,
    ) -> HttpResponse:
        """Send one request and read the whole (capped) body within ``timeout`` seconds."""
        if self._session is None:
            raise RuntimeError("HttpClient used outside 'async with'")
        check_headers(headers or {})
        started = time.perf_counter()
        try:
            # asyncio.timeout bounds the body read too, so a server that sends
            # headers and then stalls cannot hold a caller past its deadline.
            async with asyncio.timeout(timeout):
                status, body = await self._exchange(method, url, headers, json)
        except TimeoutError:
            raise HttpTimeout(f"timed out after {timeout:g}s") from None
        except aiohttp.ClientConnectionError as error:
            raise HttpConnectionError(
                describe_connection_error(error),
                request_sent=not isinstance(error, aiohttp.ClientConnectorError),
            ) from error
        except (aiohttp.ClientPayloadError, aiohttp.ClientResponseError) as error:
            raise HttpError(describe_protocol_error(error)) from error
        except aiohttp.ClientError as error:
            raise HttpError(f"{type(error).__name__}: {error}") from error
        except ValueError as error:
            # aiohttp's own request validation; report it like any failed call.
            raise HttpError(f"invalid request: {error}") from error
        elapsed_ms = (time.perf_counter() - started) * 1000
        logger.debug("%s %s -> %s in %.1f ms", method, url, status, elapsed_ms)
        return HttpResponse(status=status, body=body, elapsed_ms=elapsed_ms)

    async def _exchange(
        self, method: str, url: str, headers: Mapping[str, str] | None, json: Any
    ) -> tuple[int, bytes]:
        assert self._session is not None
        # No redirects: following one would hand the API key header to another host.
        async with self._session.request(
            method, parsed_url(url), headers=headers, json=json, allow_redirects=False
        ) as response:
            return response.status, await self._read_capped(response)

    async def _read_capped(self, response: aiohttp.ClientResponse) -> bytes:
        limit = self.max_body_bytes
        if response.content_length is not None:
            if response.content_length > limit:
                raise HttpError(f"response body over {limit} bytes")
            # aiohttp reads no more than Content-Length: one read, no chunk loop.
            return await response.read()
        chunks: list[bytes] = []
        size = 0
        # Read in chunks rather than trusting Content-Length: chunked replies have none.
        async for chunk in response.content.iter_chunked(CHUNK_BYTES):
            size += len(chunk)
            if size > limit:
                raise HttpError(f"response body over {limit} bytes")
            chunks.append(chunk)
        return b"".join(chunks)


@functools.lru_cache(maxsize=4096)
def parsed_url(url: str) -> yarl.URL:
    """Parse a URL once: probes and sends call the same few URLs over and over."""
    return yarl.URL(url)


def check_headers(headers: Mapping[str, str]) -> None:
    """Refuse header names or values with control characters, naming only the header.

    A pasted API key often ends in a newline. aiohttp would refuse it too, but
    only after connecting, and it then leaks that connection; the value is
    never put in the message because it is usually a secret.
    """
    for name, value in headers.items():
        if CONTROL_CHARACTERS.search(name) or CONTROL_CHARACTERS.search(value):
            raise HttpError(f"invalid request: header {name!r} contains a control character")


def describe_connection_error(error: aiohttp.ClientConnectionError) -> str:
    """Say why a connection failed in words an operator recognises."""
    if isinstance(error, aiohttp.ClientConnectorError):
        return f"cannot connect to {error.host}:{error.port}: {error.strerror or error}"
    if isinstance(error, aiohttp.ServerDisconnectedError):
        return "server closed the connection without answering"
    return f"connection failed: {error}"


def describe_protocol_error(error: aiohttp.ClientError) -> str:
    """Say what was wrong with an answer that was not valid HTTP, on one line.

    aiohttp reports its own parser's complaints as status 400, which would
    read as if the server had answered 400: the words say what happened instead.
    """
    words = " ".join(str(getattr(error, "message", "") or error).split())
    if isinstance(error, aiohttp.ClientPayloadError):
        received = re.search(r"received \d+ of \d+ bytes", words)
        return "response body cut short" + (f" ({received.group()})" if received else "")
    return f"not a valid HTTP response: {words[:160]}"


def run(coro: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine to completion from synchronous code (management commands, tests)."""
    return asyncio.run(coro)
