"""The upload job's point-in-time part on archive files (real rclone, a local-directory
remote; no server needed): finished WAL goes in batches, never the segment being written,
each file checked and recorded; a copy the remote got wrong is not recorded and goes again."""

from __future__ import annotations

import os
import secrets
import tempfile
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from child_argv import record_child_argv
from rclone_servers import local_remote_env
from wal_files import T0, base_backup, segment

from laterbased.config import Config, load_config
from laterbased.core.state import State
from laterbased.offsite import rclone as rclone_module
from laterbased.offsite.upload import upload_pending
from laterbased.records import wal_archive


@pytest.fixture
def work() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="laterbased-archive-upload-") as base:
        yield Path(base)


def archive_config(work: Path) -> Config:
    env = {
        "PRIMARY_HOST": "resolve.local",
        "HOME": "/nonexistent-home",
        "LOCAL_BACKUP_PATH": str(work / "backups"),
        "LATERBASED_PITR_ENABLED": "true",
        "LATERBASED_UPLOAD_RETRIES": "0",
    } | local_remote_env(work / "offsite")
    return load_config(None, env)


def an_archive(root: Path, segments: int) -> list[Path]:
    """A base backup and ``segments`` finished segments (random bytes), a history file and
    the segment being written."""
    made = [
        segment(root, number, T0 + timedelta(minutes=number), content=secrets.token_bytes(4096))
        for number in range(2, 2 + segments)
    ]
    segment(root, 2 + segments, T0 + timedelta(hours=1), ".gz.partial", b"being written")
    history = wal_archive.wal_dir(root) / "00000002.history"
    history.write_text("1\t0/3000000\tno recovery target specified\n")
    backup = base_backup(root, 2, T0 + timedelta(minutes=2))
    (backup / "base.tar.gz").write_bytes(secrets.token_bytes(8192))
    return [history, *made]


async def test_finished_wal_goes_in_one_batch_never_the_partial_and_is_recorded(
    work: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = archive_config(work)
    root = config.backup_directory
    sent = an_archive(root, 6)
    children = record_child_argv(monkeypatch)
    state = State(config=config)

    result = await upload_pending(config, state, run_id="batch")

    assert result.result == "success", result.detail
    assert result.archive is not None and result.archive["uploaded"] == 7 + 2, result.archive
    remote = work / "offsite"
    assert sorted(p.name for p in (remote / "@wal").iterdir()) == sorted(p.name for p in sent)
    for path in sent:
        assert (remote / "@wal" / path.name).read_bytes() == path.read_bytes()
        assert wal_archive.is_uploaded(path)
    (stamp,) = [p.name for p in (remote / "@base").iterdir()]
    assert sorted(p.name for p in (remote / "@base" / stamp).iterdir()) == [
        "base.tar.gz", "manifest.json"
    ]
    copies = [argv for argv in children.argvs if argv[1:2] == ["copy"]]
    assert len(copies) == 1, "the WAL goes in one rclone copy, not one per file"
    assert state.archive.pending_upload == 0


async def test_a_wal_file_the_remote_got_wrong_is_not_recorded_and_goes_again(
    work: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = archive_config(work)
    root = config.backup_directory
    sent = an_archive(root, 3)
    remote_wal = work / "offsite" / "@wal"
    damaged = sent[-1]
    real_copy_files = rclone_module.Rclone.copy_files

    async def copy_then_lose_the_end(
        self: rclone_module.Rclone, source: str, destination: str, names: list[str]
    ) -> None:
        await real_copy_files(self, source, destination, names)
        if damaged.name in names:
            os.truncate(remote_wal / damaged.name, 100)

    monkeypatch.setattr(rclone_module.Rclone, "copy_files", copy_then_lose_the_end)
    state = State(config=config)
    result = await upload_pending(config, state, run_id="damaged")

    assert result.result == "failed"
    assert "verification after upload failed" in result.failed["point-in-time archive"]
    assert not wal_archive.is_uploaded(damaged)
    assert all(wal_archive.is_uploaded(path) for path in sent[:-1])
    assert state.archive.pending_upload == 1

    monkeypatch.setattr(rclone_module.Rclone, "copy_files", real_copy_files)
    again = await upload_pending(config, state, run_id="again")
    assert again.result == "success", again.detail
    assert again.archive is not None and again.archive["uploaded"] == 1, again.archive
    assert (remote_wal / damaged.name).read_bytes() == damaged.read_bytes()
    assert state.archive.pending_upload == 0


async def test_remote_retention_of_the_archive_keeps_what_its_window_needs(work: Path) -> None:
    config = load_config(
        None,
        {
            "PRIMARY_HOST": "resolve.local",
            "HOME": "/nonexistent-home",
            "LOCAL_BACKUP_PATH": str(work / "backups"),
            "LATERBASED_PITR_ENABLED": "true",
            "LATERBASED_UPLOAD_RETENTION_DAYS": "3",
        }
        | local_remote_env(work / "offsite"),
    )
    root = config.backup_directory
    now = datetime.now(UTC)
    # Base backups 10 days, 5 days and 1 hour old, starting at segments 2, 5 and 8.
    for number in range(2, 11):
        segment(root, number, now - timedelta(days=10) + timedelta(days=number),
                content=secrets.token_bytes(512))
    (wal_archive.wal_dir(root) / "00000002.history").write_text("1\t0/3000000\tx\n")
    stamps = []
    for start, age in ((2, timedelta(days=10)), (5, timedelta(days=5)), (8, timedelta(hours=1))):
        folder = base_backup(root, start, now - age)
        (folder / "base.tar.gz").write_bytes(secrets.token_bytes(1024))
        stamps.append(folder.name)

    result = await upload_pending(config, State(config=config), run_id="retention")

    assert result.result == "success", result.detail
    assert result.deleted_remote == [f"@base/{stamps[0]}"], result.deleted_remote
    remote = work / "offsite"
    assert sorted(p.name for p in (remote / "@base").iterdir()) == stamps[1:]
    left = sorted(p.name for p in (remote / "@wal").iterdir())
    assert left == sorted(
        ["00000002.history"] + [f"{wal_archive.segment_name(1, n)}.gz" for n in range(5, 11)]
    ), "the WAL from the oldest kept base backup's start on, and the history"
    assert result.archive is not None and result.archive["deleted_remote_wal"] == 3
    assert len(wal_archive.list_base_backups(root)) == 3, "the local archive is untouched"
    assert len(wal_archive.list_segments(root)) == 9
