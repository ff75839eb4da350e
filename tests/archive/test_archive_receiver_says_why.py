"""A pg_receivewal that keeps failing says why in /healthz and the warning (the backup disk
full, its slot held by another process), not only 'exited with status 1', and health turns
critical after a few such runs, not 'restarting' (a warning) for ever."""

from __future__ import annotations

import asyncio
import os
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from pgserver import PgServer
from pitr_support import config_for
from waiting import wait_for

from laterbased.archive.worker import run_archive
from laterbased.core.context import WorkerContext
from laterbased.core.state import State
from laterbased.health.verdicts import PITR_RESTARTS_CRITICAL, check_pitr

pytestmark = pytest.mark.slow


async def test_pg_receivewal_failing_because_its_slot_is_held_elsewhere_says_so_and_turns_critical(
    make_primary: Callable[..., PgServer],
    tmp_path: Path,
    state_dir: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    server = make_primary()
    config = config_for(server, tmp_path, state_dir)
    slot = config.pitr.slot_name
    server.sql(f"SELECT pg_create_physical_replication_slot('{slot}', true)")
    # Someone else's pg_receivewal (a hand-made archive) streams through our slot.
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    stranger = subprocess.Popen(  # noqa: S603 - a fixed argv
        [
            str(server.bindir / "pg_receivewal"), "-h", server.host, "-p", str(server.port),
            "-U", server.superuser, "--no-password", "-S", slot, "-D", str(elsewhere),
        ],
        env={**os.environ, "PGPASSWORD": server.superuser_password},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        await wait_for(
            lambda: server.sql(
                f"SELECT active FROM pg_replication_slots WHERE slot_name = '{slot}'"
            ) == "t",
            "the stranger streaming through the slot",
        )
        state = State(config=config)
        ctx = WorkerContext(state, asyncio.Event())
        task = asyncio.create_task(run_archive(ctx))
        try:
            # Between its runs (a new one starts at once after the first failure).
            verdict = await wait_for(
                lambda: state.archive.phase == "restarting" and check_pitr(state, time.time()),
                "pg_receivewal failing",
            )
            assert f'replication slot "{slot}" is active for PID' in verdict.reason, verdict
            warned = [
                r.getMessage() for r in caplog.records
                if r.levelname == "WARNING" and "pg_receivewal exited" in r.getMessage()
            ]
            assert warned and "is active for PID" in warned[0], warned

            # Each run starts, then exits within a second: the archive is not coming back.
            verdict = await wait_for(
                lambda: state.archive.restarts >= PITR_RESTARTS_CRITICAL
                and state.archive.phase == "restarting"
                and check_pitr(state, time.time()),
                f"{PITR_RESTARTS_CRITICAL} failed runs",
            )
            assert verdict.severity == "critical", verdict
            assert "is active for PID" in verdict.reason, verdict
        finally:
            ctx.stopping.set()
            await asyncio.wait_for(task, 30)
    finally:
        stranger.terminate()
        stranger.wait(30)
