"""restore --at a moment between the last good work and a mistake brings back exactly the rows
that existed at that moment, from the WAL archive (pg_receivewal) and a base backup."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from backup_files import publish_real_backup
from pgserver import PgServer
from pitr_support import (
    LIBRARY,
    ZONE,
    archive_running,
    archived_up_to_now,
    config_for,
    create_library,
    environment,
    rows,
)
from waiting import wait_for

from laterbased import cli
from laterbased.config import load_config
from laterbased.errors import EXIT_REFUSE
from laterbased.ops.restore.steps import RestoreRequest, restore
from laterbased.proc import pids_with_cwd_under
from laterbased.records import wal_archive
from laterbased.records.catalogue import Catalogue

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("mistake", ["DELETE FROM clips WHERE id > 1", "DROP TABLE clips"])
async def test_restore_at_a_moment_before_a_mistake_brings_back_the_rows_of_that_moment(
    make_primary: Callable[..., PgServer],
    tmp_path: Path,
    state_dir: Path,
    mistake: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    server = make_primary()
    create_library(server)
    config = config_for(server, tmp_path, state_dir)
    publish_real_backup(
        server, Catalogue(config.backup_directory), LIBRARY,
        started=datetime.now(UTC) - timedelta(minutes=5),
    )
    async with archive_running(config):
        # Work after the last dump, a moment, then the mistake.
        server.sql(
            "INSERT INTO clips VALUES (2, 'after-dump'), (3, 'also-after')", database=LIBRARY
        )
        moment = datetime.fromisoformat(server.sql("SELECT clock_timestamp()::text"))
        await asyncio.sleep(0.05)
        server.sql(mistake, database=LIBRARY)
        server.sql("SELECT pg_switch_wal()")
        server.sql("CREATE TABLE work_after_the_mistake (id int)", database=LIBRARY)
        await archived_up_to_now(server)
    window = wal_archive.coverage(config.backup_directory)
    assert window.covers(moment), window

    if mistake.startswith("DELETE"):
        # The command line, TIME without a zone: read in the configured timezone.
        local = moment.astimezone(ZoneInfo(ZONE)).replace(tzinfo=None).isoformat()
        env_file = tmp_path / ".env"
        settings = environment(server, tmp_path, state_dir)
        env_file.write_text("".join(f"{key}={value}\n" for key, value in settings.items()))
        argv = [
            "restore", "--env-file", str(env_file), "--database", LIBRARY, "--at", local,
            "--target-db", "back at the moment",
        ]
        assert await asyncio.to_thread(cli.main, argv) == 0
        out = capsys.readouterr().out
        assert "--at: point in time: exactly as it was at that moment" in out, out
        listing = ["backups", "list", "--env-file", str(env_file)]
        assert await asyncio.to_thread(cli.main, listing) == 0
        listed = capsys.readouterr().out
        assert "point in time (restore --at, any second): 20" in listed, listed
        assert "1 base backup(s)" in listed, listed
    else:
        result = await restore(
            config, RestoreRequest(target_db="back at the moment", database=LIBRARY, at=moment)
        )
        assert result.at_how is not None and result.at_how.startswith("point in time"), result

    assert rows(server, "back at the moment") == ["dumped", "after-dump", "also-after"]
    assert not list(state_dir.glob("pitr-restore-*")), "the throw-away cluster is removed"


async def test_restore_at_a_moment_outside_the_window_takes_the_newest_dump_and_says_so(
    make_primary: Callable[..., PgServer], tmp_path: Path, state_dir: Path
) -> None:
    server = make_primary()
    create_library(server)
    config = config_for(server, tmp_path, state_dir)
    publish_real_backup(
        server, Catalogue(config.backup_directory), LIBRARY,
        started=datetime.now(UTC) - timedelta(hours=2),
    )
    result = await restore(
        config,
        RestoreRequest(
            target_db="from the dump", database=LIBRARY,
            at=datetime.now(UTC) - timedelta(hours=1),
        ),
    )
    assert result.at_how is not None and "newest dump" in result.at_how
    assert "no restorable window" in result.at_how
    assert rows(server, "from the dump") == ["dumped"]


async def test_a_moment_after_the_last_commit_restores_everything_archived(
    make_primary: Callable[..., PgServer], tmp_path: Path, state_dir: Path
) -> None:
    # No autovacuum: no commit of its own may follow the moment.
    server = make_primary(autovacuum=False)
    server.create_database(LIBRARY)
    server.sql(
        'CREATE TABLE "SM_Project" (id int); CREATE TABLE clips (id int PRIMARY KEY, note text)',
        database=LIBRARY,
    )
    config = config_for(server, tmp_path, state_dir)
    async with archive_running(config):
        server.sql("INSERT INTO clips VALUES (1, 'last-work')", database=LIBRARY)
        moment = datetime.fromisoformat(server.sql("SELECT clock_timestamp()::text"))
        await asyncio.sleep(0.05)
        server.sql("SELECT pg_switch_wal()")  # WAL after the moment, but no commit
        await archived_up_to_now(server)
    result = await restore(
        config, RestoreRequest(target_db="idle since", database=LIBRARY, at=moment)
    )
    assert "nothing was committed after the moment" in result.source, result
    assert rows(server, "idle since") == ["last-work"]


async def test_a_cancelled_restore_at_a_moment_leaves_no_cluster_and_no_process(
    make_primary: Callable[..., PgServer], tmp_path: Path, state_dir: Path
) -> None:
    server = make_primary()
    server.create_database(LIBRARY)
    server.sql('CREATE TABLE "SM_Project" (id int)', database=LIBRARY)
    config = config_for(server, tmp_path, state_dir)
    async with archive_running(config):
        server.sql('INSERT INTO "SM_Project" VALUES (1)', database=LIBRARY)
        moment = datetime.fromisoformat(server.sql("SELECT clock_timestamp()::text"))
        server.sql(
            'INSERT INTO "SM_Project" VALUES (2); SELECT pg_switch_wal()', database=LIBRARY
        )
        await archived_up_to_now(server)
    task = asyncio.create_task(
        restore(config, RestoreRequest(target_db="never", database=LIBRARY, at=moment))
    )

    def throw_away_postgres() -> list[int]:
        return [
            pid for directory in state_dir.glob("pitr-restore-*")
            for pid in pids_with_cwd_under(directory)
        ]

    await wait_for(lambda: bool(throw_away_postgres()), "the throw-away postgres running")
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert list(state_dir.glob("pitr-restore-*")) == []
    assert throw_away_postgres() == []
    assert server.sql("SELECT count(*) FROM pg_database WHERE datname = 'never'") == "0"


async def test_a_moment_before_a_missing_segment_is_restored_one_past_it_refused_with_the_ranges(
    make_primary: Callable[..., PgServer],
    tmp_path: Path,
    state_dir: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    server = make_primary()
    server.create_database(LIBRARY)
    server.sql(
        'CREATE TABLE "SM_Project" (id int); CREATE TABLE clips (id int PRIMARY KEY, note text)',
        database=LIBRARY,
    )
    config = config_for(server, tmp_path, state_dir)
    async with archive_running(config) as state:
        server.sql("INSERT INTO clips VALUES (1, 'before-the-gap')", database=LIBRARY)
        moment = datetime.fromisoformat(server.sql("SELECT clock_timestamp()::text"))
        await asyncio.sleep(0.05)
        server.sql("DELETE FROM clips", database=LIBRARY)
        for step in range(2):
            server.sql(
                f"CREATE TABLE later{step} (id int); SELECT pg_switch_wal()", database=LIBRARY
            )
        await archived_up_to_now(server)
        complete = [
            s for s in wal_archive.list_segments(config.backup_directory) if not s.partial
        ]
        complete[-1].path.unlink()  # the segment after the one holding the moment

        def broken() -> bool:
            return bool(state.archive.gaps)

        await wait_for(broken, "the gap seen by the archive worker")
    window = wal_archive.coverage(config.backup_directory)
    assert window.gaps and window.earliest is None and window.covers(moment), window

    result = await restore(
        config, RestoreRequest(target_db="before the gap", database=LIBRARY, at=moment)
    )
    assert result.at_how is not None and result.at_how.startswith("point in time"), result
    assert rows(server, "before the gap") == ["before-the-gap"]

    # Past the gap: refused (exit 3) with the exact ranges, not silently an older dump.
    dumped = publish_real_backup(server, Catalogue(config.backup_directory), LIBRARY)
    later = datetime.now(UTC)
    env_file = tmp_path / ".env"
    settings = environment(server, tmp_path, state_dir)
    env_file.write_text("".join(f"{key}={value}\n" for key, value in settings.items()))
    argv = [
        "restore", "--env-file", str(env_file), "--database", LIBRARY,
        "--at", later.isoformat(), "--target-db", "in the gap",
    ]
    assert await asyncio.to_thread(cli.main, argv) == EXIT_REFUSE
    said = capsys.readouterr().err
    first, last = window.gaps[0]
    assert f"WAL segments {first} to {last} are missing" in said, said
    (only,) = window.ranges
    assert (
        f"Restorable exactly: {only.earliest.astimezone(UTC).isoformat()} to "
        f"{only.latest.astimezone(UTC).isoformat()}"
    ) in said, said
    assert f"--from-dump to restore the newest dump at or before it (started " \
        f"{dumped.started.isoformat()}" in said, said
    assert server.sql("SELECT count(*) FROM pg_database WHERE datname = 'in the gap'") == "0"

    # The way out it names: the dump, on purpose.
    assert await asyncio.to_thread(cli.main, [*argv, "--from-dump"]) == 0
    out = capsys.readouterr().out
    assert "--at: the newest dump at or before that moment" in out, out
    assert rows(server, "in the gap") == []


async def test_an_idle_library_is_restorable_up_to_now_not_only_to_its_last_write(
    make_primary: Callable[..., PgServer], tmp_path: Path, state_dir: Path
) -> None:
    server = make_primary(autovacuum=False)
    create_library(server, "last-write")
    env = environment(server, tmp_path, state_dir) | {"LATERBASED_MONITOR_INTERVAL": "1s"}
    config = load_config(None, env)
    async with archive_running(config):
        await archived_up_to_now(server)
        last_write = datetime.now(UTC)
        await asyncio.sleep(1.5)  # nothing written meanwhile
        moment = datetime.now(UTC)

        def reaches_the_moment() -> bool:
            latest = wal_archive.coverage(config.backup_directory).latest
            return latest is not None and latest >= moment

        await wait_for(reaches_the_moment, "the window reaching past the last write")
    assert moment > last_write + timedelta(seconds=1)
    result = await restore(config, RestoreRequest(target_db="idle", database=LIBRARY, at=moment))
    assert result.at_how is not None and result.at_how.startswith("point in time"), result
    assert rows(server, "idle") == ["last-write"]
