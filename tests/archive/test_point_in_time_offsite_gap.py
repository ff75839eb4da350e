"""restore --at from the remote alone (the local archive gone) refuses a moment in a gap of
the remote's archive with the ranges it can restore, as it does for a gap in the local one,
instead of quietly restoring an older dump."""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from backup_files import publish_real_backup
from pgserver import PgServer
from pitr_support import (
    LIBRARY,
    archive_running,
    archived_up_to_now,
    config_for,
    create_library,
    environment,
)
from rclone_servers import local_remote_env

from laterbased import cli
from laterbased.errors import EXIT_REFUSE
from laterbased.offsite.upload import upload_pending
from laterbased.records import wal_archive
from laterbased.records.catalogue import Catalogue

pytestmark = pytest.mark.slow


async def test_a_moment_in_a_gap_of_the_remote_archive_is_refused_with_its_ranges(
    make_primary: Callable[..., PgServer],
    tmp_path: Path,
    state_dir: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    server = make_primary()
    create_library(server)
    remote = tmp_path / "offsite"
    config = config_for(server, tmp_path, state_dir, local_remote_env(remote))
    publish_real_backup(
        server, Catalogue(config.backup_directory), LIBRARY,
        started=datetime.now(UTC) - timedelta(minutes=5),
    )
    async with archive_running(config) as state:
        # The segment before the moment's is finished (and received) before the moment, and
        # the base backup's end lies before it (a write first: a switch out of an empty
        # segment does nothing).
        for _ in range(2):
            server.sql("CREATE TABLE IF NOT EXISTS before (id int)", database=LIBRARY)
            server.sql("SELECT pg_switch_wal()")
        await archived_up_to_now(server)
        await asyncio.sleep(0.05)
        server.sql("INSERT INTO clips VALUES (2, 'after-dump')", database=LIBRARY)
        moment = datetime.fromisoformat(server.sql("SELECT clock_timestamp()::text"))
        await asyncio.sleep(0.05)
        server.sql("DELETE FROM clips", database=LIBRARY)
        holding = server.sql("SELECT pg_walfile_name(pg_current_wal_lsn())")
        for _ in range(2):
            server.sql("SELECT pg_switch_wal()")
            server.sql("CREATE TABLE IF NOT EXISTS later (id int)", database=LIBRARY)
        await archived_up_to_now(server)
        sent = await upload_pending(config, state, run_id="upload")
        assert sent.result == "success", sent.detail
    # The backup disk is lost, and the remote lost the segment holding the moment.
    shutil.rmtree(wal_archive.wal_dir(config.backup_directory))
    shutil.rmtree(wal_archive.base_dir(config.backup_directory))
    (remote / "@wal" / f"{holding}.gz").unlink()

    env_file = tmp_path / ".env"
    settings = environment(server, tmp_path, state_dir) | local_remote_env(remote)
    env_file.write_text("".join(f"{key}={value}\n" for key, value in settings.items()))
    argv = [
        "restore", "--env-file", str(env_file), "--database", LIBRARY,
        "--at", moment.isoformat(), "--target-db", "in the remote's gap",
    ]
    assert await asyncio.to_thread(cli.main, argv) == EXIT_REFUSE
    said = capsys.readouterr().err
    assert f"cannot be restored from the point-in-time archive on offsite:{remote}" in said, said
    assert f"WAL segments {holding} to {holding} are missing" in said, said
    assert "Restorable exactly: 20" in said, said
    assert "--from-dump" in said, said
    assert server.sql(
        "SELECT count(*) FROM pg_database WHERE datname = 'in the remote''s gap'"
    ) == "0"
    assert not list((config.backup_directory / ".partial").iterdir()), "nothing fetched is left"
