"""The upload step on real backups (pg_dump of the test primary) and real rclone remotes."""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
import os
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import pytest_asyncio
from backup_files import publish_real_backup
from backup_support import make_config
from pgserver import PgServer, free_port
from rclone_servers import SECRET_KEY, S3Server, local_remote_env

from laterbased.backup.runner import run_backup_chain
from laterbased.config import Config, load_config
from laterbased.core.state import State
from laterbased.offsite import rclone as rclone_module
from laterbased.offsite.rclone import RemoteEntry
from laterbased.offsite.upload import remote_expired, upload_pending
from laterbased.records.catalogue import BackupRecord, Catalogue, manifest_name

pytestmark = pytest.mark.slow
FAST = {
    "PRIMARY_HOST": "resolve.local",
    "HOME": "/nonexistent-home",
    "LATERBASED_UPLOAD_RETRIES": "2",
    "LATERBASED_UPLOAD_RETRY_BACKOFF": "0.05",
    "LATERBASED_UPLOAD_RETRY_BACKOFF_MAX": "0.1",
}


@pytest.fixture(autouse=True)
def quick_low_level_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RCLONE_LOW_LEVEL_RETRIES", "1")


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def project_db(primary: PgServer) -> AsyncIterator[str]:
    name = "upload proj ø"
    primary.create_database(name)
    primary.sql('CREATE TABLE "SM_Project" (id int, name text)', name)
    yield name


@pytest.fixture
def work() -> Iterator[Path]:
    base = Path(tempfile.mkdtemp(prefix="laterbased-upload-test-"))
    try:
        yield base
    finally:
        subprocess.run(["rm", "-rf", str(base)], check=False)


def with_upload(primary: PgServer, backups: Path, env: dict[str, str], **backup: object) -> Config:
    config = make_config(primary, backups, **backup)  # type: ignore[arg-type]
    return dataclasses.replace(config, upload=load_config(None, FAST | env).upload)


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def remote_copy(dest: Path, record: BackupRecord) -> Path:
    return dest / record.directory.name / record.file


async def test_local_remote_receives_backups_and_manifests_record_the_upload(
    primary: PgServer, project_db: str, work: Path
) -> None:
    catalogue = Catalogue(work / "backups")
    older = publish_real_backup(
        primary, catalogue, project_db, started=datetime.now(UTC) - timedelta(hours=1)
    )
    newer = publish_real_backup(primary, catalogue, project_db)
    dest = work / "offsite"
    config = with_upload(primary, work / "backups", local_remote_env(dest))
    state = State(config=config)

    result = await upload_pending(config, state, catalogue, "run-1")

    assert result.result == "success", result.detail
    assert result.uploaded == [newer.file, older.file], "newest goes first"
    for record in (older, newer):
        arrived = remote_copy(dest, record)
        assert sha256_of(arrived) == record.sha256
        remote_manifest = json.loads((arrived.parent / manifest_name(record.file)).read_text())
        assert remote_manifest["sha256"] == record.sha256
        assert remote_manifest["uploaded_to"] == f"offsite:{arrived}"
    local = {r.file: r for r in catalogue.list_backups(project_db)}
    assert local[newer.file].uploaded_to == f"offsite:{remote_copy(dest, newer)}"
    assert local[newer.file].uploaded_at is not None
    assert state.upload_bytes == older.size + newer.size
    assert state.upload_last_success is not None
    assert state.backup(project_db).pending_upload == 0
    assert state.backup(project_db).oldest_pending_upload is None

    again = await upload_pending(config, state, catalogue, "run-2")
    assert again.result == "success" and again.uploaded == [] and again.already_there == []


async def test_a_copy_already_on_the_remote_is_not_sent_again_but_a_bad_one_is(
    primary: PgServer, project_db: str, work: Path
) -> None:
    catalogue = Catalogue(work / "backups")
    record = publish_real_backup(primary, catalogue, project_db)
    dest = work / "offsite"
    config = with_upload(primary, work / "backups", local_remote_env(dest))
    state = State(config=config)
    assert (await upload_pending(config, state, catalogue, "first")).uploaded == [record.file]
    # The manifest mark got lost (crash between copy and mark): the remote is asked first.
    catalogue.rewrite_manifest(record)
    second = await upload_pending(config, state, catalogue, "second")
    assert second.already_there == [record.file] and second.bytes_sent == 0
    # Same size, different bytes off-site: sha256 tells, and it is sent again.
    catalogue.rewrite_manifest(record)
    remote_copy(dest, record).write_bytes(b"\0" * record.size)
    third = await upload_pending(config, state, catalogue, "third")
    assert third.uploaded == [record.file]
    assert sha256_of(remote_copy(dest, record)) == record.sha256


async def test_a_copy_the_remote_truncated_is_not_recorded_as_uploaded(
    primary: PgServer, project_db: str, work: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """rclone said the copy went well, but the object off-site is short (a remote that lost
    the end of it): the upload fails and the backup stays not-uploaded, so retention keeps
    it and the next run sends it again."""
    catalogue = Catalogue(work / "backups")
    record = publish_real_backup(primary, catalogue, project_db)
    dest = work / "offsite"
    config = with_upload(primary, work / "backups", local_remote_env(dest))
    state = State(config=config)
    real_copyto = rclone_module.Rclone.copyto

    async def copy_then_lose_the_end(self: rclone_module.Rclone, local: Path, remote: str) -> None:
        await real_copyto(self, local, remote)
        arrived = remote_copy(dest, record)
        if local == record.path and arrived.exists():
            os.truncate(arrived, record.size // 2)

    monkeypatch.setattr(rclone_module.Rclone, "copyto", copy_then_lose_the_end)
    result = await upload_pending(config, state, catalogue, "truncated")
    assert result.result == "failed"
    assert "verification after upload failed" in (result.detail or ""), result.detail
    assert result.uploaded == []
    local = catalogue.list_backups(project_db)[0]
    assert local.uploaded_at is None and local.uploaded_to is None
    assert not (remote_copy(dest, record).parent / manifest_name(record.file)).exists()

    monkeypatch.setattr(rclone_module.Rclone, "copyto", real_copyto)
    again = await upload_pending(config, state, catalogue, "again")
    assert again.uploaded == [record.file]
    assert sha256_of(remote_copy(dest, record)) == record.sha256


async def test_s3_upload_is_verified_by_md5_and_recorded(
    primary: PgServer, project_db: str, work: Path
) -> None:
    server = S3Server(work / "s3root", free_port())
    server.start()
    try:
        catalogue = Catalogue(work / "backups")
        record = publish_real_backup(primary, catalogue, project_db)
        config = with_upload(primary, work / "backups", server.remote_env())
        state = State(config=config)
        result = await upload_pending(config, state, catalogue, "s3-run")
    finally:
        server.stop()
    assert result.result == "success", result.detail
    stored = server.root / server.bucket / "laterbased" / record.directory.name / record.file
    assert sha256_of(stored) == record.sha256
    assert (stored.parent / manifest_name(record.file)).is_file()
    (marked,) = catalogue.list_backups(project_db)
    assert marked.uploaded_to == (
        f"offsite:{server.bucket}/laterbased/{record.directory.name}/{record.file}"
    )


async def test_remote_down_fails_the_job_keeps_the_backup_and_recovers_next_run(
    primary: PgServer, project_db: str, work: Path, caplog: pytest.LogCaptureFixture
) -> None:
    server = S3Server(work / "s3root", free_port())
    backups = work / "backups"
    config = with_upload(
        primary,
        backups,
        server.remote_env(),
        databases=(project_db,),
        retention_days=0,
        min_keep=1,
    )
    catalogue = Catalogue(backups)
    publish_real_backup(
        primary, catalogue, project_db, started=datetime.now(UTC) - timedelta(days=3)
    )
    state = State(config=config)

    chain = await run_backup_chain(state, trigger="test")  # the server was never started

    assert chain.result == "failed"
    assert state.job("upload").runs["failed"] == 1
    assert "connection refused" in (state.job("upload").last_run.detail or "")  # type: ignore[union-attr]
    local = catalogue.list_backups(project_db)
    assert len(local) == 2, "retention 0 days + min_keep 1 still keeps what is not off-site"
    assert all(r.path.exists() and r.uploaded_at is None for r in local)
    assert state.backup(project_db).pending_upload == 2
    assert state.upload_last_success is None

    server.start()
    try:
        retry = await upload_pending(config, state, catalogue, "next-run")
    finally:
        server.stop()
    assert retry.result == "success", retry.detail
    assert len(retry.uploaded) == 2
    assert state.backup(project_db).pending_upload == 0
    assert SECRET_KEY not in caplog.text


def test_remote_retention_only_touches_our_old_uploads() -> None:
    now = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)

    def pair(folder: str, stamp: str) -> list[RemoteEntry]:
        data = f"{folder}/{folder}-{stamp}.dump"
        return [
            RemoteEntry(path=data, name=data.rsplit("/", 1)[1], size=1, is_dir=False),
            RemoteEntry(
                path=f"{folder}/{folder}-{stamp}.json",
                name=f"{folder}-{stamp}.json",
                size=1,
                is_dir=False,
            ),
        ]

    entries = (
        pair("a", "20261101T000000Z")
        + pair("a", "20261120T000000Z")
        + pair("a", "20261125T000000Z")
        + pair("b", "20260101T000000Z")  # the only one of b: the newest, kept however old
        + [RemoteEntry(path="a/a-20200101T000000Z.dump", name="x", size=1, is_dir=False)]
        + [RemoteEntry(path="a/notes.txt", name="notes.txt", size=1, is_dir=False)]
    )
    expired = remote_expired(entries, 3, now)
    assert [e.path for e in expired] == ["a/a-20261101T000000Z.dump", "a/a-20261120T000000Z.dump"]


async def test_remote_retention_deletes_old_uploads_after_a_good_run(
    primary: PgServer, project_db: str, work: Path
) -> None:
    catalogue = Catalogue(work / "backups")
    now = datetime.now(UTC)
    old = publish_real_backup(primary, catalogue, project_db, started=now - timedelta(days=10))
    newest = publish_real_backup(primary, catalogue, project_db, started=now)
    dest = work / "offsite"
    foreign = dest / old.directory.name / "someone-elses-20200101T000000Z.dump"
    foreign.parent.mkdir(parents=True)
    foreign.write_bytes(b"not ours")
    config = with_upload(
        primary, work / "backups", local_remote_env(dest, LATERBASED_UPLOAD_RETENTION_DAYS="3")
    )
    result = await upload_pending(config, State(config=config), catalogue, "retention")
    assert result.result == "success", result.detail
    assert result.deleted_remote == [f"{old.directory.name}/{old.file}"]
    assert not remote_copy(dest, old).exists()
    assert not (remote_copy(dest, old).parent / manifest_name(old.file)).exists()
    assert remote_copy(dest, newest).exists()
    assert foreign.exists()
    assert old.path.exists(), "remote retention never touches local backups"


async def test_remote_retention_keeps_the_newest_real_upload_beside_one_dated_in_the_future(
    primary: PgServer, project_db: str, work: Path
) -> None:
    catalogue = Catalogue(work / "backups")
    now = datetime.now(UTC)
    real = publish_real_backup(primary, catalogue, project_db, started=now - timedelta(days=10))
    # Made while the clock ran two days fast: by its date the newest upload.
    ahead = publish_real_backup(primary, catalogue, project_db, started=now + timedelta(days=2))
    dest = work / "offsite"
    config = with_upload(
        primary, work / "backups", local_remote_env(dest, LATERBASED_UPLOAD_RETENTION_DAYS="3")
    )
    result = await upload_pending(config, State(config=config), catalogue, "future")
    assert result.result == "success", result.detail
    assert result.deleted_remote == [], "the newest real upload is not expired"
    assert remote_copy(dest, real).exists() and remote_copy(dest, ahead).exists()


def test_daemon_refuses_to_start_when_rclone_is_missing(work: Path) -> None:
    env = {
        "PATH": os.environ["PATH"],
        "HOME": str(work),
        "PRIMARY_HOST": "127.0.0.1",
        "PRIMARY_PORT": str(free_port()),
        "LATERBASED_STANDBY_ENABLED": "false",
        "LATERBASED_HTTP_ENABLED": "false",
        "LATERBASED_STATE_DIR": str(work / "state"),
        "LOCAL_BACKUP_PATH": str(work / "backups"),
        "LATERBASED_UPLOAD_RCLONE_BINARY": str(work / "no-rclone-here"),
    } | local_remote_env(work / "offsite")
    result = subprocess.run(
        [sys.executable, "-m", "laterbased", "run"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 3, result.stderr
    assert "upload.rclone_binary" in result.stderr


async def test_a_hanging_remote_never_delays_the_scheduled_dumps(
    primary: PgServer, project_db: str, work: Path
) -> None:
    import socket
    import time

    from laterbased.backup.runner import backup_worker
    from laterbased.core.context import WorkerContext

    # An "S3 endpoint" that accepts connections and never answers: the upload hangs.
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    endpoint = f"http://127.0.0.1:{listener.getsockname()[1]}"
    env = {
        "RCLONE_REMOTE_NAME": "offsite",
        "RCLONE_REMOTE_PATH": "bucket/x",
        "RCLONE_REMOTE_1_NAME": "offsite",
        "RCLONE_REMOTE_1_TYPE": "s3",
        "RCLONE_REMOTE_1_PARAM_PROVIDER": "Other",
        "RCLONE_REMOTE_1_PARAM_ENDPOINT": endpoint,
        "LATERBASED_UPLOAD_TIMEOUT": "1h",
    }
    config = with_upload(
        primary,
        work / "backups",
        env,
        databases=(project_db,),
        schedule="* * * * * *",  # every second
        skip_unchanged=False,
    )
    state = State(config=config)
    worker = asyncio.create_task(backup_worker(WorkerContext(state, asyncio.Event())))
    try:
        deadline = time.monotonic() + 60
        # Wait on the backups queued for upload, not on the dump job's success count: a run
        # counts its success before it re-reads the catalogue for the pending uploads.
        while state.backup(project_db).pending_upload < 3:
            assert time.monotonic() < deadline, f"dumps stalled: {state.job('dump')}"
            await asyncio.sleep(0.1)
        # Three dumps finished while the one upload they queued behind still hangs: none of
        # them waited for it. (Not "no overlap skip": a dump that itself outlasts the
        # one-second schedule on a loaded machine is skipped by design, which is no delay.)
        assert state.job("upload").running is not None, "the upload should still hang"
        upload_started = state.job("upload").running.started
        assert state.job("dump").runs["success"] >= 3
        assert state.job("dump").last_success is not None
        assert state.job("dump").last_success > upload_started, "no dump ran during the upload"
    finally:
        worker.cancel()
        with pytest.raises(asyncio.CancelledError):
            await worker
        listener.close()
    assert state.job("upload").last_run is not None
    assert state.job("upload").last_run.result == "cancelled"


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
