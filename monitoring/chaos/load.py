"""The bot under test: messages posted through the API at a steady rate, retried until accepted.

Every message has an idempotency key of its own. A request that fails
(connection refused or reset, a timeout, a 5xx, a 429) is sent again with
the same keys, to the other web process, as a client behind a load
balancer would: a message counts as submitted once the API accepted it
(202, or 200 for a replay). The schedule never waits for a slow request,
so a fault shows as a backlog of retries, not as a lower offered rate.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import random
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from ha_portal.lib.http import HttpClient, HttpError, HttpTimeout

logger = logging.getLogger(__name__)

TICK_S = 0.5
# Every SINGLE_EVERY-th message goes alone (POST /messages), the rest in one batch a tick.
SINGLE_EVERY = 10
REQUEST_TIMEOUT_S = 15.0
RETRY_BASE_S = 0.25
RETRY_MAX_S = 5.0
# A request still failing after this long is given up: its messages are unconfirmed.
GIVE_UP_S = 300.0
IN_FLIGHT = 32
CONTACTS = 2_000
RETRYABLE_4XX = {408, 429}


@dataclass
class Submission:
    """One message the bot wants sent, and how its submission went."""

    key: str
    to: str
    text: str
    single: bool
    first_try_at: float  # time.time()
    accepted_at: float | None = None
    message_id: int | None = None
    attempts: int = 0
    refused: str = ""  # a definitive 4xx: the client stops trying

    @property
    def accepted(self) -> bool:
        return self.accepted_at is not None


@dataclass
class LoadReport:
    """What the load generator saw, for the verdict."""

    submissions: list[Submission] = field(default_factory=list)
    requests: int = 0
    retried_requests: int = 0
    errors: Counter = field(default_factory=Counter)  # "HTTP 500", "connection refused", ...


def contact(index: int) -> str:
    """Return a valid E.164 mobile number (UAE or Saudi), the same for the same index."""
    return f"+{'97150' if index % 2 else '96650'}{index:07d}"


class LoadGenerator:
    """Post ``rate`` messages a second for ``duration_s`` seconds through the API."""

    def __init__(
        self,
        http: HttpClient,
        web_urls: Callable[[], Sequence[str]],
        token: str,
        *,
        rate: float,
        duration_s: float,
        prefix: str,
        seed: int,
    ) -> None:
        self.http, self.web_urls = http, web_urls
        self.headers = {"Authorization": f"Bearer {token}"}
        self.rate, self.duration_s, self.prefix = rate, duration_s, prefix
        self.rng = random.Random(seed)
        self.report = LoadReport()
        self.slots = asyncio.Semaphore(IN_FLIGHT)
        self.turn = 0  # round robin over the web processes

    async def run(self) -> LoadReport:
        """Post on schedule until the duration is over, then wait for every retry to settle."""
        started = time.monotonic()
        pending: set[asyncio.Task] = set()
        owed = 0.0
        tick = 0
        while time.monotonic() - started < self.duration_s:
            owed += self.rate * TICK_S
            count, owed = int(owed), owed - int(owed)
            for request in self.requests_for(self.new_submissions(count)):
                task = asyncio.create_task(self.submit(request))
                pending.add(task)
                task.add_done_callback(pending.discard)
            tick += 1
            # On the clock, not after the work: a slow tick does not slow the rate.
            await asyncio.sleep(max(0.0, started + tick * TICK_S - time.monotonic()))
        if pending:
            await asyncio.gather(*pending)
        return self.report

    def new_submissions(self, count: int) -> list[Submission]:
        now = time.time()
        made = []
        for _ in range(count):
            seq = len(self.report.submissions) + 1
            to = contact(self.rng.randrange(CONTACTS))
            key = f"{self.prefix}-{seq:07d}"
            made.append(Submission(key, to, f"chaos {key}", seq % SINGLE_EVERY == 0, now))
            self.report.submissions.append(made[-1])
        return made

    @staticmethod
    def requests_for(submissions: list[Submission]) -> list[list[Submission]]:
        """One request per single message, one batch for the rest of the tick."""
        batch = [s for s in submissions if not s.single]
        return [[s] for s in submissions if s.single] + ([batch] if batch else [])

    async def submit(self, request: list[Submission]) -> None:
        """Post until accepted, refused, or GIVE_UP_S; retries keep the keys."""
        deadline = time.monotonic() + GIVE_UP_S
        for attempt in itertools.count():
            if attempt:
                self.report.retried_requests += 1
                delay = min(RETRY_MAX_S, RETRY_BASE_S * 2 ** min(attempt, 10))
                await asyncio.sleep(self.rng.uniform(delay / 2, delay))
            async with self.slots:
                done = await self.post_once(request)
            if done or time.monotonic() >= deadline:
                return

    async def post_once(self, request: list[Submission]) -> bool:
        """One attempt; return whether the messages' fate is settled (accepted or refused)."""
        urls = self.web_urls()
        base = urls[self.turn % len(urls)]
        self.turn += 1
        single = request[0].single
        url = f"{base}/api/v1/messages" + ("" if single else "/batch")
        bodies = [{"to": s.to, "text": s.text, "idempotency_key": s.key} for s in request]
        for submission in request:
            submission.attempts += 1
        self.report.requests += 1
        try:
            response = await self.http.request(
                "POST",
                url,
                headers=self.headers,
                json=bodies[0] if single else {"messages": bodies},
                timeout=REQUEST_TIMEOUT_S,
            )
        except HttpTimeout:
            self.report.errors["timeout"] += 1
            return False
        except HttpError as error:
            self.report.errors[error_kind(str(error))] += 1
            return False
        if response.status in (200, 202):
            self.accept(request, response.json())
            return True
        self.report.errors[f"HTTP {response.status}"] += 1
        if response.status >= 500 or response.status in RETRYABLE_4XX:
            return False
        for submission in request:
            submission.refused = f"HTTP {response.status}: {response.text_preview(200)}"
        return True

    @staticmethod
    def accept(request: list[Submission], body: dict) -> None:
        now = time.time()
        ids = [body["id"]] if "id" in body else [item["id"] for item in body["results"]]
        for submission, message_id in zip(request, ids, strict=True):
            submission.accepted_at, submission.message_id = now, message_id


def error_kind(text: str) -> str:
    """Name an HTTP error's kind, so that errors of one kind count together."""
    lowered = text.lower()
    for kind in ("refused", "reset", "disconnected", "closed"):
        if kind in lowered:
            return f"connection {kind}"
    return text.split(":")[0][:60]
