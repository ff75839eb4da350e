"""The on-disk catalogue: safe names, atomic publish, manifests, cleaning .partial."""

from __future__ import annotations

import errno
import json
import os
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from backup_files import publish_real_backup
from backup_support import publish
from hypothesis import given
from hypothesis import strategies as st
from pgserver import PgServer

from laterbased.config import BackupConfig, Config
from laterbased.core.state import State
from laterbased.records import catalogue as backups_module
from laterbased.records.catalogue import (
    GLOBALS_KEY,
    BackupRecord,
    Catalogue,
    decode_name,
    encode_name,
    writers_into,
)

T0 = datetime(2026, 11, 26, 13, 0, 5, tzinfo=UTC)


@pytest.mark.parametrize(
    ("name", "encoded"),
    [
        ("Resolve", "Resolve"),
        ("My Project", "My%20Project"),
        ("a/b", "a%2Fb"),
        ("..", "%2E."),
        (".hidden", "%2Ehidden"),
        ("it's \"q\"", "it%27s%20%22q%22"),
        ("ü", "%C3%BC"),
        ("@globals", "%40globals"),
        ("a%b", "a%25b"),
    ],
)
def test_database_names_become_safe_file_names(name: str, encoded: str) -> None:
    assert encode_name(name) == encoded
    assert decode_name(encoded) == name


# PostgreSQL identifiers are at most 63 bytes (NAMEDATALEN - 1), NUL never allowed.
@given(st.text(min_size=1, max_size=63).filter(lambda s: "\x00" not in s and len(s.encode()) <= 63))
def test_encoding_round_trips_and_stays_a_single_path_component(name: str) -> None:
    encoded = encode_name(name)
    assert decode_name(encoded) == name
    assert "/" not in encoded and encoded not in {".", ".."} and not encoded.startswith(".")
    assert len(encoded.encode()) <= 255 - len("-20261126T130000Z-99.sql.gz")


def test_publish_places_file_and_manifest_private_and_lists_real_name(tmp_path: Path) -> None:
    catalogue = Catalogue(tmp_path / "backups")
    record = publish(catalogue, "Proj ü/1", T0, b"PGDMP data")
    directory = tmp_path / "backups" / "Proj%20%C3%BC%2F1"
    assert record.path == directory / "Proj%20%C3%BC%2F1-20261126T130005Z.backup"
    manifest = json.loads(record.manifest_path.read_text())
    assert manifest["database"] == "Proj ü/1"
    assert manifest["size"] == 10 and manifest["started"] == "2026-11-26T13:00:05Z"
    assert manifest["uploaded_to"] is None and manifest["verified"] is None
    for path in (record.path, record.manifest_path):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    for path in (directory, catalogue.partial, catalogue.root):
        assert stat.S_IMODE(path.stat().st_mode) == 0o700
    assert list(catalogue.partial.iterdir()) == []
    [listed] = catalogue.list_backups()
    assert listed.database == "Proj ü/1" and listed.good
    assert catalogue.list_backups("Proj ü/1") == [listed]


def test_two_backups_in_the_same_second_get_distinct_names(tmp_path: Path) -> None:
    catalogue = Catalogue(tmp_path)
    first = publish(catalogue, "db", T0, b"1")
    second = publish(catalogue, "db", T0, b"2")
    assert first.file != second.file and second.file.endswith("-2.backup")
    assert len(catalogue.list_backups("db")) == 2


def test_custom_archives_are_named_backup_and_older_dump_files_keep_their_manifest(
    tmp_path: Path,
) -> None:
    catalogue = Catalogue(tmp_path)
    # What an earlier version wrote: <db>-<stamp>.dump with <db>-<stamp>.json.
    old_name = "db-20261126T130005Z.dump"
    partial = catalogue.new_partial(old_name)
    partial.write_bytes(b"old")
    old = catalogue.publish(partial, BackupRecord(
        database="db", file=old_name, directory=catalogue.database_dir("db"), format="custom",
        size=3, sha256="ab" * 32, started=T0, finished=T0, source="primary",
    ))
    assert old.manifest_path == tmp_path / "db" / "db-20261126T130005Z.json"
    # A new backup in the same second is a .backup (what Resolve's Restore dialog offers)
    # and must not take the old one's manifest name.
    new = publish(catalogue, "db", T0, b"new")
    assert new.file == "db-20261126T130005Z-2.backup"
    assert new.manifest_path.name == "db-20261126T130005Z-2.json"
    assert sorted(r.file for r in catalogue.list_backups("db")) == sorted([old_name, new.file])
    assert catalogue.foreign_files() == []
    catalogue.delete(old)
    assert not old.path.exists() and not old.manifest_path.exists()


def test_marks_are_written_to_the_manifest(tmp_path: Path) -> None:
    catalogue = Catalogue(tmp_path)
    record = publish(catalogue, "db", T0, b"x")
    catalogue.mark_uploaded(record, "s3:bucket/db", T0 + timedelta(minutes=5))
    [listed] = catalogue.list_backups()
    assert listed.uploaded_to == "s3:bucket/db"
    assert listed.uploaded_at == T0 + timedelta(minutes=5)
    catalogue.mark_verified(listed, False, "checksum mismatch")
    [listed] = catalogue.list_backups()
    assert listed.verified is False and not listed.good
    assert [p.name for p in record.directory.iterdir() if p.name.startswith(".")] == []


def test_a_file_without_manifest_is_not_a_backup_and_is_foreign(tmp_path: Path) -> None:
    catalogue = Catalogue(tmp_path)
    record = publish(catalogue, "db", T0, b"x")
    stray = record.directory / "db-20200101T000000Z.dump"
    stray.write_bytes(b"half")
    (record.directory / "broken.json").write_text("{not json")
    assert [r.file for r in catalogue.list_backups()] == [record.file]
    assert set(catalogue.foreign_files()) == {stray, record.directory / "broken.json"}


def test_clean_partial_removes_leftovers_but_never_kills_a_program_that_is_not_pg_dump(
    tmp_path: Path,
) -> None:
    catalogue = Catalogue(tmp_path)
    catalogue.prepare()
    leftover = catalogue.new_partial("db-x.dump")
    leftover.write_bytes(b"half a dump")
    # A process whose stdout is a file in .partial, but not a pg_dump: not provably ours.
    # (A real leftover pg_dump is killed: backup/test_backup_ownership.py.)
    with open(catalogue.partial / "writer.out", "wb") as out:
        writer = subprocess.Popen(
            [sys.executable, "-c", "import time; time.sleep(60)"], stdout=out
        )
    try:
        assert writers_into(catalogue.partial) == [writer.pid]
        assert catalogue.clean_partial() == 2
        assert list(catalogue.partial.iterdir()) == []
        writer.terminate()  # a SIGKILL sent before would win: this does not race
        assert writer.wait(10) == -15, "a process that is not pg_dump was killed"
    finally:
        if writer.poll() is None:
            writer.kill()
            writer.wait()


def test_publish_failure_leaves_nothing_outside_partial(tmp_path: Path) -> None:
    catalogue = Catalogue(tmp_path)
    first = publish(catalogue, "db", T0, b"x")
    partial = catalogue.new_partial(first.file)
    partial.write_bytes(b"y")
    duplicate = BackupRecord(**{**first.__dict__})
    with pytest.raises(FileExistsError):
        catalogue.publish(partial, duplicate)
    assert [r.file for r in catalogue.list_backups()] == [first.file]
    assert sorted(p.name for p in first.directory.iterdir()) == sorted(
        [first.file, first.manifest_path.name]
    )
    os.unlink(partial)


class DiskSteps:
    """What publish asks of the disk, in order: ``("fsync", path)`` and ``("rename", src,
    dst)``. Observation of the real calls (they still happen), so the crash-safety order can
    be checked; ``fail_at`` makes one step fail as a full or broken disk would."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.steps: list[tuple[str, ...]] = []
        self.fail_at: tuple[str, ...] | None = None
        real_fsync, real_rename = os.fsync, os.rename

        def fsync(fd: int) -> None:
            step = ("fsync", os.readlink(f"/proc/self/fd/{fd}"))
            self._happen(step)
            real_fsync(fd)

        def rename(src: object, dst: object) -> None:
            step = ("rename", str(src), str(dst))
            self._happen(step)
            real_rename(src, dst)  # type: ignore[arg-type]

        monkeypatch.setattr(backups_module.os, "fsync", fsync)
        monkeypatch.setattr(backups_module.os, "rename", rename)

    def _happen(self, step: tuple[str, ...]) -> None:
        self.steps.append(step)
        if step == self.fail_at:
            raise OSError(errno.EIO, "Input/output error (test)")

    def index(self, step: tuple[str, ...]) -> int:
        assert step in self.steps, f"{step} never happened: {self.steps}"
        return self.steps.index(step)


def partial_backup(catalogue: Catalogue, data: bytes = b"PGDMP data") -> tuple[Path, BackupRecord]:
    name = catalogue.file_name("db", "custom", T0)
    partial = catalogue.new_partial(name)
    partial.write_bytes(data)
    record = BackupRecord(
        database="db", file=name, directory=catalogue.database_dir("db"), format="custom",
        size=len(data), sha256="ab" * 32, started=T0, finished=T0 + timedelta(seconds=3),
        source="primary",
    )
    return partial, record


def test_publish_syncs_the_data_then_places_it_before_its_manifest(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A power cut at any point leaves either no backup or a whole one: the data is on disk
    before it is renamed into place, and the manifest (what makes it a backup) comes last."""
    catalogue = Catalogue(tmp_path.resolve() / "backups")
    catalogue.prepare()
    partial, record = partial_backup(catalogue)
    disk = DiskSteps(monkeypatch)
    catalogue.publish(partial, record)
    place_data = next(s for s in disk.steps if s[:3] == ("rename", str(partial), str(record.path)))
    place_manifest = next(
        s for s in disk.steps if s[0] == "rename" and s[2] == str(record.manifest_path)
    )
    assert disk.index(("fsync", str(partial))) < disk.index(place_data), "data file not fsynced"
    assert disk.index(("fsync", place_manifest[1])) < disk.index(place_manifest)
    assert disk.index(place_data) < disk.index(place_manifest), "manifest placed before its data"
    last_directory_sync = max(
        i for i, s in enumerate(disk.steps) if s == ("fsync", str(record.directory))
    )
    assert last_directory_sync > disk.index(place_manifest), "directory not fsynced after"
    assert [r.file for r in catalogue.list_backups()] == [record.file]


@pytest.mark.parametrize("failing", ["manifest rename", "directory fsync"])
def test_a_publish_failing_halfway_takes_back_what_it_placed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, failing: str
) -> None:
    """The disk fails after the data file was renamed into place: nothing of this backup
    stays outside ``.partial/`` (a data file without manifest would sit there unlisted,
    never pruned, taking space forever)."""
    catalogue = Catalogue(tmp_path.resolve() / "backups")
    catalogue.prepare()
    older = publish(catalogue, "db", T0 - timedelta(days=1), b"older")
    partial, record = partial_backup(catalogue)
    disk = DiskSteps(monkeypatch)
    # The manifest's temporary name is random: fail the step by its destination.
    real_happen = disk._happen

    def happen(step: tuple[str, ...]) -> None:
        if failing == "manifest rename" and step[0] == "rename":
            if step[2] == str(record.manifest_path):
                disk.fail_at = step
        if failing == "directory fsync" and step == ("fsync", str(record.directory)):
            if record.manifest_path.exists():
                disk.fail_at = step
        real_happen(step)

    monkeypatch.setattr(disk, "_happen", happen)
    with pytest.raises(OSError, match="Input/output error"):
        catalogue.publish(partial, record)
    assert not record.path.exists(), "the data file stayed in place without its manifest"
    assert not record.manifest_path.exists()
    assert sorted(p.name for p in record.directory.iterdir()) == sorted(
        [older.file, older.manifest_path.name]
    )
    assert [r.file for r in catalogue.list_backups()] == [older.file]
    assert catalogue.foreign_files() == []
    assert list(catalogue.partial.iterdir()) == [], "the manifest's temporary file stayed"


def test_catch_up_reference_is_the_stalest_database_newest_backup(tmp_path: Path) -> None:
    from laterbased.backup.runner import catch_up_reference

    catalogue = Catalogue(tmp_path)
    assert catch_up_reference(catalogue) == datetime(1970, 1, 1, tzinfo=UTC), "none: run now"
    publish(catalogue, "a", T0 - timedelta(hours=5), b"1")
    newest_a = publish(catalogue, "a", T0 - timedelta(hours=3), b"2")
    publish(catalogue, "b", T0 - timedelta(hours=1), b"3")
    assert catch_up_reference(catalogue) == newest_a.finished
    # An "unchanged" run confirms a backup is still current: that counts as fresh.
    catalogue.mark_confirmed(newest_a, T0)
    assert catch_up_reference(catalogue) == T0 - timedelta(hours=1) + timedelta(seconds=3)


def test_a_backup_dated_in_the_future_does_not_put_off_the_catch_up(tmp_path: Path) -> None:
    from laterbased.backup.runner import catch_up_reference

    catalogue = Catalogue(tmp_path)
    now = datetime.now(UTC)
    real = publish(catalogue, "a", now - timedelta(days=3), b"1")
    # Made while the clock ran a year fast: it would postpone the catch-up for a year.
    publish(catalogue, "a", now + timedelta(days=365), b"2")
    assert catch_up_reference(catalogue) == real.finished


def test_a_confirmation_dated_in_the_future_makes_no_backup_fresh(tmp_path: Path) -> None:
    from laterbased.backup.runner import catch_up_reference, refresh_backup_state

    catalogue = Catalogue(tmp_path)
    now = datetime.now(UTC)
    record = publish(catalogue, "a", now - timedelta(days=3), b"1")
    # Skip-unchanged confirmed it while the clock ran a year fast.
    catalogue.mark_confirmed(record, now + timedelta(days=365))
    assert catch_up_reference(catalogue) == record.finished
    state = State(config=Config(backup=BackupConfig(directory=tmp_path)))
    refresh_backup_state(state, catalogue, upload_enabled=False)
    assert state.backups["a"].last_success == record.finished.timestamp()


def test_globals_of_an_earlier_version_are_their_own_series_beside_a_database_so_named(
    tmp_path: Path,
) -> None:
    from laterbased.backup.runner import refresh_backup_state

    catalogue = Catalogue(tmp_path)
    now = datetime.now(UTC)
    database = publish(catalogue, "(globals)", now - timedelta(hours=2), b"db")
    # A globals backup exactly as earlier versions wrote it: database "(globals)" too.
    folder = tmp_path / "@globals"
    folder.mkdir(mode=0o700)
    stamp = (now - timedelta(hours=1)).strftime("%Y%m%dT%H%M%SZ")
    (folder / f"globals-{stamp}.sql").write_bytes(b"CREATE ROLE x;\n")
    manifest = {
        "kind": "laterbased-backup",
        "manifest_version": 1,
        "database": "(globals)",
        "file": f"globals-{stamp}.sql",
        "format": "globals",
        "size": 15,
        "sha256": "cd" * 32,
        "started": (now - timedelta(hours=1)).isoformat(),
        "finished": (now - timedelta(hours=1)).isoformat(),
        "source": "primary",
        "laterbased_version": "0.1.0",
    }
    (folder / f"globals-{stamp}.json").write_text(json.dumps(manifest))
    records = catalogue.list_backups()
    assert sorted((r.database, r.format) for r in records) == [
        ("(globals)", "custom"),
        ("(globals)", "globals"),
    ]
    assert {r.series for r in records} == {"(globals)", GLOBALS_KEY}

    state = State(config=Config(backup=BackupConfig(directory=tmp_path)))
    refresh_backup_state(state, catalogue, upload_enabled=False)
    assert state.backups["(globals)"].last_file == str(database.path)
    assert state.backups[GLOBALS_KEY].last_file == str(folder / f"globals-{stamp}.sql")
    assert state.backups[GLOBALS_KEY].label == "(globals)"


@pytest.fixture
def work() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="laterbased-test-") as base:
        yield Path(base)


@pytest.mark.slow
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


@pytest.mark.slow
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
