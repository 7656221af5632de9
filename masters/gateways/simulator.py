"""A gateway simulator that speaks the WAHA HTTP protocol, with controls to break it.

The demo (`make run`), the tests and the benchmarks drive it over real HTTP, so
it keeps everything in memory, never touches the disk per request, and serves a
few thousand requests per second. Each session has a mode (working, failed,
hang, slow, flap, ...) switched by unauthenticated `/_sim/` control endpoints:
bind it to 127.0.0.1 only. It also answers WAHA's restart and QR code requests,
so recovery can be shown and tested: a crashed session that a restart fixes,
and a logged-out one that only re-linking (scanning the QR code) fixes.
See docs/SIMULATOR.md.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import logging
import re
import secrets
import struct
import threading
import time
import zlib
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from functools import lru_cache, partial
from typing import Any, TypeVar

from aiohttp import web

logger = logging.getLogger(__name__)

T = TypeVar("T")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

DEFAULT_DELAY_MS = 2000
DEFAULT_PERIOD_MS = 3000
# How long a restarted session reports STARTING before it is WORKING again.
DEFAULT_RESTART_MS = 1000
# Slow handlers still sleeping after this long are cancelled at shutdown.
SHUTDOWN_TIMEOUT = 1.0
# Benchmarks open many connections at once; the default backlog (128) drops some.
BACKLOG = 1024

SESSION_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")
# ASCII digits only: \d would accept other scripts' digits, which WhatsApp does not.
CHAT_ID = re.compile(r"[0-9]{6,15}@c\.us")


class Mode(StrEnum):
    WORKING = "working"
    FAILED = "failed"
    STOPPED = "stopped"
    STARTING = "starting"
    SCAN_QR = "scan_qr"
    HANG = "hang"
    SLOW = "slow"
    FLAP = "flap"
    BROKEN_SENDS = "broken_sends"
    # Set by a restart, never by a control: STARTING for restart_ms, then working.
    RESTARTING = "restarting"


# The WAHA session status each mode reports. Hang has none (it never answers);
# flap's depends on the time (see flap_status).
STATUS_BY_MODE: dict[Mode, str | None] = {
    Mode.WORKING: "WORKING",
    Mode.FAILED: "FAILED",
    Mode.STOPPED: "STOPPED",
    Mode.STARTING: "STARTING",
    Mode.SCAN_QR: "SCAN_QR_CODE",
    Mode.HANG: None,
    Mode.SLOW: "WORKING",
    Mode.BROKEN_SENDS: "WORKING",
    Mode.RESTARTING: "STARTING",
}

# The verbs of POST /_sim/sessions/{session}/{action} and the mode each sets.
ACTIONS: dict[str, Mode] = {
    "fail": Mode.FAILED,
    # The session crashed; a restart fixes it (so does fail: they are one mode).
    "crash": Mode.FAILED,
    "stop": Mode.STOPPED,
    "starting": Mode.STARTING,
    "scan_qr": Mode.SCAN_QR,
    # The phone logged the session out; only re-linking (link) fixes it, not a restart.
    "logout": Mode.SCAN_QR,
    "hang": Mode.HANG,
    "slow": Mode.SLOW,
    "flap": Mode.FLAP,
    "break_sends": Mode.BROKEN_SENDS,
    "recover": Mode.WORKING,
}


class Reject(Exception):
    """Answer the request with this status and a JSON error body."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(slots=True)
class Session:
    name: str
    mode: Mode = Mode.WORKING
    delay_ms: int = DEFAULT_DELAY_MS
    period_ms: int = DEFAULT_PERIOD_MS
    restart_ms: int = DEFAULT_RESTART_MS
    mode_since: float = 0.0
    # Restart requests received, answered or refused; recovery tests count attempts.
    restarts: int = 0
    # False makes every restart answer 500: a gateway whose restart is broken.
    restartable: bool = True
    # Requests held by hang right now; tests wait on it instead of sleeping.
    waiting: int = 0
    # Set when the session leaves hang; a fresh one is made when it re-enters.
    release: asyncio.Event = field(default_factory=asyncio.Event)


@dataclass(slots=True, frozen=True)
class Delivery:
    session: str
    chat_id: str
    text: str
    id: str
    idempotency_key: str | None
    received_at: float


def flap_status(started_at: float, period_ms: int, now: float) -> str:
    """Return FAILED in the first period after flapping began, WORKING in the next, and so on."""
    periods = int((now - started_at) * 1000 // period_ms)
    return "FAILED" if periods % 2 == 0 else "WORKING"


def restart_done(restarted_at: float, restart_ms: int, now: float) -> bool:
    """Say whether a session restarted at ``restarted_at`` has finished starting."""
    return (now - restarted_at) * 1000 >= restart_ms


def phone_digits(session: str) -> str:
    """Return a stable fictional (555) phone number for a session name."""
    return f"1555{zlib.crc32(session.encode()) % 10_000_000:07d}"


class SimulatorState:
    """Hold the sessions, their modes and the delivery log; touch it only from the server's loop."""

    def __init__(
        self, sessions: Iterable[str] = (), clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.clock = clock
        self.sessions: dict[str, Session] = {}
        self.deliveries: list[Delivery] = []
        # (session, Idempotency-Key) -> the delivery it created. Unbounded on
        # purpose: it grows no faster than the delivery log, which is kept whole.
        self.accepted: dict[tuple[str, str], Delivery] = {}
        self.closing = False
        for name in sessions:
            self.add_session(name)

    def add_session(self, name: str) -> tuple[Session, bool]:
        """Add a working session unless it exists; return it and whether it is new."""
        if not isinstance(name, str) or not SESSION_NAME.fullmatch(name):
            raise ValueError(f"session name {name!r}: use 1-64 letters, digits, '_', '.' or '-'")
        if name in self.sessions:
            return self.sessions[name], False
        session = Session(name=name, mode_since=self.clock())
        self.sessions[name] = session
        return session, True

    def get(self, name: str) -> Session:
        """Return the named session or reject the request with 404."""
        session = self.sessions.get(name)
        if session is None:
            raise Reject(404, f"Session {name!r} does not exist")
        return session

    def set_mode(
        self,
        name: str,
        mode: Mode,
        *,
        delay_ms: int | None = None,
        period_ms: int | None = None,
        restart_ms: int | None = None,
    ) -> Session:
        """Switch a session's mode, releasing requests held by hang when it leaves hang."""
        session = self.get(name)
        if mode is Mode.HANG and session.release.is_set():
            session.release = asyncio.Event()
        session.mode = mode
        session.mode_since = self.clock()
        if delay_ms is not None:
            session.delay_ms = delay_ms
        if period_ms is not None:
            session.period_ms = period_ms
        if restart_ms is not None:
            session.restart_ms = restart_ms
        if mode is not Mode.HANG:
            session.release.set()
        logger.info("Simulator session %s is now %s", name, mode)
        return session

    def status(self, session: Session) -> str | None:
        """Return the WAHA status the session reports now (None while it hangs).

        A restarted session that has finished starting becomes working here,
        on the first look after restart_ms, so the clock alone drives it.
        """
        if session.mode is Mode.FLAP:
            return flap_status(session.mode_since, session.period_ms, self.clock())
        if session.mode is Mode.RESTARTING and restart_done(
            session.mode_since, session.restart_ms, self.clock()
        ):
            session.mode = Mode.WORKING
            session.mode_since += session.restart_ms / 1000
            logger.info("Simulator session %s is working again after its restart", session.name)
        return STATUS_BY_MODE[session.mode]

    def restart(self, session: Session) -> None:
        """Restart a session as WAHA would: STARTING, then WORKING, unless it is logged out.

        A logged-out session (scan_qr) comes back still waiting for its QR
        code; an unrestartable one refuses with 500. Both still count.
        """
        session.restarts += 1
        if not session.restartable:
            raise Reject(500, "Internal server error: the simulator was told to refuse restarts")
        if session.mode is Mode.SCAN_QR:
            logger.info("Simulator session %s restarted but still needs re-linking", session.name)
            return
        self.set_mode(session.name, Mode.RESTARTING)

    def link(self, session: Session) -> None:
        """Play an operator scanning the QR code: a session waiting for it is working again."""
        status = self.status(session)
        if session.mode is not Mode.SCAN_QR:
            raise Reject(409, f"session is not waiting for a QR scan (status {status})")
        self.set_mode(session.name, Mode.WORKING)

    def set_restartable(self, session: Session, restartable: bool) -> None:
        """Make the session's restarts succeed or answer 500 from now on."""
        session.restartable = restartable

    def accept(
        self, session: str, chat_id: str, text: str, key: str | None
    ) -> tuple[Delivery, bool]:
        """Record a message once per idempotency key; return its delivery and whether it is new."""
        if key is not None and (session, key) in self.accepted:
            return self.accepted[(session, key)], False
        delivery = Delivery(
            session=session,
            chat_id=chat_id,
            text=text,
            id=f"true_{chat_id}_{secrets.token_hex(10).upper()}",
            idempotency_key=key,
            received_at=time.time(),
        )
        self.deliveries.append(delivery)
        if key is not None:
            self.accepted[(session, key)] = delivery
        return delivery, True

    def messages(self, session: str | None = None) -> list[Delivery]:
        """Return the delivery log, oldest first, optionally for one session."""
        if session is None:
            return list(self.deliveries)
        return [d for d in self.deliveries if d.session == session]

    def clear_messages(self) -> int:
        """Forget every delivery and idempotency key; return how many deliveries there were."""
        count = len(self.deliveries)
        self.deliveries.clear()
        self.accepted.clear()
        return count

    def close(self) -> None:
        """Release every request held by hang so the server can shut down."""
        self.closing = True
        for session in self.sessions.values():
            session.release.set()

    def describe(self, session: Session) -> dict[str, Any]:
        """Return the session's state as the control endpoints show it."""
        # First: a restarted session that has finished starting turns working here.
        status = self.status(session)
        return {
            "name": session.name,
            "mode": str(session.mode),
            "status": status,
            "delay_ms": session.delay_ms,
            "period_ms": session.period_ms,
            "waiting": session.waiting,
            "restart_ms": session.restart_ms,
            "restarts": session.restarts,
            "restartable": session.restartable,
        }


STATE = web.AppKey("state", SimulatorState)


# --- WAHA API -------------------------------------------------------------------


async def hold(state: SimulatorState, session: Session) -> None:
    """Wait as the session's mode says: until released while hung, delay_ms while slow."""
    if session.mode is Mode.HANG:
        session.waiting += 1
        try:
            # Re-read the mode and the event each time: hang may be left and re-entered.
            while session.mode is Mode.HANG and not state.closing:
                await session.release.wait()
        finally:
            session.waiting -= 1
        if state.closing:
            raise Reject(503, "The simulator is shutting down")
    if session.mode is Mode.SLOW:
        await asyncio.sleep(session.delay_ms / 1000)


def session_info(state: SimulatorState, session: Session) -> dict[str, Any]:
    """Return the session as WAHA describes it in GET /api/sessions/{session}."""
    status = state.status(session)
    # Real WAHA only knows who it is logged in as while WORKING.
    me = {"id": f"{phone_digits(session.name)}@c.us", "pushName": session.name}
    return {
        "name": session.name,
        "status": status,
        "config": {},
        "me": me if status == "WORKING" else None,
    }


async def session_status(request: web.Request) -> web.Response:
    """Answer WAHA's GET /api/sessions/{session}."""
    state = request.app[STATE]
    session = state.get(request.match_info["session"])
    await hold(state, session)
    return web.json_response(session_info(state, session))


async def restart_session(request: web.Request) -> web.Response:
    """Answer WAHA's POST /api/sessions/{session}/restart with the session, now STARTING."""
    state = request.app[STATE]
    session = state.get(request.match_info["session"])
    await hold(state, session)
    state.restart(session)
    return web.json_response(session_info(state, session), status=201)


async def auth_qr(request: web.Request) -> web.Response:
    """Answer WAHA's GET /api/{session}/auth/qr: the image, JSON base64, or ?format=raw."""
    state = request.app[STATE]
    session = state.get(request.match_info["session"])
    await hold(state, session)
    status = state.status(session)
    if status != "SCAN_QR_CODE":
        raise Reject(422, f"session is not waiting for a QR scan (status {status})")
    value = qr_value(session.name)
    if request.query.get("format") == "raw":
        return web.json_response({"value": value})
    png = qr_png(value)
    if "application/json" in request.headers.get("Accept", ""):
        return web.json_response(
            {"mimetype": "image/png", "data": base64.b64encode(png).decode("ascii")}
        )
    return web.Response(body=png, content_type="image/png")


# --- A QR code image without a QR library ----------------------------------------------
#
# The portal only shows the image; nobody scans it. So it is a QR-like pattern
# (three finder squares, the rest bits of a hash of the session) encoded as a
# real PNG with zlib and struct, which keeps the simulator free of dependencies.

QR_MODULES = 25
QR_SCALE = 4
QR_QUIET_ZONE = 4
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def qr_value(session: str) -> str:
    """Return the text the session's QR code stands for (what ?format=raw gives)."""
    return f"ha-simulator:{session}:{phone_digits(session)}"


def qr_modules(value: str) -> list[list[bool]]:
    """Return a QR_MODULES-square grid of dark (True) modules that looks like a QR code."""
    seed = hashlib.sha256(value.encode()).digest() * 3  # 768 bits for 625 modules
    bits = int.from_bytes(seed, "big")
    size = QR_MODULES
    grid = [[bool(bits >> (row * size + col) & 1) for col in range(size)] for row in range(size)]
    for top, left in ((0, 0), (0, size - 7), (size - 7, 0)):
        # Clear the finder and the one-module light border around it, then draw it.
        for row in range(max(top - 1, 0), min(top + 8, size)):
            for col in range(max(left - 1, 0), min(left + 8, size)):
                grid[row][col] = False
        for row in range(7):
            for col in range(7):
                grid[top + row][left + col] = max(abs(row - 3), abs(col - 3)) != 2
    return grid


def png_chunk(kind: bytes, data: bytes) -> bytes:
    """Return one PNG chunk: length, type, data and the CRC of type and data."""
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_grey(rows: list[bytes]) -> bytes:
    """Encode rows of 8-bit grey pixels (all the same length) as a PNG."""
    header = struct.pack(">IIBBBBB", len(rows[0]), len(rows), 8, 0, 0, 0, 0)
    pixels = b"".join(b"\x00" + row for row in rows)  # filter type 0 on every row
    return b"".join(
        (
            PNG_SIGNATURE,
            png_chunk(b"IHDR", header),
            png_chunk(b"IDAT", zlib.compress(pixels, 9)),
            png_chunk(b"IEND", b""),
        )
    )


@lru_cache(maxsize=256)
def qr_png(value: str) -> bytes:
    """Return a black-on-white PNG of the QR-like pattern for ``value``, with a quiet zone."""
    blank, margin = [False] * QR_MODULES, [False] * QR_QUIET_ZONE
    grid = [blank] * QR_QUIET_ZONE + qr_modules(value) + [blank] * QR_QUIET_ZONE
    rows: list[bytes] = []
    for modules in grid:
        pixels = margin + modules + margin
        line = bytes(0 if dark else 255 for dark in pixels for _ in range(QR_SCALE))
        rows += [line] * QR_SCALE
    return png_grey(rows)


def send_problem(body: dict[str, Any]) -> str | None:
    """Return what is wrong with a sendText body, naming the field, or None."""
    session = body.get("session")
    if not isinstance(session, str) or not session:
        return "session: must be a non-empty string"
    chat_id = body.get("chatId")
    if not isinstance(chat_id, str) or not CHAT_ID.fullmatch(chat_id):
        return "chatId: must be 6 to 15 digits followed by @c.us"
    text = body.get("text")
    if not isinstance(text, str) or not text:
        return "text: must be a non-empty string"
    return None


async def send_text(request: web.Request) -> web.Response:
    """Answer WAHA's POST /api/sendText, delivering each idempotency key once."""
    state = request.app[STATE]
    body = await read_json(request)
    if (problem := send_problem(body)) is not None:
        raise Reject(400, problem)
    session = state.get(body["session"])
    key = request.headers.get("Idempotency-Key") or None
    if session.mode is Mode.SLOW:
        # A slow gateway still sends what it was given after its client
        # stopped waiting (real WAHA does): that is what leaves a timed-out
        # send in doubt. Hang, by contrast, never reaches WhatsApp.
        return await asyncio.shield(deliver_after_hold(state, session, body, key))
    return await deliver_after_hold(state, session, body, key)


async def deliver_after_hold(
    state: SimulatorState, session: Session, body: dict[str, Any], key: str | None
) -> web.Response:
    await hold(state, session)
    status = state.status(session)
    if status != "WORKING":
        raise Reject(
            422,
            "Session status is not as expected: try again later or restart the session "
            f"(status {status})",
        )
    if session.mode is Mode.BROKEN_SENDS:
        raise Reject(500, "Internal server error: the simulator was told to break sends")
    delivery, created = state.accept(session.name, body["chatId"], body["text"], key)
    return web.json_response(
        {
            "id": delivery.id,
            "timestamp": int(delivery.received_at),
            "body": delivery.text,
            "to": delivery.chat_id,
        },
        status=201 if created else 200,
    )


# --- Request bodies and controls ----------------------------------------------------


async def read_json(request: web.Request, *, optional: bool = False) -> dict[str, Any]:
    """Return the request's JSON object body ({} when optional and empty) or reject with 400."""
    raw = await request.read()
    if optional and not raw.strip():
        return {}
    try:
        body = json.loads(raw)
    except ValueError:
        raise Reject(400, "Body must be a JSON object") from None
    if not isinstance(body, dict):
        raise Reject(400, "Body must be a JSON object")
    return body


def int_param(body: dict[str, Any], name: str, default: int, low: int, high: int) -> int:
    """Return body[name] as an int in [low, high], or reject with 400 naming it."""
    value = body.get(name, default)
    # bool is an int in Python, but {"delay_ms": true} is a caller's mistake.
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise Reject(400, f"{name}: must be an integer from {low} to {high}")
    return value


# The verbs of POST /_sim/sessions/{session}/{action} that change something else than the mode.
OTHER_ACTIONS: dict[str, Callable[[SimulatorState, Session], None]] = {
    "link": SimulatorState.link,
    "unrestartable": partial(SimulatorState.set_restartable, restartable=False),
    "restartable": partial(SimulatorState.set_restartable, restartable=True),
}


async def control_session(request: web.Request) -> web.Response:
    """Switch a session's mode or recovery behaviour: POST /_sim/sessions/{session}/{action}."""
    state = request.app[STATE]
    session = state.get(request.match_info["session"])
    action = request.match_info["action"]
    mode = ACTIONS.get(action)
    if mode is None and action not in OTHER_ACTIONS:
        verbs = ", ".join([*ACTIONS, *OTHER_ACTIONS])
        raise Reject(400, f"Unknown action {action!r}: use one of {verbs}")
    body = await read_json(request, optional=True)
    if mode is None:
        OTHER_ACTIONS[action](state, session)
        return web.json_response(state.describe(session))
    params: dict[str, int] = {}
    if mode is Mode.SLOW:
        params["delay_ms"] = int_param(body, "delay_ms", DEFAULT_DELAY_MS, 0, 600_000)
    if mode is Mode.FLAP:
        params["period_ms"] = int_param(body, "period_ms", DEFAULT_PERIOD_MS, 1, 3_600_000)
    if "restart_ms" in body:
        params["restart_ms"] = int_param(body, "restart_ms", DEFAULT_RESTART_MS, 0, 600_000)
    state.set_mode(session.name, mode, **params)
    return web.json_response(state.describe(session))


async def add_session(request: web.Request) -> web.Response:
    """Add a working session: POST /_sim/sessions {"name": ...}."""
    state = request.app[STATE]
    body = await read_json(request)
    try:
        session, created = state.add_session(body.get("name"))
    except ValueError:
        raise Reject(400, "name: use 1-64 letters, digits, '_', '.' or '-'") from None
    return web.json_response(state.describe(session), status=201 if created else 200)


async def list_sessions(request: web.Request) -> web.Response:
    """List every session with its mode and status: GET /_sim/sessions."""
    state = request.app[STATE]
    return web.json_response([state.describe(s) for s in state.sessions.values()])


async def list_messages(request: web.Request) -> web.Response:
    """Return the delivery log: GET /_sim/messages[?session=s]."""
    state = request.app[STATE]
    name = request.query.get("session")
    if name is not None:
        state.get(name)
    return web.json_response([asdict(d) for d in state.messages(name)])


async def clear_messages(request: web.Request) -> web.Response:
    """Empty the delivery log and forget idempotency keys: DELETE /_sim/messages."""
    return web.json_response({"cleared": request.app[STATE].clear_messages()})


async def health(request: web.Request) -> web.Response:
    """Say the simulator itself is up: GET /_sim/health."""
    return web.json_response({"status": "ok"})


# --- The application and ways to run it ---------------------------------------------


def error_middleware(api_key: str) -> Callable[[web.Request, Handler], Awaitable[Any]]:
    """Return a middleware that checks X-Api-Key on /api/ and turns Reject into JSON."""
    expected = api_key.encode()

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            if api_key and request.path.startswith("/api/"):
                given = request.headers.get("X-Api-Key", "").encode("utf-8", "surrogateescape")
                if not hmac.compare_digest(given, expected):
                    raise Reject(401, "X-Api-Key: missing or wrong")
            return await handler(request)
        except Reject as reject:
            return web.json_response({"error": reject.message}, status=reject.status)

    return middleware


async def release_held(app: web.Application) -> None:
    """Let hung requests finish so shutdown does not wait for them."""
    app[STATE].close()


def build_app(
    sessions: list[str], api_key: str = "", *, clock: Callable[[], float] = time.monotonic
) -> web.Application:
    """Build the simulator's aiohttp application with these sessions, all working."""
    app = web.Application(middlewares=[error_middleware(api_key)])
    app[STATE] = SimulatorState(sessions, clock=clock)
    app.on_shutdown.append(release_held)
    app.router.add_get("/api/sessions/{session}", session_status)
    app.router.add_post("/api/sessions/{session}/restart", restart_session)
    app.router.add_get("/api/{session}/auth/qr", auth_qr)
    app.router.add_post("/api/sendText", send_text)
    app.router.add_get("/_sim/health", health)
    app.router.add_get("/_sim/sessions", list_sessions)
    app.router.add_post("/_sim/sessions", add_session)
    app.router.add_post("/_sim/sessions/{session}/{action}", control_session)
    app.router.add_get("/_sim/messages", list_messages)
    app.router.add_delete("/_sim/messages", clear_messages)
    return app


def url_of(runner: web.AppRunner) -> str:
    """Return the http:// URL the runner's first socket listens on."""
    host, port = runner.addresses[0][:2]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


async def serve(
    app: web.Application,
    host: str,
    port: int,
    *,
    stopping: asyncio.Event,
    on_ready: Callable[[str], None],
) -> None:
    """Serve app on host:port (0 picks a free port) until stopping is set.

    on_ready gets the URL once the socket listens; the management command and
    SimulatorServer both rely on it to tell their callers where to connect.
    """
    # No access log: a line per request would cap benchmarks and flood the demo.
    # Handler cancellation frees hung handlers whose client gave up.
    runner = web.AppRunner(
        app, access_log=None, handler_cancellation=True, shutdown_timeout=SHUTDOWN_TIMEOUT
    )
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port, backlog=BACKLOG).start()
        on_ready(url_of(runner))
        await stopping.wait()
    finally:
        await runner.cleanup()


class SimulatorServer:
    """Run the simulator in a background thread with its own event loop, for tests and benchmarks.

    Read `state` freely for assertions; change it over HTTP or through `call`,
    because asyncio events must be set from the loop that waits on them.
    """

    def __init__(
        self,
        sessions: Iterable[str] = ("default",),
        api_key: str = "",
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.app = build_app(list(sessions), api_key, clock=clock)
        self.state = self.app[STATE]
        self.host = host
        self.port = port
        self.url = ""
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None
        self._ready = threading.Event()
        self._failure: Exception | None = None

    def start(self, timeout: float = 10.0) -> SimulatorServer:
        """Start serving and return once the socket listens."""
        self._thread = threading.Thread(target=self._run, name="ha-simulator", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout):
            raise TimeoutError(f"The simulator did not start within {timeout} s")
        if self._failure is not None:
            self._thread.join()
            raise self._failure
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Release hung requests, shut the server down and join its thread."""
        if self._thread is None or self._loop is None or self._stopping is None:
            return
        if self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._stopping.set)
            self._thread.join(timeout)
        self._thread = None

    def call(self, func: Callable[..., T], *args: Any, timeout: float = 10.0, **kwargs: Any) -> T:
        """Run func(*args, **kwargs) on the server's loop and return its result."""
        if self._loop is None:
            raise RuntimeError("The simulator is not running")

        async def run() -> T:
            return func(*args, **kwargs)

        return asyncio.run_coroutine_threadsafe(run(), self._loop).result(timeout)

    def _run(self) -> None:
        asyncio.run(self._serve())

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stopping = asyncio.Event()
        try:
            await serve(
                self.app, self.host, self.port, stopping=self._stopping, on_ready=self._on_ready
            )
        except Exception as exc:
            # Raised in the caller's thread by start(); a failure after start is logged.
            if self._ready.is_set():
                logger.exception("The simulator at %s stopped with an error", self.url)
            self._failure = exc
            self._ready.set()

    def _on_ready(self, url: str) -> None:
        self.url = url
        self._ready.set()

    def __enter__(self) -> SimulatorServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
