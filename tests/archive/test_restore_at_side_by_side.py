"""Two restores --at at once, and a damaged archive: a restore running beside another is left
alone (not killed as a leftover), and a damaged WAL file or base backup is named in the
refusal, never a traceback; nothing is left behind either way."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

import pytest
from pgserver import PgServer
from pitr_support import LIBRARY, archive_running, archived_up_to_now, config_for, environment

from laterbased import cli
from laterbased.config import Config
from laterbased.errors import EXIT_SOFTWARE
from laterbased.ops.restore.point_in_time import ThrowAwayCluster
from laterbased.proc import pids_with_cwd_under
from laterbased.records import wal_archive

pytestmark = pytest.mark.slow


async def _archive_with_a_moment(
    server: PgServer, tmp_path: Path, state_dir: Path
) -> tuple[Config, datetime]:
    """An archive whose one base backup restores ``moment`` with its WAL in complete
    segments (switched after it)."""
    server.create_database(LIBRARY)
    server.sql(
        'CREATE TABLE "SM_Project" (id int); CREATE TABLE clips (id int PRIMARY KEY, note text)',
        database=LIBRARY,
    )
    config = config_for(server, tmp_path, state_dir)
    async with archive_running(config):
        server.sql("INSERT INTO clips VALUES (1, 'at-the-moment')", database=LIBRARY)
        moment = datetime.fromisoformat(server.sql("SELECT clock_timestamp()::text"))
        await asyncio.sleep(0.05)
        server.sql("DELETE FROM clips; SELECT pg_switch_wal()", database=LIBRARY)
        await archived_up_to_now(server)
    return config, moment


def _left_behind(state_dir: Path) -> list[str]:
    return sorted(p.name for p in state_dir.iterdir() if "pitr-restore" in p.name)


async def test_a_second_restore_at_leaves_the_first_ones_throw_away_cluster_alone(
    make_primary: Callable[..., PgServer], tmp_path: Path, state_dir: Path
) -> None:
    server = make_primary()
    config, moment = await _archive_with_a_moment(server, tmp_path, state_dir)
    backup = wal_archive.base_backup_for(config.backup_directory, moment)
    assert backup is not None
    # What a SIGKILLed restore left: still cleared by the next one.
    (state_dir / "pitr-restore-killed" / "data").mkdir(parents=True)

    first = ThrowAwayCluster(config, backup, "restore-first")
    second = ThrowAwayCluster(config, backup, "restore-second")
    try:
        await first.prepare(moment)
        assert not (state_dir / "pitr-restore-killed").exists(), "the leftover is removed"
        # The second operator starts while the first restore is under way.
        await second.prepare(moment)
        assert first.work is not None and (first.work / "data" / "PG_VERSION").exists(), (
            "the second restore removed the first one's throw-away cluster"
        )
        for cluster, name in ((first, "first"), (second, "second")):
            await cluster.recover(moment)
            await cluster.dump(LIBRARY, tmp_path / f"{name}.dump")
            assert (tmp_path / f"{name}.dump").stat().st_size > 0
    finally:
        await first.close()
        await second.close()
    assert _left_behind(state_dir) == []


@pytest.mark.parametrize("damage", ["wrong bytes", "cut short"])
async def test_a_damaged_wal_file_is_named_in_the_refusal_not_a_traceback(
    make_primary: Callable[..., PgServer],
    tmp_path: Path,
    state_dir: Path,
    capsys: pytest.CaptureFixture[str],
    damage: str,
) -> None:
    server = make_primary()
    config, moment = await _archive_with_a_moment(server, tmp_path, state_dir)
    backup = wal_archive.base_backup_for(config.backup_directory, moment)
    assert backup is not None
    first = wal_archive.segment_of_lsn(backup.start_lsn, backup.segment_size)
    (segment,) = [
        s for s in wal_archive.list_segments(config.backup_directory)
        if s.number == first and not s.partial
    ]
    data = segment.path.read_bytes()
    segment.path.write_bytes(b"\0" + data[1:] if damage == "wrong bytes" else data[:-64])

    env_file = tmp_path / ".env"
    settings = environment(server, tmp_path, state_dir)
    env_file.write_text("".join(f"{key}={value}\n" for key, value in settings.items()))
    argv = [
        "restore", "--env-file", str(env_file), "--database", LIBRARY,
        "--at", moment.isoformat(), "--target-db", "from a damaged archive",
    ]
    code = await asyncio.to_thread(cli.main, argv)
    said = capsys.readouterr().err
    assert code not in (0, EXIT_SOFTWARE), said
    assert "Traceback" not in said, said
    assert f"the archive's WAL file {segment.path} is damaged" in said, said
    assert _left_behind(state_dir) == []
    assert not [pid for pid in pids_with_cwd_under(state_dir)]
    assert server.sql(
        "SELECT count(*) FROM pg_database WHERE datname = 'from a damaged archive'"
    ) == "0"


async def test_a_damaged_base_backup_is_named_with_tars_own_words(
    make_primary: Callable[..., PgServer],
    tmp_path: Path,
    state_dir: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    server = make_primary()
    config, moment = await _archive_with_a_moment(server, tmp_path, state_dir)
    backup = wal_archive.base_backup_for(config.backup_directory, moment)
    assert backup is not None
    data = backup.tar.read_bytes()
    backup.tar.write_bytes(data[: len(data) // 2])

    env_file = tmp_path / ".env"
    settings = environment(server, tmp_path, state_dir)
    env_file.write_text("".join(f"{key}={value}\n" for key, value in settings.items()))
    argv = [
        "restore", "--env-file", str(env_file), "--database", LIBRARY,
        "--at", moment.isoformat(), "--target-db", "from a damaged base backup",
    ]
    code = await asyncio.to_thread(cli.main, argv)
    said = capsys.readouterr().err
    assert code not in (0, EXIT_SOFTWARE), said
    refusal = [line for line in said.splitlines() if line.startswith("laterbased: ")]
    assert refusal and f"extracting {backup.tar} failed (damaged?): tar: " in refusal[-1], said
    assert "['" not in refusal[-1], "tar's words, not a Python list"
    assert _left_behind(state_dir) == []
