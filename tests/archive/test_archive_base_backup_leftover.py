"""A pitr pg_basebackup a SIGKILLed daemon left running (still reading the whole Resolve
server, holding a walsender, writing into @base/.partial-*) is stopped by the next daemon's
archive worker before it removes that folder; a pg_basebackup that is not ours (another
folder) is left alone."""

from __future__ import annotations

import asyncio
import os
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from pgserver import PgServer
from pitr_support import config_for
from waiting import wait_for

from laterbased.archive.worker import run_archive
from laterbased.core.context import WorkerContext
from laterbased.core.state import State
from laterbased.proc import pid_alive
from laterbased.records import wal_archive

pytestmark = pytest.mark.slow


def _slow_basebackup(server: PgServer, target: Path, cwd: Path) -> subprocess.Popen[bytes]:
    """pg_basebackup as the archive runs it (in its folder), slowed to last for minutes."""
    return subprocess.Popen(  # noqa: S603 - a fixed argv
        [
            str(server.bindir / "pg_basebackup"), "-h", server.host, "-p", str(server.port),
            "-U", server.superuser, "--no-password", "-D", str(target), "-Ft", "-X", "none",
            "--checkpoint=fast", "--max-rate=32k",
        ],
        cwd=cwd,
        env={**os.environ, "PGPASSWORD": server.superuser_password},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # as after its daemon died: not in our process group
    )


async def test_a_leftover_pitr_pg_basebackup_is_stopped_and_its_folder_removed(
    make_primary: Callable[..., PgServer], tmp_path: Path, state_dir: Path
) -> None:
    server = make_primary()
    config = config_for(server, tmp_path, state_dir)
    partial = wal_archive.base_dir(config.backup_directory) / ".partial-20261129T020000Z"
    partial.mkdir(parents=True)
    leftover = _slow_basebackup(server, partial, partial)
    elsewhere = tmp_path / "someone-elses-copy"
    elsewhere.mkdir()
    bystander = _slow_basebackup(server, elsewhere, elsewhere)
    try:
        await wait_for(
            lambda: (partial / "base.tar").exists() and (elsewhere / "base.tar").exists(),
            "both pg_basebackups writing",
        )
        state = State(config=config)
        ctx = WorkerContext(state, asyncio.Event())
        task = asyncio.create_task(run_archive(ctx))
        try:
            await wait_for(lambda: leftover.poll() is not None, "the leftover stopped")
            await wait_for(lambda: state.archive.base_backups >= 1, "a new base backup")
            assert not partial.exists(), "its folder is removed"
            assert bystander.poll() is None and pid_alive(bystander.pid), "not ours: left alone"
        finally:
            ctx.stopping.set()
            await asyncio.wait_for(task, 30)
    finally:
        for process in (leftover, bystander):
            if process.poll() is None:
                process.kill()
            process.wait(30)
