"""Helpers for the point-in-time tests: a pitr configuration aimed at a test server, the
archive worker running for the length of a block, waiting until the archive holds all the
primary wrote, and the rows of a table."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

from pgserver import PgServer
from waiting import wait_for

from laterbased.archive.worker import run_archive
from laterbased.config import Config, load_config
from laterbased.core.context import WorkerContext
from laterbased.core.state import State

LIBRARY = "Resolve Library"
ZONE = "America/Los_Angeles"


def environment(server: PgServer, work: Path, state_dir: Path) -> dict[str, str]:
    """The ``.env`` of a laterbased with the archive on, backing up ``server`` into
    ``work/backups``."""
    return {
        "PRIMARY_HOST": server.host,
        "PRIMARY_PORT": str(server.port),
        "PRIMARY_USER": server.superuser,
        "REPL_PASSWORD": server.superuser_password,
        "LOCAL_BACKUP_PATH": str(work / "backups"),
        "LATERBASED_STATE_DIR": str(state_dir),
        "LATERBASED_PITR_ENABLED": "true",
        "LATERBASED_TIMEZONE": ZONE,
    }


def create_library(server: PgServer, first_note: str = "dumped") -> None:
    """The Resolve library ``LIBRARY`` on ``server``: its ``SM_Project`` table and a table
    ``clips`` holding one row, (1, ``first_note``)."""
    server.create_database(LIBRARY)
    server.sql(
        'CREATE TABLE "SM_Project" (id int); CREATE TABLE clips (id int PRIMARY KEY, note text);'
        f"INSERT INTO clips VALUES (1, '{first_note}')",
        database=LIBRARY,
    )


def config_for(
    server: PgServer, work: Path, state_dir: Path, extra: dict[str, str] | None = None
) -> Config:
    return load_config(None, environment(server, work, state_dir) | (extra or {}))


async def archived_up_to_now(server: PgServer, timeout: float = 60.0) -> None:  # noqa: ASYNC109
    """Wait until the archive's walsender has flushed everything written so far."""
    lsn = server.sql("SELECT pg_current_wal_lsn()")

    def flushed() -> bool:
        return server.sql(
            "SELECT count(*) FROM pg_stat_replication WHERE application_name LIKE "
            f"'laterbased_archive%' AND flush_lsn >= '{lsn}'::pg_lsn"  # noqa: S608
        ) == "1"

    await wait_for(flushed, f"the archive received WAL up to {lsn}", timeout)


@contextlib.asynccontextmanager
async def archive_running(config: Config) -> AsyncIterator[State]:
    """The archive worker (pg_receivewal + base backups) until the block ends; entered once
    a base backup is published and pg_receivewal streams."""
    state = State(config=config)
    ctx = WorkerContext(state, asyncio.Event())
    task = asyncio.create_task(run_archive(ctx))
    try:
        await wait_for(
            lambda: state.archive.base_backups >= 1 and state.archive.phase == "streaming",
            "a base backup and pg_receivewal streaming",
        )
        yield state
    finally:
        ctx.stopping.set()
        await asyncio.wait_for(task, 30)


def rows(server: PgServer, database: str, table: str = "clips") -> list[str]:
    return server.sql(f"SELECT note FROM {table} ORDER BY id", database=database).split()  # noqa: S608
