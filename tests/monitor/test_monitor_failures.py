"""The monitor when things go wrong on real servers: a lost slot, a primary that dies."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import time
from collections.abc import Callable

import aiohttp
import pytest
from config_support import quiet_config
from monitor_support import monitor_config
from pgserver import PgServer

from laterbased.config import Config, PrimaryConfig, Secret, StandbyConfig
from laterbased.core.state import State
from laterbased.daemon import Daemon, Worker
from laterbased.health import verdicts as health
from laterbased.monitor.worker import Monitor, run_monitor
from laterbased.proc import pids_with_cwd_under
from laterbased.web.server import HttpServer, build_app

pytestmark = pytest.mark.slow

SLOT = "doomed_slot"


def config_for(primary: PgServer, *, standby: bool, interval: float) -> Config:
    return monitor_config(
        primary, standby=StandbyConfig(enabled=standby, slot_name=SLOT), interval=interval
    )


async def test_lost_slot_is_critical_and_says_how_to_reclone(
    make_primary: Callable[..., PgServer], caplog: pytest.LogCaptureFixture
) -> None:
    primary = make_primary(max_slot_wal_keep_size="1MB")
    await asyncio.to_thread(
        primary.sql,
        f"SELECT pg_create_physical_replication_slot('{SLOT}', immediately_reserve => true);"
        "CREATE TABLE churn (x int)",
    )
    state = State(config=config_for(primary, standby=True, interval=0.2))
    state.ready = True
    monitor = Monitor(state)
    caplog.set_level(logging.INFO)
    try:
        await monitor.poll_once()
        slot = state.primary.slot
        assert slot is not None and slot.exists and slot.wal_status == "reserved"
        assert slot.safe_wal_size is not None  # PG 13+ with max_slot_wal_keep_size set
        deadline = time.monotonic() + 60
        while state.primary.slot is None or state.primary.slot.wal_status != "lost":
            assert time.monotonic() < deadline, f"slot never lost: {state.primary.slot}"
            # Nobody consumes the slot: switch WAL segments and checkpoint until the
            # primary gives up on it.
            await asyncio.to_thread(
                primary.sql,
                "INSERT INTO churn SELECT generate_series(1, 1000); SELECT pg_switch_wal(); "
                "CHECKPOINT",
            )
            await monitor.poll_once()
    finally:
        monitor.close()
    verdict = next(c for c in health.evaluate(state, time.time()) if c.name == "slot")
    assert verdict.severity == "critical"
    critical = [r for r in caplog.records if r.levelno == logging.CRITICAL]
    assert len(critical) == 1, "a lost slot is logged once, not at every poll"
    message = critical[0].getMessage()
    assert "wal_status=lost" in message and "re-clone" in message
    assert "move the standby data directory aside" in message
    assert any(e.level == "critical" for e in state.events)


async def http_status(url: str) -> int:
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        await response.read()
        return response.status


async def wait_status(url: str, want: int, timeout: float) -> float:
    """Seconds until ``url`` answers ``want``; fails after ``timeout``."""
    started = time.monotonic()
    while (status := await http_status(url)) != want:
        elapsed = time.monotonic() - started
        assert elapsed < timeout, f"{url} still {status} after {elapsed:.1f}s, wanted {want}"
        await asyncio.sleep(0.05)
    return time.monotonic() - started


async def test_primary_down_is_503_within_two_polls_and_recovers_without_traceback(
    make_primary: Callable[..., PgServer], caplog: pytest.LogCaptureFixture
) -> None:
    primary = make_primary()
    interval = 0.5
    daemon = Daemon(
        config_for(primary, standby=False, interval=interval),
        workers=[Worker("monitor", run_monitor)],
    )
    caplog.set_level(logging.DEBUG)
    async with asyncio.TaskGroup() as group:
        group.create_task(daemon.serve())
        try:
            while daemon.http is None or daemon.http.port == 0:
                await asyncio.sleep(0.02)
            url = f"http://127.0.0.1:{daemon.http.port}"
            await wait_status(f"{url}/healthz", 200, timeout=20)
            # fast, not immediate: the harness commits asynchronously, so a crash could
            # lose the replication role itself.
            await asyncio.to_thread(primary.stop, "fast")
            took = await wait_status(f"{url}/healthz", 503, timeout=10)
            # Seen at the next poll (every 0.5 s); a monitor that missed it would reach the
            # 10 s deadline above. The slack is for a loaded 2-core machine.
            assert took <= 2 * interval + 3, f"503 only after {took:.2f}s"
            async with aiohttp.ClientSession() as session:
                async with session.get(f"{url}/metrics") as response:
                    metrics = await response.text()
                async with session.get(f"{url}/healthz") as response:
                    body = await response.json()
            assert "laterbased_primary_up 0.0" in metrics
            assert body["failing"] == ["primary"]
            assert "unreachable" in body["checks"][1]["reason"]
            await asyncio.to_thread(primary.start)
            await wait_status(f"{url}/healthz", 200, timeout=30)
        finally:
            daemon.stopping.set()
    assert "primary unreachable" in caplog.text
    assert "primary reachable" in caplog.text
    assert "Traceback" not in caplog.text
    assert not [r for r in caplog.records if r.exc_info], "no tracebacks for a dead primary"
    assert daemon.state.worker_restarts["monitor"] == 0


async def test_frozen_primary_costs_the_event_loop_nothing(
    make_primary: Callable[..., PgServer],
) -> None:
    primary = make_primary()
    config = config_for(primary, standby=False, interval=0.5)
    state = State(config=config)
    state.ready = True
    monitor = Monitor(state)
    http = HttpServer(build_app(state), "127.0.0.1", 0)
    await http.start()
    frozen: list[int] = []
    try:
        await monitor.poll_once()
        assert state.primary.reachable
        frozen = pids_with_cwd_under(primary.base_dir)  # including our monitor's backend
        for pid in frozen:  # postmaster and every backend: nothing answers, nothing refuses
            os.kill(pid, signal.SIGSTOP)
        started = time.monotonic()
        slowest = 0.0
        async with aiohttp.ClientSession() as session, asyncio.TaskGroup() as group:
            poll = group.create_task(monitor.poll_once())
            while not poll.done():
                asked = time.monotonic()
                async with session.get(f"http://127.0.0.1:{http.port}/healthz") as response:
                    await response.read()
                slowest = max(slowest, time.monotonic() - asked)
                await asyncio.sleep(0.05)
        took = time.monotonic() - started
        budget = config.primary.connect_timeout + 5 * config.monitor.query_timeout
        assert took <= budget + 1.0, f"a poll of a frozen primary took {took:.1f}s"
        # A blocked event loop holds /healthz for a whole connect or query timeout (2 s
        # each); a healthy one answers far below that even on a loaded 2-core machine.
        assert slowest < 0.75 * config.primary.connect_timeout, (
            f"/healthz took {slowest * 1000:.0f} ms during the poll"
        )
        assert state.primary.reachable is False
        assert "no answer within" in (state.primary.last_error or "")
    finally:
        for pid in frozen:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
        monitor.close()
        await http.stop()


async def test_reload_to_another_primary_reconnects_there(
    make_primary: Callable[..., PgServer],
) -> None:
    first, second = make_primary(), make_primary()
    state = State(config=config_for(first, standby=False, interval=0.2))
    monitor = Monitor(state)
    try:
        await monitor.poll_once()
        first_id = state.primary.system_identifier
        assert state.primary.reachable and first_id
        state.config = config_for(second, standby=False, interval=0.2)  # what SIGHUP does
        await monitor.poll_once()
        assert state.primary.reachable
        assert state.primary.system_identifier not in (None, first_id)
    finally:
        monitor.close()


async def test_wrong_password_is_a_refused_login_not_an_unreachable_primary(
    primary: PgServer, caplog: pytest.LogCaptureFixture
) -> None:
    # /healthz said "primary: unreachable: ... password authentication failed": at 3 a.m.
    # "unreachable" sends you to the network, not to REPL_PASSWORD.
    config = quiet_config(
        primary=PrimaryConfig(
            host=primary.host,
            port=primary.port,
            user=primary.replication_user,
            password=Secret("certainly-not-the-password"),
            connect_timeout=5.0,
        ),
        timezone="UTC",
    )
    state = State(config=config)
    monitor = Monitor(state)
    caplog.set_level(logging.INFO, logger="laterbased.monitor")
    try:
        await monitor.poll_once()
    finally:
        monitor.close()
    check = health.check_primary(state, state.started_at + 1)
    assert check.severity == "critical"
    assert check.reason.startswith("login refused: "), check.reason
    assert "REPL_PASSWORD" in check.reason
    assert "primary refused our login" in caplog.text
    assert "primary unreachable" not in caplog.text
    assert "certainly-not-the-password" not in check.reason + caplog.text
