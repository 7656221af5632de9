"""The dashboard's websocket: a full render on connect, then the parts that change.

Thin on purpose: the process's feed (``monitoring.live.feed``) notices
changes and reads the dashboard; this consumer renders it for its user and
sends what differs from what that browser already shows.
"""

from __future__ import annotations

import asyncio
import logging
from urllib.parse import parse_qs

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncWebsocketConsumer
from django.conf import settings
from django.http import HttpRequest
from django.middleware.csrf import CSRF_ALLOWED_CHARS, CSRF_SECRET_LENGTH, get_token

from monitoring.live.dashboard import Dashboard
from monitoring.live.feed import Feed, feed
from monitoring.live.fragments import Audience, Screen

logger = logging.getLogger(__name__)

VIEW = "masters.view_master"


class DashboardConsumer(AsyncWebsocketConsumer):
    """One open dashboard. Refuses strangers and users who may not see the masters."""

    # No channel layer: the feed reaches this process's sockets directly. With
    # one, every socket would hold a blocking Redis read of its own for nothing
    # (and with redis-py 8's 5 s socket timeout, channels-redis 4.3 drops it).
    channel_layer_alias = None
    feed: Feed | None = None
    pump: asyncio.Task | None = None

    async def connect(self) -> None:
        user = self.scope.get("user")
        if user is None or not user.is_authenticated:
            await self.close()  # before accept: the handshake is refused (HTTP 403)
            return
        audience = await database_sync_to_async(audience_for)(self.scope, user)
        if audience is None:
            await self.close()
            return
        self.screen = Screen(audience)
        self.latest: Dashboard | None = None
        self.wake = asyncio.Event()
        await self.accept()
        self.feed = feed()
        self.feed.join(self)
        self.offer(await self.feed.read())
        self.pump = asyncio.get_running_loop().create_task(self.send_updates())

    async def disconnect(self, code: int) -> None:
        if self.pump is not None:
            self.pump.cancel()
            await asyncio.gather(self.pump, return_exceptions=True)
        if self.feed is not None:
            await self.feed.leave(self)

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        """Ignore what the browser sends: this socket only pushes."""

    def offer(self, dashboard: Dashboard) -> None:
        """Keep the newest dashboard for the next send (called by the feed)."""
        if self.latest is None or dashboard.version > self.latest.version:
            self.latest = dashboard
            self.wake.set()

    async def send_updates(self) -> None:
        """Send the parts that changed whenever a newer dashboard arrives; coalesce bursts."""
        while True:
            await self.wake.wait()
            self.wake.clear()
            try:
                frames = await self.feed.db(self.screen.update, self.latest)
            except Exception:
                # Close with "internal error": the browser reconnects and starts afresh.
                logger.exception("dashboard: cannot render an update")
                await self.close(code=1011)
                return
            for frame in frames:
                await self.send(text_data=frame)


def audience_for(scope: dict, user) -> Audience | None:
    """Return who this socket renders for, or None if they may not see the dashboard."""
    # has_perm caches every permission of the user: rendering asks no more queries.
    if not user.has_perm(VIEW):
        return None
    return Audience(user=user, csrf_token=csrf_token(scope), after=after_id(scope))


def csrf_token(scope: dict) -> str:
    """A CSRF token for the forms in pushed parts, from the session's CSRF cookie.

    Masked once per socket, so that unchanged parts render the same.
    """
    request = HttpRequest()
    secret = scope.get("cookies", {}).get(settings.CSRF_COOKIE_NAME, "")
    if len(secret) == CSRF_SECRET_LENGTH and set(secret) <= set(CSRF_ALLOWED_CHARS):
        request.META["CSRF_COOKIE"] = secret
    return get_token(request)


def after_id(scope: dict) -> int | None:
    """The newest event id the page showed (``?after=``), None if missing or malformed."""
    values = parse_qs(scope.get("query_string", b"").decode("latin-1")).get("after")
    try:
        return max(0, int(values[0])) if values else None
    except ValueError:
        return None
