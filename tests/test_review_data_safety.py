"""Data-safety review: ways a facility could lose a backup or believe in a bad one.

Each test reproduces one bug found in review, on real parts (pg_dump of the test primary,
a real rclone local remote, real servers), and pins its fix.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import tempfile
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import pytest
from backup_files import publish_real_backup
from backup_support import make_config
from pgserver import PgServer
from waiting import wait_for

from laterbased.backup.dump import run_dumps
from laterbased.backup.prune import RetentionPolicy, prune
from laterbased.config import Config, load_config
from laterbased.core.state import State
from laterbased.errors import JobFailed
from laterbased.offsite import rclone as rclone_module
from laterbased.offsite.upload import upload_pending
from laterbased.ops.restore.steps import Restorer, RestoreRequest, restore
from laterbased.records import catalogue as backups_module
from laterbased.records.catalogue import Catalogue

pytestmark = pytest.mark.slow


@pytest.fixture
def work() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="laterbased-review-") as base:
        yield Path(base)


def with_local_remote(primary: PgServer, work: Path) -> Config:
    config = make_config(primary, work / "backups")
    env = {
        "PRIMARY_HOST": "resolve.local",
        "HOME": "/nonexistent-home",
        "RCLONE_REMOTE_NAME": "offsite",
        "RCLONE_REMOTE_PATH": str(work / "remote"),
        "RCLONE_REMOTE_1_NAME": "offsite",
        "RCLONE_REMOTE_1_TYPE": "local",
        "LATERBASED_UPLOAD_RETRIES": "0",
    }
    return dataclasses.replace(config, upload=load_config(None, env).upload)


async def test_upload_finishing_after_verify_keeps_the_verify_verdict(
    primary: PgServer, work: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The upload job reads the catalogue when it starts and marks each backup uploaded
    when its copy is done; the verify job runs on its own schedule meanwhile. A verdict
    'damaged' written while the upload was running must survive the upload's mark (it
    used to rewrite the manifest from its stale copy: the bad backup became 'good')."""
    config = with_local_remote(primary, work)
    catalogue = Catalogue(config.backup_directory)
    record = publish_real_backup(primary, catalogue, "postgres")

    real_copyto = rclone_module.Rclone.copyto
    verdicts: list[str] = []

    async def copyto_while_verify_runs(
        self: rclone_module.Rclone, local: Path, remote: str
    ) -> None:
        if not verdicts:  # the verify job lands its verdict while the data is on its way
            verdicts.append("damaged")
            catalogue.mark_verified(record, False, "checksum mismatch (test)")
        await real_copyto(self, local, remote)

    monkeypatch.setattr(rclone_module.Rclone, "copyto", copyto_while_verify_runs)
    result = await upload_pending(config, State(config=config), catalogue)
    assert result.result == "success", result.detail
    [listed] = catalogue.list_backups()
    assert listed.uploaded_at is not None, "the upload mark is recorded"
    assert listed.verified is False, "the verify verdict was lost by the upload's mark"
    assert listed.verify_detail == "checksum mismatch (test)"
    assert not listed.good


def test_marks_from_a_stale_record_keep_each_others_fields(primary: PgServer, work: Path) -> None:
    """mark_uploaded / mark_verified / mark_confirmed change only their own fields."""
    catalogue = Catalogue(work / "backups")
    stale = publish_real_backup(primary, catalogue, "postgres")
    when = datetime(2026, 11, 26, 13, 0, tzinfo=UTC)
    catalogue.mark_uploaded(stale, "offsite:/x", when)
    catalogue.mark_verified(stale, True, "sha256 ok", when, drill={"ok": True})
    catalogue.mark_confirmed(stale, when)
    [listed] = catalogue.list_backups()
    assert listed.uploaded_to == "offsite:/x" and listed.uploaded_at == when
    assert listed.verified is True and listed.drill == {"ok": True}
    assert listed.confirmed_at == when


# --- restore ------------------------------------------------------------------------------

SOURCE = "review proj"


def restore_config(server: PgServer, work: Path) -> Config:
    return load_config(
        None,
        {
            "PRIMARY_HOST": server.host,
            "PRIMARY_PORT": str(server.port),
            "PRIMARY_USER": server.superuser,
            "REPL_PASSWORD": server.superuser_password,
            "LOCAL_BACKUP_PATH": str(work / "backups"),
            "LATERBASED_STATE_DIR": str(work / "state"),
        },
    )


def database_names(server: PgServer) -> set[str]:
    return set(server.sql("SELECT datname FROM pg_database").splitlines())


async def test_replace_that_fails_halfway_leaves_the_target_under_its_name(
    make_primary: Callable[..., PgServer], work: Path
) -> None:
    """--replace renames the old database aside, then the restored one in. When the second
    rename fails, the old one must still carry the name Resolve opens (it used to stay
    renamed aside, and the restored copy was dropped: the project library vanished)."""
    server = make_primary()
    server.create_database("Target")
    server.sql("CREATE TABLE keep (id int); INSERT INTO keep VALUES (1)", database="Target")
    work_name = "laterbased_restore_review"
    server.create_database(work_name)
    config = restore_config(server, work)
    restorer = Restorer(config, RestoreRequest(target_db="Target", replace=True))
    holder = await server.connect(work_name)  # the second rename cannot proceed
    try:
        with pytest.raises(asyncpg.PostgresError, match="accessed by other users"):
            await restorer._swap(work_name)
    finally:
        await holder.close()
    names = database_names(server)
    assert "Target" in names, f"the target lost its name: {sorted(names)}"
    assert not [n for n in names if n.startswith("Target_before_restore_")]
    assert server.sql("SELECT count(*) FROM keep", database="Target") == "1"


async def test_truncated_plain_gzip_file_fails_the_restore(
    make_primary: Callable[..., PgServer], work: Path
) -> None:
    """A .sql.gz without a manifest (--file) cannot be checked by sha256; a truncated one
    must fail the restore, not restore part of the database and report success."""
    server = make_primary()
    server.create_database(SOURCE)
    server.sql(
        "CREATE TABLE clips (id int PRIMARY KEY, note text);"
        "INSERT INTO clips SELECT g, md5(g::text) FROM generate_series(1, 200000) g;"
        "CREATE TABLE later (id int); INSERT INTO later VALUES (1);",
        database=SOURCE,
    )
    config = restore_config(server, work)
    record = publish_real_backup(server, Catalogue(config.backup_directory), SOURCE, "plain-gzip")
    loose = work / "loose.sql.gz"
    data = record.path.read_bytes()
    loose.write_bytes(data[: len(data) // 2])
    with pytest.raises(JobFailed, match="damaged|truncated|ended"):
        await restore(config, RestoreRequest(target_db="Truncated", file=loose))
    assert "Truncated" not in database_names(server)
    assert not [n for n in database_names(server) if n.startswith("laterbased_restore_")]


# --- durability ---------------------------------------------------------------------------


def test_first_backup_of_a_database_makes_its_new_directory_durable(
    primary: PgServer, work: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """fsync of a file does not put a *new* directory's entry on disk: the root that holds
    ``<root>/<db>/`` must be fsynced too when the first backup of a database creates it."""
    synced: list[Path] = []
    real = backups_module.fsync_directory

    def record_fsync(directory: Path) -> None:
        synced.append(Path(directory))
        real(directory)

    monkeypatch.setattr(backups_module, "fsync_directory", record_fsync)
    catalogue = Catalogue(work / "backups")
    record = publish_real_backup(primary, catalogue, "postgres")
    assert record.directory in synced
    assert catalogue.root in synced, f"the new {record.directory.name}/ entry was never synced"


# --- skip-unchanged -----------------------------------------------------------------------


async def test_skip_unchanged_does_not_miss_a_write_whose_session_is_still_busy(
    make_primary: Callable[..., PgServer], work: Path
) -> None:
    """A backend reports its write counters to pg_stat_database only when it goes idle. A
    row committed by a session that is still running something else is invisible to the
    fingerprint: the run must not call the database unchanged (it used to skip the dump
    and confirm the old backup as fresh, with a committed row in no backup)."""
    server = make_primary()
    server.create_database("proj")
    server.sql("CREATE TABLE t (id int); INSERT INTO t VALUES (0)", database="proj")
    config = make_config(server, work / "backups", databases=("proj",))
    catalogue = Catalogue(config.backup_directory)
    [first] = await run_dumps(config, catalogue, "review-1")
    assert first.result == "success", first.detail

    writer = await server.connect("proj")
    busy = asyncio.create_task(
        writer.execute("BEGIN; INSERT INTO t VALUES (1); COMMIT; SELECT pg_sleep(30)")
    )
    try:
        await wait_for(
            lambda: server.sql("SELECT count(*) FROM t", database="proj") == "2",
            "the busy session's row committed",
            10,
        )
        [second] = await run_dumps(config, catalogue, "review-2")
    finally:
        busy.cancel()
        with contextlib.suppress(asyncio.CancelledError, asyncpg.PostgresError):
            await busy
        writer.terminate()
    assert second.result == "success", f"committed row missed: {second.result} {second.detail}"


# --- retention ----------------------------------------------------------------------------


async def test_retention_never_deletes_the_last_backup_of_a_database(
    primary: PgServer, work: Path
) -> None:
    """Every backup of a database judged damaged by verify (a damaged disk, or a verify that
    could not run: pg_restore missing, a timeout) and older than retention_days, while the
    dumps fail (primary down for a week): prune used to delete them all, leaving nothing to
    try. The newest one that exists stays."""
    catalogue = Catalogue(work / "backups")
    now = datetime.now(UTC)
    for days in (10, 9, 8):
        started = now - timedelta(days=days)
        record = publish_real_backup(primary, catalogue, "postgres", started=started)
        catalogue.mark_verified(record, False, "pg_restore --list timed out")
    policy = RetentionPolicy(retention_days=7, min_keep=3)
    outcome = await prune(catalogue, policy, now, UTC, "review-prune")
    left = catalogue.list_backups("postgres")
    assert [r.path.exists() for r in left] == [True], f"deleted: {outcome.deleted}"
    assert max(r.started for r in outcome.deleted) < left[0].started
