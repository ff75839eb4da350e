"""The HTTP skeleton on a real socket: health JSON, HEAD, metrics, 404/405, never 500."""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp import web

from laterbased.config import load_config
from laterbased.core.state import State
from laterbased.web.server import HttpServer, build_app


@pytest.fixture
async def server() -> AsyncIterator[tuple[str, State]]:
    # The foundation's checks alone: no standby, no backups to judge.
    environ = {
        "PRIMARY_HOST": "127.0.0.1",
        "LATERBASED_STANDBY_ENABLED": "false",
        "LATERBASED_BACKUP_ENABLED": "false",
    }
    state = State(config=load_config(None, environ))

    def add_broken_route(app: web.Application) -> None:
        async def broken(request: web.Request) -> web.Response:
            raise RuntimeError("a bug")

        app.router.add_get("/broken", broken)

    http = HttpServer(build_app(state, [add_broken_route]), "127.0.0.1", 0)
    await http.start()
    try:
        yield f"http://127.0.0.1:{http.port}", state
    finally:
        await http.stop()


async def test_healthz_is_503_while_starting_and_lists_checks(
    server: tuple[str, State],
) -> None:
    url, state = server
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{url}/healthz") as response:
            assert response.status == 503
            body = await response.json()
        assert body["status"] == "unhealthy"
        assert "daemon" in body["failing"]
        state.ready = True
        state.primary.reachable = True
        async with session.get(f"{url}/healthz") as response:
            assert response.status == 200
            assert (await response.json())["status"] == "healthy"
        async with session.head(f"{url}/healthz") as response:
            assert response.status == 200
            assert await response.read() == b""
        state.primary.reachable = False
        state.primary.last_error = "connection refused"
        async with session.get(f"{url}/healthz") as response:
            assert response.status == 503
            body = await response.json()
            primary = next(c for c in body["checks"] if c["name"] == "primary")
            assert "connection refused" in primary["reason"]


async def test_liveness_and_metrics(server: tuple[str, State]) -> None:
    url, state = server
    state.ready = True
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{url}/liveness") as response:
            assert response.status == 200
        async with session.head(f"{url}/metrics") as response:
            assert response.status == 200
        async with session.get(f"{url}/metrics") as response:
            assert response.status == 200
            assert response.headers["Content-Type"].startswith("text/plain")
            text = await response.text()
    assert "laterbased_build_info{" in text
    assert "laterbased_up 1.0" in text


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        ("GET", "/", 404),
        ("GET", "/nope", 404),
        ("GET", "/healthz/extra", 404),
        ("POST", "/healthz", 405),
        ("DELETE", "/metrics", 405),
        ("PUT", "/liveness", 405),
        ("GET", "/broken", 503),
    ],
)
async def test_unknown_paths_and_methods_are_4xx_never_500(
    server: tuple[str, State], method: str, path: str, status: int
) -> None:
    url, _ = server
    async with aiohttp.ClientSession() as session, session.request(method, url + path) as r:
        assert r.status == status


async def test_http_server_reports_the_port_it_bound(server: tuple[str, State]) -> None:
    url, _ = server
    assert not url.endswith(":0")


async def test_malformed_requests_get_400_and_no_traceback_in_the_log(
    server: tuple[str, State], caplog: pytest.LogCaptureFixture
) -> None:
    import asyncio
    import logging

    from laterbased.logs import QuietBadRequests

    logging.getLogger("aiohttp.server").addFilter(quiet := QuietBadRequests())
    try:
        url, _ = server
        port = int(url.rsplit(":", 1)[1])
        for request in (
            b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 20000 + b"\r\n\r\n",
            b"GARBAGE\x00\x01 / HTTP/9\r\n\r\n",
        ):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(request)
            await writer.drain()
            status_line = await asyncio.wait_for(reader.readline(), 5)
            writer.close()
            assert b" 400 " in status_line
    finally:
        logging.getLogger("aiohttp.server").removeFilter(quiet)
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert "Traceback" not in caplog.text
