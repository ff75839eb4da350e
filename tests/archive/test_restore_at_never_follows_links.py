"""restore --at writes its throw-away cluster's settings and staged WAL as root into folders
the PostgreSQL user owns: a symbolic link planted there by that user (or by the throw-away
server itself) is replaced, never written through or chowned through (which would hand a
root file's content or ownership to the postgres user)."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

import pytest
from pgserver import PgServer
from pitr_support import LIBRARY, archive_running, archived_up_to_now, config_for

from laterbased.ops.restore.point_in_time import ThrowAwayCluster, _stage_wal
from laterbased.records import wal_archive

pytestmark = pytest.mark.slow


def _victim(tmp_path: Path) -> Path:
    victim = tmp_path / "root-only"
    victim.write_text("precious\n")
    victim.chmod(0o600)
    return victim


def _untouched(victim: Path) -> None:
    assert victim.read_text() == "precious\n", "written through a link"
    assert victim.stat().st_uid == os.geteuid(), "chowned through a link"


async def test_settings_and_staged_wal_replace_a_planted_link_instead_of_following_it(
    make_primary: Callable[..., PgServer], tmp_path: Path, state_dir: Path
) -> None:
    server = make_primary()
    server.create_database(LIBRARY)
    config = config_for(server, tmp_path, state_dir)
    async with archive_running(config):
        moment = server.sql("SELECT clock_timestamp()::text")
        server.sql("SELECT pg_switch_wal()")
        await archived_up_to_now(server)
    backups = wal_archive.list_base_backups(config.backup_directory)
    cluster = ThrowAwayCluster(config, backups[-1], "restore-links")
    try:
        await cluster.prepare(datetime.fromisoformat(moment))
        assert cluster.work is not None
        # Recovery stopped short, the settings are written again (recover() does this):
        # meanwhile the postgres user swapped a settings file for a link.
        victim = _victim(tmp_path)
        ident = cluster.data_dir / "pg_ident.conf"
        ident.unlink()
        ident.symlink_to(victim)
        await asyncio.to_thread(cluster._configure, None)
        _untouched(victim)
        assert not ident.is_symlink() and ident.read_text() == "", "replaced by our own"

        # The same for a staged WAL file.
        victim = _victim(tmp_path)
        staging = cluster.work / "wal"
        for entry in staging.iterdir():
            entry.unlink()
        first = wal_archive.segment_of_lsn(backups[-1].start_lsn, backups[-1].segment_size)
        planted = staging / wal_archive.segment_name(backups[-1].timeline, first)
        planted.symlink_to(victim)
        await asyncio.to_thread(
            _stage_wal, config.backup_directory, staging, backups[-1], cluster.run_as
        )
        _untouched(victim)
        assert not planted.is_symlink() and planted.stat().st_size > 0, "replaced by the WAL"
    finally:
        await cluster.close()
