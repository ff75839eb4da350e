"""The archive's slot dropped on the primary while laterbased was down, and the WAL after the
archive's end recycled there: the slot is created again, archiving goes on from what the
primary still has, and the hole is reported as a gap (health, ranges), while moments before
it stay restorable, and a base backup at once starts the window again."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

import pytest
from pgserver import PgServer
from pitr_support import LIBRARY, archive_running, archived_up_to_now, config_for
from waiting import wait_for

from laterbased.health.verdicts import check_pitr
from laterbased.ops.restore.steps import RestoreRequest, restore
from laterbased.records import wal_archive

pytestmark = pytest.mark.slow

SLOT = "laterbase_wal_slot"


async def test_a_dropped_slot_is_created_again_and_the_lost_wal_reported_as_a_gap(
    make_primary: Callable[..., PgServer], tmp_path: Path, state_dir: Path
) -> None:
    # Nothing kept beyond what checkpoints need: the primary recycles WAL at once.
    server = make_primary(min_wal_size="32MB", wal_keep_size=0)
    server.create_database(LIBRARY)
    server.sql(
        'CREATE TABLE "SM_Project" (id int); CREATE TABLE clips (id int PRIMARY KEY, note text)',
        database=LIBRARY,
    )
    config = config_for(server, tmp_path, state_dir)
    async with archive_running(config):
        server.sql("INSERT INTO clips VALUES (1, 'before-the-loss')", database=LIBRARY)
        moment = datetime.fromisoformat(server.sql("SELECT clock_timestamp()::text"))
        await asyncio.sleep(0.05)
        server.sql("INSERT INTO clips VALUES (2, 'lost-with-the-wal')", database=LIBRARY)
        await archived_up_to_now(server)
    end = wal_archive.list_segments(config.backup_directory)[-1].name

    # laterbased is down; someone drops its slot on the Resolve server, which moves on.
    server.sql(f"SELECT pg_drop_replication_slot('{SLOT}')")
    for step in range(5):
        server.sql(
            f"CREATE TABLE churn{step} AS SELECT 1 AS id; SELECT pg_switch_wal(); CHECKPOINT",
            database=LIBRARY,
        )
    kept = server.sql("SELECT string_agg(name, ' ') FROM pg_ls_waldir()")
    assert end not in kept, f"the primary still has {end}: {kept}"

    async with archive_running(config) as state:
        await wait_for(
            lambda: bool(state.archive.gaps) and state.archive.phase == "streaming",
            "the gap reported and archiving going on",
            log=lambda: f"{state.archive.last_exit} {state.archive.message}",
        )
        # pg_receivewal leaves its resume folder and restarts once: the slot is idle a moment.
        await wait_for(
            lambda: server.sql(
                f"SELECT active FROM pg_replication_slots WHERE slot_name = '{SLOT}'"  # noqa: S608
            ) == "t",
            "the slot created again and used",
        )
        server.sql("INSERT INTO clips VALUES (3, 'after-the-loss')", database=LIBRARY)
        await archived_up_to_now(server)
        first, _ = state.archive.gaps[-1]
        verdict = check_pitr(state, time.time())
        if state.archive.earliest is None:  # the base backup below not finished yet
            assert verdict.severity == "critical", verdict
            assert "the window is broken since" in verdict.reason, verdict
        assert first in verdict.reason, verdict
        assert any("is created again" in e.message for e in state.events), state.events
        assert any("the WAL between is lost" in e.message for e in state.events), state.events
        # Not a day's wait for the schedule: a base backup at once starts the window again.
        await wait_for(
            lambda: wal_archive.coverage(config.backup_directory).earliest is not None,
            "a base backup after the gap, the window restorable again from it",
            log=lambda: f"{state.archive.last_base_backup_error}",
        )
        # Whole again from that base backup on: green, the hole still named.
        await wait_for(
            lambda: check_pitr(state, time.time()).severity == "ok",
            "pitr ok again once the window is whole from the new base backup",
            log=lambda: str(check_pitr(state, time.time())),
        )
        verdict = check_pitr(state, time.time())
        assert f"WAL segments {first} to" in verdict.reason and "cannot be restored" in (
            verdict.reason
        ), verdict

    window = wal_archive.coverage(config.backup_directory)
    assert window.covers(moment) and len(window.ranges) == 2, window
    result = await restore(
        config, RestoreRequest(target_db="before the loss", database=LIBRARY, at=moment)
    )
    assert result.at_how is not None and result.at_how.startswith("point in time"), result
    assert server.sql("SELECT note FROM clips ORDER BY id", database="before the loss") == (
        "before-the-loss"
    )
