"""A failed scheduled backup run is tried again by itself once the primary is back: health
turns green without waiting for the next fire or a manual backup-now."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import shutil
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest
from backup_support import make_config
from pgserver import PgServer
from waiting import wait_for

from laterbased.backup.runner import backup_worker, begin_job, finish_job, retry_delay
from laterbased.core.context import WorkerContext
from laterbased.core.state import State
from laterbased.health import verdicts as health

pytestmark = pytest.mark.slow


async def test_failed_scheduled_run_is_retried_until_it_succeeds_once_the_primary_is_back(
    make_primary: Callable[..., PgServer],
) -> None:
    primary = make_primary()
    await asyncio.to_thread(primary.create_database, "retry project")
    base = Path(tempfile.mkdtemp(prefix="laterbased-retry-test-"))
    config = make_config(
        primary,
        base / "backups",
        databases=("retry project",),
        schedule="0 0 1 1 *",  # next fire up to a year away: only a retry can fix it
        retry_delay=0.5,
        retry_delay_max=2.0,
    )
    state = State(config=config)
    state.ready = True
    ctx = WorkerContext(state=state, stopping=asyncio.Event())
    await asyncio.to_thread(primary.stop, "fast")
    worker = asyncio.create_task(backup_worker(ctx))

    def backup_check() -> health.Check:
        return next(
            c for c in health.evaluate(state, time.time()) if c.name == "backup:retry project"
        )

    try:
        # The catch-up run (no backup yet) fails: the primary is down.
        await wait_for(lambda: state.job("dump").runs["failed"] >= 1, "a failed run", 60)
        assert not backup_check().ok
        await asyncio.to_thread(primary.start)
        await wait_for(lambda: backup_check().ok, "backup health green again by a retry", 60)
        assert state.job("dump").runs["success"] == 1
        assert state.job("dump").last_run is not None
        assert state.job("dump").last_run.result == "success"
    finally:
        ctx.stopping.set()
        worker.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await worker
        shutil.rmtree(base, ignore_errors=True)


def test_no_retry_when_the_next_scheduled_run_comes_first(primary: PgServer) -> None:
    config = make_config(
        primary, Path("/nonexistent"), schedule="*/5 * * * *", retry_delay=3600.0
    )
    state = State(config=config)
    run = begin_job(state, "dump", "dump-test")
    assert run is not None
    finish_job(state, run, "failed", "primary down")
    now = datetime(2026, 11, 29, 8, 0, 30, tzinfo=UTC).timestamp()
    assert retry_delay(state, 0, now) is None
    state = State(config=dataclasses.replace(config, backup=dataclasses.replace(
        config.backup, retry_delay=30.0, retry_delay_max=300.0)))
    run = begin_job(state, "dump", "dump-test")
    assert run is not None
    finish_job(state, run, "failed", "primary down")
    assert retry_delay(state, 0, now) == 30.0
    assert retry_delay(state, 2, now) == 120.0
    assert retry_delay(state, 3, now) == 240.0
    assert retry_delay(state, 4, now) is None, "300 s would reach past the 08:05 run"
