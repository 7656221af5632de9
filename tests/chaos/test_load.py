"""The chaos bot: a steady rate through the API, and retries that keep the idempotency keys."""

from __future__ import annotations

import asyncio

from aiohttp import web

from ha_portal.lib.http import HttpClient
from monitoring.chaos.faults import postgres_cluster, redis_commands
from monitoring.chaos.load import SINGLE_EVERY, LoadGenerator


class FlakyApi:
    """An API that answers 500 the first time it sees a request's keys, and accepts the second."""

    def __init__(self) -> None:
        self.keys: list[tuple[str, ...]] = []
        self.next_id = 0

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.json()
        items = body.get("messages", [body])
        keys = tuple(item["idempotency_key"] for item in items)
        self.keys.append(keys)
        if self.keys.count(keys) == 1:
            return web.json_response({"error": "database unavailable"}, status=500)
        ids = list(range(self.next_id, self.next_id + len(items)))
        self.next_id += len(items)
        if "messages" in body:
            return web.json_response({"results": [{"id": i} for i in ids]}, status=202)
        return web.json_response({"id": ids[0]}, status=202)


async def load_through(api: FlakyApi, rate: float, seconds: float):
    app = web.Application()
    app.router.add_post("/api/v1/messages", api.handle)
    app.router.add_post("/api/v1/messages/batch", api.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    url = f"http://127.0.0.1:{runner.addresses[0][1]}"
    try:
        async with HttpClient() as http:
            generator = LoadGenerator(
                http, lambda: [url], "token", rate=rate, duration_s=seconds, prefix="t", seed=1
            )
            return await generator.run()
    finally:
        await runner.cleanup()


def test_every_message_is_accepted_after_retries_with_the_same_keys():
    api = FlakyApi()

    report = asyncio.run(load_through(api, rate=40, seconds=1.0))

    assert len(report.submissions) == 40
    assert all(s.accepted and s.message_id is not None for s in report.submissions)
    assert len({s.key for s in report.submissions}) == 40
    # Each request was sent twice with the same keys: refused once, then accepted.
    assert all(api.keys.count(keys) == 2 for keys in api.keys)
    assert report.retried_requests == len(set(api.keys))
    assert report.errors == {"HTTP 500": report.retried_requests}


def test_some_messages_go_alone_and_the_rest_in_batches():
    api = FlakyApi()

    report = asyncio.run(load_through(api, rate=40, seconds=0.5))

    singles = [s for s in report.submissions if s.single]
    assert len(singles) == len(report.submissions) // SINGLE_EVERY
    assert any(len(keys) > 1 for keys in api.keys)


def test_the_postgresql_cluster_is_found_by_its_port():
    listing = (
        "15 main  5432 online postgres /var/lib/postgresql/15/main  /var/log/a.log\n"
        "15 other 5433 online postgres /var/lib/postgresql/15/other /var/log/b.log\n"
    )

    assert postgres_cluster(listing, 5433) == ("15", "other")
    assert postgres_cluster(listing, 6000) is None


def test_redis_is_stopped_without_saving_and_started_empty_on_its_port():
    stop, start = redis_commands("redis://127.0.0.1:6380/3")

    assert stop == ["redis-cli", "-h", "127.0.0.1", "-p", "6380", "shutdown", "nosave"]
    assert start[:7] == [
        "redis-server",
        "--daemonize",
        "yes",
        "--bind",
        "127.0.0.1",
        "--port",
        "6380",
    ]
    assert start[7:] == ["--save", "", "--appendonly", "no"]
