"""Archive retention runs after a failed base backup too: on a full backup disk the base
backup fails for want of the very room retention gives back, so retention only after a
successful one never ran again and the disk stayed full."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from pgserver import PgServer
from pitr_support import config_for
from waiting import wait_for
from wal_files import base_backup

from laterbased.archive.worker import run_archive
from laterbased.core.context import WorkerContext
from laterbased.core.state import State

pytestmark = pytest.mark.slow


async def test_base_backups_older_than_the_window_go_even_when_the_new_one_fails(
    make_primary: Callable[..., PgServer], tmp_path: Path, state_dir: Path
) -> None:
    # pg_receivewal takes the one walsender: every pg_basebackup is refused.
    server = make_primary(max_wal_senders=1)
    config = config_for(server, tmp_path, state_dir)
    now = datetime.now(UTC)
    window = timedelta(seconds=config.pitr_window)
    too_old = base_backup(config.backup_directory, 1, now - window - timedelta(days=3))
    reaches_the_window = base_backup(config.backup_directory, 2, now - window - timedelta(days=1))

    state = State(config=config)
    # Base backups exist: the next is due on the schedule; ask for one now (as after a gap).
    state.archive.base_backup_wanted = "the test"
    ctx = WorkerContext(state, asyncio.Event())
    task = asyncio.create_task(run_archive(ctx))
    try:
        await wait_for(
            lambda: state.archive.last_base_backup_error is not None, "a failed base backup"
        )
        assert "max_wal_senders" in state.archive.last_base_backup_error, state.archive
        await wait_for(lambda: not too_old.exists(), "the base backup no longer needed deleted")
        assert reaches_the_window.exists(), "the one reaching the window's first moment stays"
    finally:
        ctx.stopping.set()
        await asyncio.wait_for(task, 30)
