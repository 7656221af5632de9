"""The project's one HTTP client, against a real local HTTP server."""

from __future__ import annotations

import pytest
from aiohttp import web

from ha_portal.lib.http import (
    HttpClient,
    HttpConnectionError,
    HttpDecodeError,
    HttpError,
    HttpResponse,
    HttpTimeout,
    run,
)


def fetch(url: str, *, timeout: float = 2.0, max_body_bytes: int = 1024, **kwargs) -> HttpResponse:
    async def go() -> HttpResponse:
        async with HttpClient(max_body_bytes=max_body_bytes) as http:
            return await http.request("POST", url, timeout=timeout, **kwargs)

    return run(go())


def test_it_returns_status_body_and_elapsed_time(fake_gateway):
    fake_gateway.reply("POST", "/echo", status=201, json={"ok": True})

    response = fetch(f"{fake_gateway.url}/echo", headers={"X-Api-Key": "k"}, json={"a": 1})

    assert response.status == 201
    assert response.json() == {"ok": True}
    assert response.elapsed_ms > 0
    assert fake_gateway.last.json == {"a": 1}
    assert fake_gateway.last.headers["X-Api-Key"] == "k"


def test_it_times_out_when_the_server_never_answers(fake_gateway):
    fake_gateway.hang("POST", "/slow")

    with pytest.raises(HttpTimeout, match=r"^timed out after 0\.3s$"):
        fetch(f"{fake_gateway.url}/slow", timeout=0.3)


def test_it_times_out_when_the_body_stalls_after_the_headers(fake_gateway):
    async def trickle(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        await response.prepare(request)
        await response.write(b'{"status": ')
        await fake_gateway.release.wait()
        return response

    fake_gateway.on("POST", "/trickle", trickle)

    with pytest.raises(HttpTimeout):
        fetch(f"{fake_gateway.url}/trickle", timeout=0.3)


def test_it_refuses_a_body_whose_length_is_over_the_cap(fake_gateway):
    fake_gateway.reply("POST", "/big", body=b"x" * 2048)

    with pytest.raises(HttpError, match=r"^response body over 1024 bytes$"):
        fetch(f"{fake_gateway.url}/big")


def test_it_refuses_a_chunked_body_that_grows_over_the_cap(fake_gateway):
    async def endless(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        response.enable_chunked_encoding()
        await response.prepare(request)
        for _ in range(8):
            await response.write(b"y" * 512)
        await response.write_eof()
        return response

    fake_gateway.on("POST", "/chunked", endless)

    with pytest.raises(HttpError, match=r"^response body over 1024 bytes$"):
        fetch(f"{fake_gateway.url}/chunked")


def test_it_reads_a_body_exactly_at_the_cap(fake_gateway):
    fake_gateway.reply("POST", "/edge", body=b"z" * 1024)

    assert fetch(f"{fake_gateway.url}/edge").body == b"z" * 1024


def test_it_says_clearly_when_a_body_is_not_json(fake_gateway):
    fake_gateway.reply("POST", "/html", status=502, body=b"<h1>Bad Gateway</h1>")
    response = fetch(f"{fake_gateway.url}/html")

    with pytest.raises(HttpDecodeError) as caught:
        response.json()

    assert str(caught.value) == "response is not JSON (HTTP 502, 20 bytes: '<h1>Bad Gateway</h1>')"


def test_it_reports_a_refused_connection(refused_url):
    with pytest.raises(HttpConnectionError, match=r"^cannot connect to 127\.0\.0\.1:\d+"):
        fetch(refused_url)


def test_it_refuses_to_send_outside_its_context():
    client = HttpClient()

    with pytest.raises(RuntimeError, match="outside 'async with'"):
        run(client.request("GET", "http://127.0.0.1:9/", timeout=1))


def test_it_does_not_follow_redirects_so_keys_stay_with_the_gateway(fake_gateway):
    async def redirect(request: web.Request) -> web.StreamResponse:
        raise web.HTTPFound("/elsewhere")

    fake_gateway.on("POST", "/moved", redirect)

    response = fetch(f"{fake_gateway.url}/moved", headers={"X-Api-Key": "k"})

    assert response.status == 302
    assert [request.path for request in fake_gateway.requests] == ["/moved"]


def test_it_reports_a_header_with_a_newline_as_an_http_error(fake_gateway):
    fake_gateway.reply("POST", "/x", json={})

    with pytest.raises(HttpError) as caught:
        fetch(f"{fake_gateway.url}/x", headers={"X-Api-Key": "pasted\nkey"})

    assert str(caught.value) == "invalid request: header 'X-Api-Key' contains a control character"
    assert "pasted" not in str(caught.value)
    assert fake_gateway.requests == []
