"""Role endpoints, status page and metrics over a real socket, from a hand-built state;
and a fuzz run: whatever a client sends, never a 5xx (except 503 from health endpoints)."""

from __future__ import annotations

import json
import random
import string
from collections.abc import AsyncIterator

import aiohttp
import pytest
from web_support import serving

from laterbased.config import Config, PrimaryConfig, StandbyConfig
from laterbased.core.state import SlotState, State


def streaming_state() -> State:
    state = State(config=Config(primary=PrimaryConfig(host="resolve.local"),
                                standby=StandbyConfig(enabled=True), timezone="UTC"))
    state.ready = True
    state.primary.reachable = True
    state.primary.replication_state = "streaming"
    state.primary.slot = SlotState(name="laterbase_standby_slot", exists=True, active=True,
                                   retained_bytes=0, wal_status="reserved")
    state.standby.phase, state.standby.pid = "running", 1234
    local = state.local
    local.reachable, local.in_recovery, local.receiver_status = True, True, "streaming"
    local.replay_lsn, local.lag_bytes, local.lag_seconds = "0/3000060", 2048, 1.5
    return state


@pytest.fixture
async def served() -> AsyncIterator[tuple[str, State]]:
    state = streaming_state()
    async with serving(state) as url:
        yield url, state


async def get(url: str, method: str = "GET") -> tuple[int, str]:
    async with aiohttp.ClientSession() as session, session.request(method, url) as response:
        return response.status, await response.text()


@pytest.mark.parametrize(
    ("query", "status"),
    [
        ("", 200),
        ("?lag=1MB", 200),
        ("?lag=2048", 200),
        ("?lag=2kB", 200),
        ("?lag=1kB", 503),
        ("?lag=1024", 503),
        ("?lag=", 400),
        ("?lag=-5", 400),
        ("?lag=ten", 400),
        ("?lag=16XB", 400),
        ("?lag=" + "9" * 400, 400),
        ("?lag=1e9", 400),
    ],
)
async def test_replica_lag_query(served: tuple[str, State], query: str, status: int) -> None:
    url, _ = served
    code, body = await get(f"{url}/replica{query}")
    assert code == status, body
    if status == 400:
        assert "lag must be" in json.loads(body)["error"]


async def test_role_endpoints_follow_the_local_server(served: tuple[str, State]) -> None:
    url, state = served
    assert (await get(f"{url}/replica"))[0] == 200
    assert (await get(f"{url}/read-only"))[0] == 200
    assert (await get(f"{url}/primary"))[0] == 503
    assert (await get(f"{url}/replica", "HEAD"))[0] == 200
    state.local.receiver_status = "waiting"  # primary gone: in recovery, not streaming
    assert (await get(f"{url}/replica"))[0] == 503
    assert (await get(f"{url}/read-only"))[0] == 200
    state.local.in_recovery = False  # promoted
    state.standby.phase = "promoted"
    status, body = await get(f"{url}/primary")
    assert status == 200 and json.loads(body)["role"] == "primary"
    assert (await get(f"{url}/replica"))[0] == 503
    state.standby.phase, state.standby.pid = "failed", None
    assert (await get(f"{url}/read-only"))[0] == 503
    assert (await get(f"{url}/primary", "HEAD"))[0] == 503


async def test_status_json_and_page_escape_outside_text(served: tuple[str, State]) -> None:
    url, state = served
    nasty = '<img src=x onerror="alert(1)">'
    summary = state.backup(nasty)
    summary.last_success, summary.last_size, summary.last_error = 1.7e9, 10, nasty
    state.record_event("error", nasty)
    state.job("dump").next_fire = 1.9e9
    status, body = await get(f"{url}/status.json")
    assert status == 200
    doc = json.loads(body)
    assert doc["role"] == "replica"
    assert doc["backups"][0]["database"] == nasty
    assert doc["jobs"][0]["next_fire"] == 1.9e9
    status, page = await get(f"{url}/status")
    assert status == 200
    assert nasty not in page and "&lt;img src=x onerror=&quot;alert(1)&quot;&gt;" in page
    assert '<meta http-equiv="refresh"' in page
    assert "http://" not in page and "https://" not in page  # nothing external
    assert "2030-03-17" in page  # next dump, in the configured zone


async def test_status_page_says_when_unscheduled_jobs_run(served: tuple[str, State]) -> None:
    url, state = served
    state.job("prune").runs["success"] += 1
    state.job("upload").runs["success"] += 1
    status, page = await get(f"{url}/status")
    assert status == 200
    jobs = page.split("<table id=jobs>", 1)[1].split("</table>", 1)[0]
    assert jobs.count("after each dump") == 2  # prune and upload have no schedule of their own


METHODS = ["GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE", "PROPFIND",
           "BREW"]
PATHS = ["/", "/healthz", "/liveness", "/metrics", "/primary", "/replica", "/read-only",
         "/status", "/status.json", "/status/", "/replica/", "//replica", "/%00", "/..%2f",
         "/" + "a" * 3000, "/status.json.bak", "/metrics?x"]
HEALTH_PATHS = {"/healthz", "/primary", "/replica", "/read-only"}


def random_text(rng: random.Random, size: int) -> str:
    alphabet = string.printable + "äöü€\u2028"
    return "".join(rng.choice(alphabet) for _ in range(size))


async def test_fuzz_never_answers_5xx_except_health_503(served: tuple[str, State]) -> None:
    url, state = served
    rng = random.Random(20241126)
    seen: set[int] = set()
    async with aiohttp.ClientSession() as session:
        for attempt in range(400):
            if attempt == 200:
                state.local.reachable = False  # half the run with a failing standby
            path = rng.choice(PATHS)
            query = rng.choice(["", "?lag=" + random_text(rng, rng.randint(0, 40)),
                                "?" + random_text(rng, rng.randint(0, 200)),
                                "?lag=1kB&lag=x", "?lag=%ff%fe"])
            headers = {}
            if rng.random() < 0.2:
                headers["X-Fuzz"] = "h" * rng.choice([10, 8000, 20000])
            if rng.random() < 0.1:
                headers["Accept"] = random_text(rng, 50).replace("\n", "").replace("\r", "")
            method = rng.choice(METHODS)
            try:
                async with session.request(
                    method, url + path + query, headers=headers, data=b"x" * rng.randint(0, 2000)
                ) as response:
                    await response.read()
                    status = response.status
            except aiohttp.ClientResponseError as exc:
                status = exc.status  # e.g. 400 "Got more than 8190 bytes" for huge headers
            except (aiohttp.ClientPayloadError, aiohttp.ServerDisconnectedError):
                continue  # the server may refuse absurd headers by closing: not a 5xx
            except ValueError:
                continue  # the client itself refused what it was asked to send
            seen.add(status)
            allowed_503 = status == 503 and path.split("?")[0] in HEALTH_PATHS
            assert status < 500 or allowed_503, f"{method} {path}{query[:80]} -> {status}"
    assert {200, 404, 405} <= seen
