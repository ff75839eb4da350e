"""The monitor run in-process against real servers: a config aimed at a test primary (and
its streaming standby), a harness that polls and serves HTTP from one state, and
``promtool check metrics`` on what it serves."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
from config_support import primary_config
from pgserver import PgServer
from streaming_standby import APPLICATION_NAME, StreamingStandby
from web_support import serving

from laterbased.config import (
    BackupConfig,
    Config,
    HttpConfig,
    MonitorConfig,
    StandbyConfig,
)
from laterbased.core.state import State
from laterbased.monitor.worker import Monitor


def monitor_config(
    primary: PgServer, *, standby: StandbyConfig | None = None, **monitor: Any
) -> Config:
    """The primary's replication user with a short connect timeout, ``standby`` (none by
    default), the monitor's settings (``interval``, ``query_timeout`` 2 s, any other), no
    backups, HTTP on a free port when a Daemon serves it."""
    return Config(
        primary=primary_config(primary),
        standby=standby or StandbyConfig(enabled=False),
        monitor=MonitorConfig(**{"query_timeout": 2.0, **monitor}),
        backup=BackupConfig(enabled=False),
        http=HttpConfig(host="127.0.0.1", port=0),
        # A private state_dir: the monitor records the primary's identity there, and a
        # daemon locks it (one daemon per directory).
        state_dir=Path(tempfile.mkdtemp(prefix="lb-monitor-")),
        timezone="UTC",
    )


def streaming(standby: StreamingStandby) -> StandbyConfig:
    """The standby section that points the monitor at ``standby`` and its slot."""
    return StandbyConfig(
        enabled=True,
        port=standby.port,
        slot_name=standby.slot_name,
        application_name=APPLICATION_NAME,
    )


class Harness:
    """One state, polled by a :class:`Monitor` on demand and served over HTTP."""

    def __init__(self, state: State, monitor: Monitor, url: str) -> None:
        self.state = state
        self.monitor = monitor
        self.url = url

    async def poll_until(
        self, condition: Callable[[State], bool], what: str, timeout: float = 30.0
    ) -> None:
        deadline = time.monotonic() + timeout
        while True:
            await self.monitor.poll_once()
            if condition(self.state):
                return
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"timed out after {timeout}s waiting for: {what}; "
                    f"primary={self.state.primary} local={self.state.local}"
                )
            await asyncio.sleep(self.state.config.monitor.interval)

    async def get(self, path: str) -> tuple[int, str]:
        async with aiohttp.ClientSession() as session, session.get(self.url + path) as r:
            return r.status, await r.text()

    async def status(self, path: str) -> int:
        return (await self.get(path))[0]

    async def json(self, path: str) -> Any:
        async with aiohttp.ClientSession() as session, session.get(self.url + path) as r:
            return await r.json()


@contextlib.asynccontextmanager
async def monitor_harness(config: Config, standby: StreamingStandby) -> AsyncIterator[Harness]:
    """A ready daemon's state with ``standby`` running as its own, a monitor and the HTTP
    routes of the daemon on a free port."""
    state = State(config=config)
    state.ready = True
    state.standby.enabled = True
    state.standby.phase = "running"
    state.standby.pid = standby.pid
    monitor = Monitor(state)
    try:
        async with serving(state) as url:
            yield Harness(state, monitor, url)
    finally:
        monitor.close()


async def promtool_check(text: str) -> None:
    """``promtool check metrics`` accepts ``text`` (Prometheus' own linter)."""
    promtool = shutil.which("promtool")
    assert promtool, "promtool missing: apt-get install prometheus"
    proc = await asyncio.create_subprocess_exec(
        promtool, "check", "metrics",
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    output, _ = await asyncio.wait_for(proc.communicate(text.encode()), 60)
    assert proc.returncode == 0, output.decode()
