"""The standby worker run in-process, as the daemon runs it, against a real primary: a config
aimed at a test server, the running worker and ways to look at its server, and the command
lines of every process (to prove a password is in none); and a standby postgres whose
primary never answers, run as laterbased runs its child."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import asyncpg
from config_support import primary_config
from pgserver import PgServer, free_port
from waiting import wait_for

from laterbased.config import (
    BackupConfig,
    Config,
    HttpConfig,
    MonitorConfig,
    StandbyConfig,
)
from laterbased.core.context import WorkerContext
from laterbased.core.state import State
from laterbased.proc import Child, pids_with_cwd_under, resolve_run_as, spawn
from laterbased.standby.supervisor import run_standby

DEADLINE = 60.0


def standby_config(
    primary: PgServer, state_dir: Path, *, superuser: bool = False, **standby: Any
) -> Config:
    return Config(
        primary=primary_config(primary, superuser=superuser, connect_timeout=5.0),
        standby=StandbyConfig(port=free_port(), **standby),
        monitor=MonitorConfig(interval=1.0),
        backup=BackupConfig(enabled=False),
        http=HttpConfig(enabled=False),
        state_dir=state_dir,
    )


class RunningStandby:
    """The standby worker running in this event loop, plus ways to look at its server."""

    def __init__(self, config: Config) -> None:
        self.state = State(config=config)
        self.ctx = WorkerContext(state=self.state, stopping=asyncio.Event())
        self.task: asyncio.Task[None] | None = None

    @property
    def config(self) -> Config:
        return self.state.config

    @property
    def data_dir(self) -> Path:
        return self.config.standby_data_dir

    def start(self) -> None:
        self.task = asyncio.create_task(run_standby(self.ctx))

    async def stop(self) -> None:
        assert self.task is not None
        self.ctx.stopping.set()
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task

    def check_alive(self) -> None:
        if self.task is not None and self.task.done():
            exc = None if self.task.cancelled() else self.task.exception()
            raise AssertionError(f"standby worker ended: {exc!r}; state={self.state.standby}")

    async def connect(self, primary: PgServer) -> Any:
        return await asyncpg.connect(
            host="127.0.0.1",
            port=self.config.standby.port,
            user=primary.superuser,
            password=primary.superuser_password,
            database="postgres",
            timeout=10,
        )

    async def query(self, primary: PgServer, sql: str) -> Any:
        conn = await self.connect(primary)
        try:
            return await conn.fetchval(sql)
        finally:
            await conn.close()

    async def wait_running(self, timeout: float = DEADLINE) -> None:
        def running() -> bool:
            self.check_alive()
            return self.state.standby.phase in {"running", "promoted"}

        await wait_for(running, f"standby running (state: {self.state.standby})", timeout)

    async def wait_row(self, primary: PgServer, table: str, value: str) -> None:
        async def replicated() -> bool:
            self.check_alive()
            try:
                return bool(
                    await self.query(
                        primary, f"SELECT count(*) FROM {table} WHERE v = '{value}'"  # noqa: S608
                    )
                )
            except (OSError, asyncpg.PostgresError):
                return False

        await wait_for(replicated, f"row {value!r} of {table} on the standby")


@contextlib.asynccontextmanager
async def running_standby(
    primary: PgServer, *, start: bool = True, superuser: bool = False, **standby: Any
) -> AsyncIterator[RunningStandby]:
    state_dir = Path(tempfile.mkdtemp(prefix="laterbased-state-"))
    runner = RunningStandby(standby_config(primary, state_dir, superuser=superuser, **standby))
    if start:
        runner.start()
    try:
        yield runner
    finally:
        if runner.task is not None and not runner.task.done():
            await runner.stop()
        leftovers = pids_with_cwd_under(state_dir)
        for pid in leftovers:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        shutil.rmtree(state_dir, ignore_errors=True)
        assert leftovers == [], f"processes left running in {state_dir}: {leftovers}"


def cmdlines() -> list[bytes]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                found.append((entry / "cmdline").read_bytes())
    return found


@contextlib.asynccontextmanager
async def orphan_standby(server: PgServer, **spawn_options: Any) -> AsyncIterator[Child]:
    """``server`` restarted as a standby of a primary that never answers (a free port), as
    laterbased runs its standby child (``proc.spawn``, logging as "standby postgres"): its
    walreceiver fails with the same FATAL every 100 ms. Stopped at the end."""
    await asyncio.to_thread(server.stop, "fast")
    (server.data_dir / "standby.signal").touch()
    dead = free_port()
    child = await spawn(
        [
            str(server.bindir / "postgres"),
            "-D", str(server.data_dir),
            "-c", f"primary_conninfo=host=127.0.0.1 port={dead} user=nobody connect_timeout=2",
            "-c", "wal_retrieve_retry_interval=100ms",
        ],
        run_as=resolve_run_as(None),
        log_name="standby postgres",
        **spawn_options,
    )
    try:
        yield child
    finally:
        await child.stop([(signal.SIGINT, 30)])


@contextlib.contextmanager
def frozen_checkpointer(primary: PgServer) -> Iterator[None]:
    """The primary's checkpointer stopped (SIGSTOP) for the block: a clone started meanwhile
    waits for its checkpoint, for as long as the test needs it to."""
    checkpointer = int(
        primary.sql("SELECT pid FROM pg_stat_activity WHERE backend_type = 'checkpointer'")
    )
    os.kill(checkpointer, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(checkpointer, signal.SIGCONT)
