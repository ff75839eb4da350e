"""What restore --at says when it cannot: a TIME in the future is called that (not 'is
pg_receivewal streaming?'), and a TIME before every dump of a database does not suggest
the very name that was typed. A stand-in archive and catalogue."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from pgserver import PgServer
from wal_files import base_backup, segment

from laterbased.config import load_config
from laterbased.errors import JobFailed
from laterbased.ops.restore.steps import RestoreRequest, restore
from laterbased.records import wal_archive
from laterbased.records.catalogue import BackupRecord, Catalogue

LIBRARY = "Resolve Library"


def test_a_time_in_the_future_is_refused_as_in_the_future(tmp_path: Path) -> None:
    now = datetime.now(UTC).replace(microsecond=0)
    base_backup(tmp_path, 1, now - timedelta(minutes=30))
    for number, minutes_ago in ((1, 30), (2, 20), (3, 10)):
        segment(tmp_path, number, now - timedelta(minutes=minutes_ago))
    window = wal_archive.coverage(tmp_path)
    assert window.ranges, window

    tomorrow = now + timedelta(days=1)
    said = window.why_out_of_reach(tomorrow)
    assert said is not None
    assert "it is in the future (the clock here says 20" in said, said
    assert "pg_receivewal" not in said, said
    # A moment after the archive's end that has passed already: as before.
    stopped = window.why_out_of_reach(now - timedelta(minutes=5))
    assert stopped is not None and "is pg_receivewal streaming?" in stopped, stopped


@pytest.mark.slow
async def test_a_time_before_every_dump_does_not_suggest_the_name_that_was_typed(
    make_primary: Callable[..., PgServer], tmp_path: Path, state_dir: Path
) -> None:
    server = make_primary()
    config = load_config(
        None,
        {
            "PRIMARY_HOST": server.host,
            "PRIMARY_PORT": str(server.port),
            "PRIMARY_USER": server.superuser,
            "REPL_PASSWORD": server.superuser_password,
            "LOCAL_BACKUP_PATH": str(tmp_path / "backups"),
            "LATERBASED_STATE_DIR": str(state_dir),
        },
    )
    catalogue = Catalogue(config.backup_directory)
    started = datetime.now(UTC) - timedelta(minutes=5)
    name = catalogue.file_name(LIBRARY, "custom", started)
    partial = catalogue.new_partial(name)
    partial.write_bytes(b"PGDMP stand-in")
    catalogue.publish(
        partial,
        BackupRecord(
            database=LIBRARY,
            file=name,
            directory=catalogue.database_dir(LIBRARY),
            format="custom",
            size=len(b"PGDMP stand-in"),
            sha256=hashlib.sha256(b"PGDMP stand-in").hexdigest(),
            started=started,
            finished=started + timedelta(seconds=1),
            source="primary",
        ),
    )
    with pytest.raises(JobFailed) as refused:
        await restore(
            config,
            RestoreRequest(
                target_db="x", database=LIBRARY, at=started - timedelta(hours=1)
            ),
        )
    message = str(refused.value)
    assert f"no backup of database {LIBRARY!r} started at or before" in message, message
    assert "did you mean" not in message, message
    assert f"backed-up databases here: {LIBRARY!r}" in message, message


def test_a_moment_after_a_base_backup_whose_own_wal_is_missing_is_refused_not_a_dump(
    tmp_path: Path,
) -> None:
    # The oldest base backup's segment is gone (deleted by hand, lost): it has no range, the
    # next base backup starts one. A moment between them is refused, not an older dump.
    now = datetime.now(UTC).replace(microsecond=0)
    base_backup(tmp_path, 1, now - timedelta(minutes=50))
    for number, minutes_ago in ((2, 40), (3, 30), (4, 10)):
        segment(tmp_path, number, now - timedelta(minutes=minutes_ago))
    window = wal_archive.coverage(tmp_path)
    assert not window.ranges and not window.gaps, window
    lost = now - timedelta(minutes=45)
    said = window.why_out_of_reach(lost)
    assert said is not None, "restored from an older dump without a word"
    assert "the WAL its base backups start from is missing" in said, said
    assert "Restorable exactly: nothing yet (until the next base backup)" in said, said

    base_backup(tmp_path, 3, now - timedelta(minutes=25))
    window = wal_archive.coverage(tmp_path)
    (only,) = window.ranges
    said = window.why_out_of_reach(lost)
    assert said is not None, "restored from an older dump without a word"
    assert only.earliest.isoformat() in said, said
    # Older than every base backup: older than the archive, the dump (no refusal).
    assert window.why_out_of_reach(now - timedelta(minutes=55)) is None
