"""The undo window off-site: the upload job sends the archive's base backups and finished WAL
to the rclone remote, archive retention keeps what is not there yet, and ``restore --at``
brings a moment back from the remote alone when the local archive is gone."""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from backup_files import publish_real_backup
from pgserver import PgServer, free_port
from pitr_support import (
    LIBRARY,
    archive_running,
    archived_up_to_now,
    config_for,
    create_library,
    environment,
    rows,
)
from rclone_servers import S3Server, local_remote_env
from waiting import wait_for

from laterbased import cli
from laterbased.config import Config
from laterbased.offsite.upload import upload_pending
from laterbased.ops.restore.steps import RestoreRequest, restore
from laterbased.records import wal_archive
from laterbased.records.catalogue import Catalogue

pytestmark = pytest.mark.slow


async def work_then_a_mistake(server: PgServer, config: Config) -> datetime:
    """Rows written after the last dump, a moment, then a DELETE by mistake and more work;
    every segment holding it finished (switched), so the upload can send it. The moment."""
    server.sql("INSERT INTO clips VALUES (2, 'after-dump'), (3, 'also-after')", database=LIBRARY)
    moment = datetime.fromisoformat(server.sql("SELECT clock_timestamp()::text"))
    await asyncio.sleep(0.05)
    server.sql("DELETE FROM clips WHERE id > 1", database=LIBRARY)
    server.sql("CREATE TABLE work_after_the_mistake (id int)", database=LIBRARY)
    server.sql("SELECT pg_switch_wal()")
    await archived_up_to_now(server)
    return moment


def library(server: PgServer) -> None:
    create_library(server)


def delete_local_archive(config: Config) -> None:
    shutil.rmtree(wal_archive.wal_dir(config.backup_directory))
    shutil.rmtree(wal_archive.base_dir(config.backup_directory))


async def test_restore_at_a_moment_comes_from_the_remote_when_the_local_archive_is_gone(
    make_primary: Callable[..., PgServer],
    tmp_path: Path,
    state_dir: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    server = make_primary()
    library(server)
    remote = tmp_path / "offsite"
    settings = environment(server, tmp_path, state_dir) | local_remote_env(remote)
    config = config_for(server, tmp_path, state_dir, local_remote_env(remote))
    publish_real_backup(
        server, Catalogue(config.backup_directory), LIBRARY,
        started=datetime.now(UTC) - timedelta(minutes=5),
    )
    async with archive_running(config) as state:
        moment = await work_then_a_mistake(server, config)
        # The archive worker counts what waits for the remote (health, metrics, status).
        await wait_for(lambda: state.archive.pending_upload >= 2, "archive files pending upload")

        first = await upload_pending(config, state, run_id="first")
        assert first.result == "success", first.detail
        assert first.archive is not None and first.archive["uploaded"] >= 3, first.archive
        assert "point-in-time archive: " in (first.detail or ""), first.detail
        assert state.archive.pending_upload == 0
        assert state.archive.oldest_pending_upload is None
        sent = sorted(p.name for p in (remote / "@wal").iterdir())
        assert sent and not [name for name in sent if name.endswith(".partial")], sent
        (stamp,) = [p.name for p in (remote / "@base").iterdir()]
        assert (remote / "@base" / stamp / "manifest.json").is_file()
        assert (remote / "@base" / stamp / "base.tar.gz").is_file()

        # Idempotent: nothing is sent twice; a lost record is recognised on the remote.
        again = await upload_pending(config, state, run_id="again")
        assert again.archive is not None and again.archive["uploaded"] == 0, again.archive
        shutil.rmtree(wal_archive.wal_dir(config.backup_directory) / wal_archive.UPLOADED_DIR)
        recount = await upload_pending(config, state, run_id="recount")
        assert recount.archive is not None, recount
        assert recount.archive["uploaded"] == 0, recount.archive
        assert recount.archive["already_there"] == len(sent), recount.archive
    delete_local_archive(config)

    env_file = tmp_path / ".env"
    env_file.write_text("".join(f"{key}={value}\n" for key, value in settings.items()))
    argv = [
        "restore", "--env-file", str(env_file), "--database", LIBRARY,
        "--at", moment.isoformat(), "--target-db", "back from off-site",
    ]
    assert await asyncio.to_thread(cli.main, argv) == 0
    out = capsys.readouterr().out
    assert "--at: point in time: exactly as it was at that moment" in out, out
    assert f"WAL archive fetched from offsite:{remote}" in out, out
    assert rows(server, "back from off-site") == ["dumped", "after-dump", "also-after"]
    assert not list(state_dir.glob("pitr-restore-*")), "the throw-away cluster is removed"
    assert not list((config.backup_directory / ".partial").iterdir()), "nothing fetched is left"

    # Before the window off-site too: the newest dump, saying what the remote covers.
    older = await restore(
        config,
        RestoreRequest(
            target_db="before the window", database=LIBRARY,
            at=datetime.now(UTC) - timedelta(minutes=4),
        ),
    )
    assert older.at_how is not None and "newest dump" in older.at_how, older
    assert f"the archive on offsite:{remote} covers 20" in older.at_how, older.at_how
    assert rows(server, "before the window") == ["dumped"]


async def test_the_archive_goes_to_s3_and_comes_back_from_it_and_waits_while_s3_is_down(
    make_primary: Callable[..., PgServer], tmp_path: Path, state_dir: Path
) -> None:
    server = make_primary()
    library(server)
    s3 = S3Server(tmp_path / "s3root", free_port())
    config = config_for(
        server, tmp_path, state_dir, s3.remote_env() | {"LATERBASED_UPLOAD_RETRIES": "0"}
    )
    async with archive_running(config) as state:
        moment = await work_then_a_mistake(server, config)
        down = await upload_pending(config, state, run_id="down")  # never started
        assert down.result == "failed"
        assert "point-in-time archive" in down.failed, down.failed
        waiting = state.archive.pending_upload
        assert waiting >= 2 and state.archive.oldest_pending_upload is not None
        s3.start()
        try:
            up = await upload_pending(config, state, run_id="up")
            assert up.result == "success", up.detail
            assert state.archive.pending_upload == 0
        finally:
            s3.stop()
    delete_local_archive(config)
    stored = s3.root / s3.bucket / "laterbased"
    assert (stored / "@wal").is_dir() and (stored / "@base").is_dir()

    s3.start()
    try:
        result = await restore(
            config, RestoreRequest(target_db="back from s3", database=LIBRARY, at=moment)
        )
    finally:
        s3.stop()
    assert result.at_how is not None and result.at_how.startswith("point in time"), result
    assert f"fetched from offsite:{s3.bucket}/laterbased" in result.source, result.source
    assert rows(server, "back from s3") == ["dumped", "after-dump", "also-after"]


async def test_archive_retention_keeps_what_is_not_uploaded_yet(
    make_primary: Callable[..., PgServer], tmp_path: Path, state_dir: Path
) -> None:
    server = make_primary()
    library(server)
    remote = tmp_path / "offsite"
    # A base backup every 2 seconds and a window of 1 second: after each one, retention
    # would delete every older base backup and its WAL.
    config = config_for(
        server,
        tmp_path,
        state_dir,
        local_remote_env(remote)
        | {
            "LATERBASED_PITR_BASE_BACKUP_SCHEDULE": "* * * * * */2",
            "LATERBASED_PITR_WINDOW": "1s",
        },
    )
    root = config.backup_directory

    def stamps() -> list[str]:
        return [b.directory.name for b in wal_archive.list_base_backups(root)]

    async with archive_running(config) as state:
        first_backup = stamps()[0]
        first_segments = [s.name for s in wal_archive.list_segments(root) if not s.partial]
        await wait_for(
            lambda: len(stamps()) >= 3 or first_backup not in stamps(),
            "three base backups, or the first one deleted",
            timeout=90,
        )
        # None is off-site: retention kept them all, and all their WAL.
        assert stamps()[0] == first_backup, "a base backup not off-site yet was deleted"
        kept = {s.name for s in wal_archive.list_segments(root)}
        assert set(first_segments) <= kept

        before = stamps()
        result = await upload_pending(config, state, run_id="upload")
        assert result.result == "success", result.detail

        # The next base backups' retention lets what is off-site go (never the newest):
        # the first base backup, and the WAL before the oldest one kept.
        def tidied() -> bool:
            kept_backups = wal_archive.list_base_backups(root)
            if first_backup in stamps() or not kept_backups:
                return False
            first_needed = wal_archive.segment_of_lsn(kept_backups[0].start_lsn)
            left = {s.name: s.number for s in wal_archive.list_segments(root)}
            return first_segments[0] not in left and all(
                left[name] >= first_needed for name in first_segments if name in left
            )

        await wait_for(tidied, "the uploaded old base backup and its WAL deleted")
    records = wal_archive.base_dir(root) / wal_archive.UPLOADED_DIR
    assert {p.name for p in records.iterdir()} <= set(stamps()), "records go with them"
    on_remote = sorted(p.name for p in (remote / "@base").iterdir())
    assert set(before) <= set(on_remote), "what retention deleted is off-site"


def processes_mentioning(text: str) -> list[int]:
    """PIDs whose command line names ``text`` (an rclone still fetching into a folder)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().decode("utf-8", "replace")
        except OSError:
            continue
        if text in cmdline:
            found.append(int(entry.name))
    return found


async def test_a_restore_from_the_remote_cancelled_while_fetching_leaves_nothing_behind(
    make_primary: Callable[..., PgServer], tmp_path: Path, state_dir: Path
) -> None:
    server = make_primary()
    library(server)
    remote = tmp_path / "offsite"
    config = config_for(server, tmp_path, state_dir, local_remote_env(remote))
    async with archive_running(config) as state:
        moment = await work_then_a_mistake(server, config)
        assert (await upload_pending(config, state, run_id="up")).result == "success"
    delete_local_archive(config)
    partial = config.backup_directory / ".partial"

    def fetching() -> bool:
        return any(partial.glob("restore-*/remote-archive"))

    task = asyncio.create_task(
        restore(config, RestoreRequest(target_db="never", database=LIBRARY, at=moment))
    )
    await wait_for(fetching, "the restore fetching the archive from the remote")
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert not list(partial.glob("restore-*")), "the fetched archive is removed"
    assert not list(state_dir.glob("pitr-restore-*")), "no throw-away cluster is left"
    assert processes_mentioning(str(partial)) == [], "no rclone still fetching"
    assert server.sql("SELECT count(*) FROM pg_database WHERE datname = 'never'") == "0"
