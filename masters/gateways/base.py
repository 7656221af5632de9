"""The interface every gateway kind implements, and the helpers they share.

A gateway is the HTTP service that holds one WhatsApp sender account (a
"master"): WAHA, Evolution API or Meta's Cloud API. The prober calls
``health()`` and the dispatcher calls ``send()``; neither knows which kind it
talks to. Each kind only says where to ask, how to authenticate and how to
read the answer; the exchange, timing and error mapping live here so that the
three kinds cannot drift apart. docs/GATEWAYS.md holds the full state table.
"""

from __future__ import annotations

import base64
import binascii
import json as jsonlib
import logging
import re
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar
from urllib.parse import quote

from ha_portal.lib.http import (
    HttpClient,
    HttpConnectionError,
    HttpError,
    HttpResponse,
    HttpTimeout,
)
from masters.choices import HealthStatus

logger = logging.getLogger(__name__)

# E.164 allows at most 15 digits; the shortest real numbers have 7.
E164_DIGITS = re.compile(r"[1-9]\d{6,14}")

# HTTP statuses that say something about the master or the transport, not the
# message: another attempt, possibly through another master, can succeed.
RETRYABLE_HTTP_STATUSES = frozenset({401, 403, 404, 408, 409, 425, 429})

# What a gateway says (states, error words, message ids) goes into columns,
# events, logs and pages. It leaves this module as short, printable text: a
# NUL or half a surrogate pair cannot be stored (PostgreSQL refuses the one,
# both databases the other) and would poison the batch it is written with.
MAX_DETAIL_CHARS = 500
MAX_STATE_CHARS = 100
# Message.gateway_message_id holds this many characters.
MAX_MESSAGE_ID_CHARS = 200
CONTROL_RUNS = re.compile(r"[\x00-\x1f\x7f]+")

# The QR code images the portal accepts, by the bytes each format starts with.
# The master's page shows the image inline, so anything else (SVG can carry
# script) is refused rather than passed on to the browser.
IMAGE_SIGNATURES = {
    "image/png": b"\x89PNG\r\n\x1a\n",
    "image/jpeg": b"\xff\xd8\xff",
}


@dataclass(frozen=True)
class GatewayConfig:
    """Where a master's gateway lives and how to authenticate to it."""

    kind: str
    url: str
    # WAHA session name, Evolution instance name or Cloud API phone number id.
    session: str
    api_key: str = field(default="", repr=False)
    # Only the Cloud API versions its paths.
    api_version: str = "v21.0"


def clean_text(text: str, limit: int = MAX_DETAIL_CHARS) -> str:
    """Return gateway-supplied text as storable, printable, single-line text of at most ``limit``.

    Control characters become spaces, lone surrogates question marks, and
    anything longer is cut with an ellipsis.
    """
    text = str(text)
    if not text.isprintable():
        text = text.encode("utf-8", "replace").decode("utf-8")
        text = CONTROL_RUNS.sub(" ", text)
    return text if len(text) <= limit else text[: limit - 1] + "…"


@dataclass(frozen=True)
class HealthResult:
    """What one probe concluded; ``latency_ms`` is None when no answer arrived."""

    status: HealthStatus
    latency_ms: float | None
    detail: str
    gateway_state: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "detail", clean_text(self.detail))
        object.__setattr__(self, "gateway_state", clean_text(self.gateway_state, MAX_STATE_CHARS))


@dataclass(frozen=True)
class RestartResult:
    """What one restart attempt achieved, in words for the attempt's record."""

    ok: bool
    detail: str

    def __post_init__(self) -> None:
        object.__setattr__(self, "detail", clean_text(self.detail))


@dataclass(frozen=True)
class QrCode:
    """An image of the QR code that re-links a logged-out session to its phone."""

    mimetype: str
    data: bytes = field(repr=False)

    @property
    def data_uri(self) -> str:
        """Return the image as a ``data:`` URI for an ``<img src>``."""
        return f"data:{self.mimetype};base64,{base64.b64encode(self.data).decode('ascii')}"


class GatewayError(Exception):
    """A send failed; ``retryable`` says whether another attempt can help.

    ``retryable=False`` means the message itself is at fault (the recipient
    is not on WhatsApp, the gateway rejected the request as invalid): sending
    it again, through any master, will fail the same way, so it should go dead.
    ``retryable=True`` means the master or the transport is at fault
    (timeouts, refused connections, 5xx, 429, 401/403, a session that is not
    working, a reply we cannot read): a retry, possibly through another
    master, can succeed, and the idempotency key keeps a retry from sending twice.

    ``in_doubt=True`` means the gateway may have taken the message although
    no usable answer came back (a timeout, a connection lost after the
    request went out, a 2xx reply we cannot read). The key de-duplicates
    only within this gateway, so such a message must not go out through
    another master at once (outbox.record holds it on this one).
    """

    def __init__(
        self,
        detail: str,
        *,
        retryable: bool,
        http_status: int | None = None,
        in_doubt: bool = False,
    ) -> None:
        detail = clean_text(detail)
        super().__init__(detail)
        self.detail = detail
        self.retryable = retryable
        self.http_status = http_status
        self.in_doubt = in_doubt

    def __repr__(self) -> str:
        return (
            f"GatewayError({self.detail!r}, retryable={self.retryable}, "
            f"http_status={self.http_status}, in_doubt={self.in_doubt})"
        )


class MalformedReply(ValueError):
    """A gateway answered 2xx with a body that lacks what its protocol promises."""


class Gateway(ABC):
    """Probe and send through one master's gateway over HTTP."""

    kind: ClassVar[str]
    # How the gateway names itself in details, e.g. "WAHA status SCAN_QR_CODE".
    label: ClassVar[str]
    # The gateway's raw states mapped to ours; a state not listed is a failure.
    state_table: ClassVar[Mapping[str, HealthStatus]]
    # What the config's ``session`` names on this kind, for details.
    session_noun: ClassVar[str] = "session"
    # Why a state is not healthy, in words that tell the operator what to do.
    state_hints: ClassVar[Mapping[str, str]] = {}
    # Whether the gateway can restart the session itself (see restart()).
    supports_restart: ClassVar[bool] = False
    # Raw states a restart cannot fix: the phone must be linked again.
    relink_states: ClassVar[frozenset[str]] = frozenset()
    # Whether the gateway serves the QR code that re-links a session (see qr_code()).
    supports_qr: ClassVar[bool] = False

    def __init__(self, config: GatewayConfig, http: HttpClient, timeout: float = 4.0) -> None:
        self.config = config
        self.http = http
        self.timeout = timeout
        self.base_url = (config.url or self.default_url()).rstrip("/")

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.base_url!r}, session={self.config.session!r})"

    async def health(self) -> HealthResult:
        """Probe the gateway; report every gateway or transport problem as failed."""
        try:
            response = await self.exchange("GET", self.health_url(), headers=self.auth_headers())
        except GatewayError as error:
            return HealthResult(HealthStatus.FAILED, None, error.detail)
        if not response.ok:
            detail = self.describe_http_failure(response, reply_json(response))
            return HealthResult(HealthStatus.FAILED, response.elapsed_ms, detail)
        try:
            state, detail = self.read_health(response.json())
        except (HttpError, MalformedReply) as error:
            return HealthResult(
                HealthStatus.FAILED, response.elapsed_ms, f"malformed reply: {error}"
            )
        return self.classify(state, detail, response.elapsed_ms)

    def classify(self, state: str, detail: str, latency_ms: float) -> HealthResult:
        """Map a raw gateway state to our status through the kind's state table."""
        status = self.state_table.get(state)
        if status is None:
            status, detail = HealthStatus.FAILED, f"{detail} (unknown state)"
        elif state in self.state_hints:
            detail = f"{detail}: {self.state_hints[state]}"
        return HealthResult(status, latency_ms, detail, gateway_state=state)

    async def send(self, to: str, text: str, idempotency_key: str) -> str:
        """Send a text to an E.164 number and return the gateway's message id.

        Raises GatewayError; its ``retryable`` flag is documented on the class.
        """
        digits = e164_digits(to)
        headers = {**self.auth_headers(), "Idempotency-Key": idempotency_key}
        response = await self.exchange(
            "POST", self.send_url(), headers=headers, json=self.send_body(digits, text)
        )
        if not response.ok:
            raise self.send_error(response)
        try:
            return checked_message_id(self.read_message_id(response.json()))
        except (HttpError, MalformedReply) as error:
            # The message may or may not have gone; the idempotency key makes a retry safe.
            raise GatewayError(
                f"malformed reply: {error}",
                retryable=True,
                http_status=response.status,
                in_doubt=True,
            ) from error

    async def restart(self) -> RestartResult:
        """Ask the gateway to restart the session; report every problem as not ok.

        Like health(), it never raises for gateway or transport trouble: the
        recovery loop records each attempt's outcome and backs off. An ok
        restart only means the gateway accepted it; the next probes say
        whether the session came back.
        """
        if not self.supports_restart:
            return RestartResult(False, f"{self.label} has no restart")
        try:
            response = await self.exchange("POST", self.restart_url(), headers=self.auth_headers())
        except GatewayError as error:
            return RestartResult(False, f"restart failed: {error.detail}")
        if not response.ok:
            detail = self.describe_http_failure(response, reply_json(response))
            return RestartResult(False, f"restart failed: {detail}")
        detail = f"{self.label} restarted {self.session_noun} {self.config.session!r}"
        state = self.read_restart(reply_json(response))
        return RestartResult(True, f"{detail} (state {state})" if state else detail)

    @classmethod
    def needs_relink(cls, result: HealthResult) -> bool:
        """Say whether a probe found the session logged out, so only re-linking helps.

        The recovery loop raises a 're-link' alert for these instead of
        restarting in a loop: a restart cannot log a phone back in.
        """
        return result.gateway_state in cls.relink_states

    async def qr_code(self) -> QrCode | None:
        """Fetch the QR code that re-links the session; None when this kind has none.

        Raises GatewayError when the gateway has one but cannot give it now,
        e.g. because the session is not waiting for a scan; the detail says why.
        """
        if not self.supports_qr:
            return None
        response = await self.exchange("GET", self.qr_url(), headers=self.qr_headers())
        if not response.ok:
            raise self.send_error(response)
        try:
            return read_qr_image(response.body)
        except MalformedReply as error:
            raise GatewayError(
                f"malformed QR code reply: {error}", retryable=True, http_status=response.status
            ) from error

    async def exchange(
        self,
        method: str,
        url: str,
        *,
        headers: Mapping[str, str],
        json: Any = None,
    ) -> HttpResponse:
        """Make one HTTP call, turning transport failures into retryable GatewayErrors."""
        if not self.base_url:
            # A master saved without a URL is its own fault, not the message's.
            raise GatewayError(f"{self.label} gateway has no url configured", retryable=True)
        try:
            return await self.http.request(
                method, url, headers=headers, json=json, timeout=self.timeout
            )
        # Only a connection never made proves the gateway did not take the request.
        except HttpTimeout:
            raise GatewayError(
                f"timed out after {self.timeout:g}s", retryable=True, in_doubt=True
            ) from None
        except HttpConnectionError as error:
            raise GatewayError(str(error), retryable=True, in_doubt=error.request_sent) from error
        except HttpError as error:
            raise GatewayError(f"{self.label}: {error}", retryable=True, in_doubt=True) from error

    def send_error(self, response: HttpResponse) -> GatewayError:
        """Build the error for a non-2xx reply to a send."""
        payload = reply_json(response)
        return GatewayError(
            self.describe_http_failure(response, payload),
            retryable=self.is_retryable(response.status, payload),
            http_status=response.status,
        )

    def is_retryable(self, status: int, payload: Any) -> bool:
        """Say whether a send that got this HTTP status can succeed on another attempt."""
        return status >= 500 or status in RETRYABLE_HTTP_STATUSES

    def describe_http_failure(self, response: HttpResponse, payload: Any) -> str:
        """Describe a non-2xx reply in the gateway's own words."""
        words = error_words(payload) or response.text_preview()
        prefix = f"{self.label} HTTP {response.status}"
        if response.status == 404:
            # The path names the session, so 404 means the master is misconfigured.
            noun = f"{self.session_noun} {self.config.session!r}"
            prefix = f"{self.label} {noun} not found (HTTP 404)"
        elif response.status in (401, 403):
            prefix = f"{self.label} authentication failed (HTTP {response.status})"
        elif response.status == 429:
            prefix = f"{self.label} rate limited (HTTP 429)"
        return f"{prefix}: {words}" if words else prefix

    @property
    def session_in_path(self) -> str:
        """Return the session name escaped for use as one URL path segment."""
        return quote(self.config.session, safe="")

    def default_url(self) -> str:
        """Return the base URL to use when the config leaves it blank."""
        return ""

    def restart_url(self) -> str:
        """Return the URL a restart POSTs to; kinds with ``supports_restart`` override it."""
        raise NotImplementedError(f"{self.label} has no restart")

    def read_restart(self, payload: Any) -> str:
        """Return the session state a 2xx restart reply names, or "" when it names none."""
        return ""

    def qr_url(self) -> str:
        """Return the URL the QR code is fetched from; kinds with ``supports_qr`` override it."""
        raise NotImplementedError(f"{self.label} serves no QR code")

    def qr_headers(self) -> dict[str, str]:
        """Return the headers of a QR code request."""
        return self.auth_headers()

    @abstractmethod
    def auth_headers(self) -> dict[str, str]:
        """Return the headers that authenticate every request."""

    @abstractmethod
    def health_url(self) -> str:
        """Return the URL the probe GETs."""

    @abstractmethod
    def read_health(self, payload: Any) -> tuple[str, str]:
        """Return (raw state, human detail) from a 2xx probe reply; raise MalformedReply."""

    @abstractmethod
    def send_url(self) -> str:
        """Return the URL a send POSTs to."""

    @abstractmethod
    def send_body(self, digits: str, text: str) -> dict[str, Any]:
        """Return the JSON body that sends ``text`` to the number ``digits``."""

    @abstractmethod
    def read_message_id(self, payload: Any) -> str:
        """Return the message id from a 2xx send reply; raise MalformedReply."""


def e164_digits(to: str) -> str:
    """Return the digits of an E.164 number, or raise a non-retryable GatewayError."""
    digits = to.strip().removeprefix("+")
    if not E164_DIGITS.fullmatch(digits):
        raise GatewayError(f"invalid recipient number {to!r}", retryable=False)
    return digits


def checked_message_id(message_id: str) -> str:
    """Return a message id fit to store, or raise MalformedReply.

    Real ids are short and printable (``true_971…@c.us_3EB0…``, ``wamid.HBg…``);
    anything else is no id the portal can keep, so the send counts as unanswered.
    """
    if len(message_id) > MAX_MESSAGE_ID_CHARS:
        raise MalformedReply(f"message id over {MAX_MESSAGE_ID_CHARS} characters")
    if not message_id.isprintable():
        raise MalformedReply(f"message id {clean_text(message_id, 60)!r} is not printable text")
    return message_id


def dig(payload: Any, *path: str | int) -> Any:
    """Return ``payload[path[0]][path[1]]...``, raising MalformedReply if any step is missing.

    A string step indexes an object, an integer step a list.
    """
    value = payload
    for depth, key in enumerate(path):
        if not has_step(value, key):
            raise MalformedReply(f"no {dotted(path[: depth + 1])} in reply")
        value = value[key]
    return value


def has_step(value: Any, key: str | int) -> bool:
    """Say whether ``value[key]`` exists for a JSON object key or list index."""
    if isinstance(key, int):
        return isinstance(value, list) and 0 <= key < len(value)
    return isinstance(value, dict) and key in value


def dotted(path: tuple[str | int, ...]) -> str:
    """Name a JSON path the way error details show it, e.g. ``messages.0.id``."""
    return ".".join(map(str, path))


def text_at(payload: Any, *path: str | int) -> str:
    """Return the non-empty string at ``path``, raising MalformedReply otherwise."""
    value = dig(payload, *path)
    if not isinstance(value, str) or not value:
        raise MalformedReply(f"{dotted(path)} is not a non-empty string")
    return value


def read_qr_image(body: bytes) -> QrCode:
    """Read a QR code reply: the image itself, or JSON ``{"mimetype", "data": base64}``.

    Raise MalformedReply for anything that is not a PNG or JPEG image.
    """
    if body.lstrip().startswith(b"{"):
        try:
            payload = jsonlib.loads(body)
        except ValueError:
            raise MalformedReply("body is neither an image nor JSON") from None
        mimetype = text_at(payload, "mimetype")
        try:
            data = base64.b64decode(text_at(payload, "data"), validate=True)
        except binascii.Error:
            raise MalformedReply("data is not base64") from None
        return checked_image(mimetype, data)
    mimetype = next((kind for kind, sig in IMAGE_SIGNATURES.items() if body.startswith(sig)), "")
    if not mimetype:
        raise MalformedReply(f"body is not a PNG or JPEG image ({len(body)} bytes)")
    return QrCode(mimetype, body)


def checked_image(mimetype: str, data: bytes) -> QrCode:
    """Return the image if its bytes are the PNG or JPEG its mimetype says, else raise."""
    signature = IMAGE_SIGNATURES.get(mimetype)
    if signature is None:
        raise MalformedReply(f"mimetype {mimetype!r} is not image/png or image/jpeg")
    if not data.startswith(signature):
        raise MalformedReply(f"data is not a valid {mimetype} image")
    return QrCode(mimetype, data)


def reply_json(response: HttpResponse) -> Any:
    """Return the decoded body of an error reply, or None when it is not JSON."""
    try:
        return response.json()
    except HttpError:
        return None


def error_words(payload: Any) -> str:
    """Find the human error message in an error reply of any of the three kinds.

    Cloud API: ``{"error": {"message": ...}}``; WAHA (NestJS):
    ``{"message": ...}`` or ``{"error": "..."}``; Evolution:
    ``{"response": {"message": [...]}}``.
    """
    if not isinstance(payload, dict):
        return ""
    error, response = payload.get("error"), payload.get("response")
    # Most specific first: NestJS and Evolution put a generic "Not Found" in "error".
    candidates = (
        error.get("message") if isinstance(error, dict) else None,
        response.get("message") if isinstance(response, dict) else None,
        payload.get("message"),
        error,
    )
    return next(filter(None, map(flatten_words, candidates)), "")


def flatten_words(value: Any) -> str:
    """Join a message that may be a string, a list of strings or nested JSON."""
    if isinstance(value, str):
        return value.strip()
    if isinstance(value, list):
        return "; ".join(filter(None, (flatten_words(item) for item in value)))
    if isinstance(value, dict):
        return ", ".join(f"{key}={item}" for key, item in value.items())
    return ""
