"""Base backups of the point-in-time archive come from the local standby while it streams (the
Resolve server does not read its data directory for them), else from the primary; the base
backup's manifest and the log say which, and a restore to a moment from a base backup taken
on the standby (its WAL from the archive, streamed from the primary) brings back that moment.

The servers log every connection (``log_connections``): whether pg_basebackup reached the
primary is read from the primary's own log (its ``application_name``).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from pgserver import PgServer
from pitr_support import LIBRARY, archive_running, archived_up_to_now, create_library, rows
from pitr_support import config_for as pitr_config
from streaming_standby import StreamingStandby
from waiting import wait_for

from laterbased.archive.basebackup import take_base_backup
from laterbased.config import Config
from laterbased.ops.restore.steps import RestoreRequest, restore
from laterbased.records import wal_archive

pytestmark = pytest.mark.slow

BASEBACKUP_APPLICATION = "application_name=laterbased_archive_basebackup"


@pytest.fixture
def pair(make_primary: Callable[..., PgServer]) -> Iterator[tuple[PgServer, StreamingStandby]]:
    primary = make_primary(log_connections="on")
    create_library(primary, "before")
    standby = StreamingStandby.running(primary, "base_backup_source_slot")
    try:
        yield primary, standby
    finally:
        standby.cleanup()


def config_for(
    server: PgServer, standby: StreamingStandby, work: Path, state_dir: Path, **extra: str
) -> Config:
    return pitr_config(
        server, work, state_dir, {"LATERBASED_STANDBY_PORT": str(standby.port)} | extra
    )


async def standby_restartpoint(primary: PgServer, standby: StreamingStandby) -> None:
    """A checkpoint on the primary, replayed, and a restartpoint on the standby there: what a
    standby does by itself every checkpoint_timeout while the primary works."""
    primary.sql("CHECKPOINT")
    target = primary.sql("SELECT pg_current_wal_flush_lsn()")
    await wait_for(
        lambda: standby.sql(f"SELECT pg_last_wal_replay_lsn() >= '{target}'::pg_lsn") == "t",
        f"the standby replayed up to {target}",
    )
    standby.sql("CHECKPOINT")


def log_since(path: Path, offset: int) -> str:
    with open(path, "rb") as handle:
        handle.seek(offset)
        return handle.read().decode(errors="replace")


def manifest_source(backup: wal_archive.BaseBackup) -> str:
    return str(json.loads((backup.directory / wal_archive.BASE_MANIFEST).read_text())["source"])


async def test_base_backup_comes_from_the_streaming_standby_and_restores_to_a_moment(
    pair: tuple[PgServer, StreamingStandby], tmp_path: Path, state_dir: Path, caplog: Any
) -> None:
    primary, standby = pair
    config = config_for(primary, standby, tmp_path, state_dir)
    caplog.set_level("INFO", logger="laterbased.archive.basebackup")
    async with archive_running(config):
        await standby_restartpoint(primary, standby)
        primary_log = primary.log_file.stat().st_size
        standby_log = standby.log_file.stat().st_size
        backup = await take_base_backup(config)
        assert backup.source == "standby", caplog.text
        assert manifest_source(backup) == "standby"
        assert "base backup source: the standby" in caplog.text
        assert "base backup finished source=standby" in caplog.text
        assert BASEBACKUP_APPLICATION in log_since(standby.log_file, standby_log)
        assert BASEBACKUP_APPLICATION not in log_since(primary.log_file, primary_log)

        # Work after the base backup, a moment, then the mistake.
        primary.sql("INSERT INTO clips VALUES (2, 'after-base')", database=LIBRARY)
        moment = datetime.fromisoformat(primary.sql("SELECT clock_timestamp()::text"))
        await asyncio.sleep(0.05)
        primary.sql("DELETE FROM clips", database=LIBRARY)
        primary.sql("SELECT pg_switch_wal()")
        await archived_up_to_now(primary)

    chosen = wal_archive.base_backup_for(config.backup_directory, moment)
    assert chosen is not None and chosen.directory == backup.directory, chosen
    result = await restore(
        config, RestoreRequest(target_db="back at the moment", database=LIBRARY, at=moment)
    )
    assert result.at_how is not None and result.at_how.startswith("point in time"), result
    assert rows(primary, "back at the moment") == ["before", "after-base"]


async def test_base_backup_comes_from_the_primary_when_the_standby_lags_or_is_stopped(
    pair: tuple[PgServer, StreamingStandby], tmp_path: Path, state_dir: Path, caplog: Any
) -> None:
    primary, standby = pair
    config = config_for(
        primary, standby, tmp_path, state_dir, LATERBASED_MONITOR_MAX_LAG_BYTES="1MB"
    )
    caplog.set_level("INFO", logger="laterbased.archive.basebackup")
    async with archive_running(config):
        await standby_restartpoint(primary, standby)
        # Replay paused (by someone), the standby falls 3 MB behind a 1 MB limit.
        standby.sql("SELECT pg_wal_replay_pause()")
        primary.sql(
            "CREATE TABLE bulk AS SELECT i, repeat(md5(i::text), 8) AS pad "
            "FROM generate_series(1, 12000) i",
            database=LIBRARY,
        )
        target = primary.sql("SELECT pg_current_wal_flush_lsn()")
        await wait_for(
            lambda: standby.sql(f"SELECT pg_last_wal_receive_lsn() >= '{target}'::pg_lsn")
            == "t",
            f"the standby received up to {target}",
        )
        lagging = await take_base_backup(config)
        assert lagging.source == "primary"
        assert manifest_source(lagging) == "primary"
        assert "behind the primary (limit monitor.max_lag_bytes 1" in caplog.text, caplog.text
        standby.sql("SELECT pg_wal_replay_resume()")

        await asyncio.to_thread(standby.stop)
        primary_log = primary.log_file.stat().st_size
        stopped = await take_base_backup(config)
        assert stopped.source == "primary"
        assert "does not accept connections" in caplog.text, caplog.text
        assert BASEBACKUP_APPLICATION in log_since(primary.log_file, primary_log)


async def test_base_backup_falls_back_to_the_primary_when_the_standby_refuses_pg_basebackup(
    pair: tuple[PgServer, StreamingStandby], tmp_path: Path, state_dir: Path, caplog: Any
) -> None:
    primary, standby = pair
    # A standby whose pg_hba.conf (a copy of the primary's: Windows installers write their
    # own) has no replication line for this host: SQL works, pg_basebackup does not.
    hba = standby.data_dir / "pg_hba.conf"
    hba.write_text("host replication all 127.0.0.1/32 reject\n" + hba.read_text())
    standby.sql("SELECT pg_reload_conf()")
    config = config_for(primary, standby, tmp_path, state_dir)
    caplog.set_level("INFO", logger="laterbased.archive.basebackup")
    async with archive_running(config):
        await standby_restartpoint(primary, standby)
        backup = await take_base_backup(config)
    assert "base backup source: the standby" in caplog.text, caplog.text
    assert "base backup from the standby 127.0.0.1:" in caplog.text
    assert "failed" in caplog.text and "taking it from the primary" in caplog.text
    assert backup.source == "primary"
    assert manifest_source(backup) == "primary"
    assert [b.source for b in wal_archive.list_base_backups(config.backup_directory)].count(
        "primary"
    ) == len(wal_archive.list_base_backups(config.backup_directory))
    assert not list(wal_archive.base_dir(config.backup_directory).glob(".partial-*"))
