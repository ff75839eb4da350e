"""What the point-in-time archive has off-site, recorded beside it: what the upload job may
send (never the segment being written), what waits for it, and archive retention that keeps
what is not off-site yet when the upload is on."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

from wal_files import T0, base_backup, segment

from laterbased.records import wal_archive


def archive_of_three_base_backups(root: Path) -> None:
    """Segments 2..11 (12 being written), base backups starting at 2, 5 and 8."""
    for number in range(2, 12):
        segment(root, number, T0 + timedelta(minutes=number))
    segment(root, 12, T0 + timedelta(minutes=13), ".gz.partial")
    (wal_archive.wal_dir(root) / "00000002.history").write_text("1\t0/3000000\tno reason\n")
    for start in (2, 5, 8):
        base_backup(root, start, T0 + timedelta(minutes=start))


def numbers(root: Path) -> list[int]:
    return [s.number for s in wal_archive.list_segments(root)]


def upload_everything(root: Path) -> None:
    backups, files = wal_archive.not_uploaded(root)
    for piece in [b.directory for b in backups] + files:
        wal_archive.mark_uploaded(piece, f"offsite:x/{piece.name}", "size+md5", T0)


def test_the_upload_sends_finished_wal_and_base_backups_never_the_segment_being_written(
    tmp_path: Path,
) -> None:
    archive_of_three_base_backups(tmp_path)
    backups, files = wal_archive.not_uploaded(tmp_path)
    assert [b.finished for b in backups] == [T0 + timedelta(minutes=m) for m in (2, 5, 8)]
    names = [p.name for p in files]
    assert names[0] == "00000002.history", "history files first"
    assert names[1:] == [f"{wal_archive.segment_name(1, n)}.gz" for n in range(2, 12)]
    assert not [name for name in names if name.endswith(".partial")]
    assert wal_archive.pending_upload(tmp_path) == (14, (T0 + timedelta(minutes=2)).timestamp())

    first = files[1]
    wal_archive.mark_uploaded(first, "offsite:bucket/@wal/x", "size+md5", T0)
    record = json.loads(wal_archive.upload_marker(first).read_text())
    assert record == {
        "uploaded_to": "offsite:bucket/@wal/x",
        "uploaded_at": T0.isoformat(),
        "verified": "size+md5",
    }
    assert wal_archive.is_uploaded(first)
    assert first not in wal_archive.not_uploaded(tmp_path)[1]
    assert wal_archive.pending_upload(tmp_path)[0] == 13
    # The records are no segments and no base backups: the window does not change.
    assert numbers(tmp_path) == list(range(2, 13))
    assert len(wal_archive.list_base_backups(tmp_path)) == 3

    upload_everything(tmp_path)
    assert wal_archive.pending_upload(tmp_path) == (0, None)


def test_retention_with_upload_on_keeps_what_is_not_off_site_yet(tmp_path: Path) -> None:
    archive_of_three_base_backups(tmp_path)
    window_start = T0 + timedelta(hours=5)  # the window needs only the newest base backup

    pruned = wal_archive.prune(tmp_path, window_start, keep_not_uploaded=True)

    assert pruned.base_backups == () and pruned.segments == 0, "nothing is off-site yet"
    assert len(wal_archive.list_base_backups(tmp_path)) == 3
    assert numbers(tmp_path) == list(range(2, 13))

    # The oldest base backup and the segments up to 4 made it off-site; 5 did not.
    backups, files = wal_archive.not_uploaded(tmp_path)
    wal_archive.mark_uploaded(backups[0].directory, "offsite:x", "size+md5", T0)
    for path in files:
        if path.name.endswith(".gz") and wal_archive.parse_segment(path).number < 5:  # type: ignore[union-attr]
            wal_archive.mark_uploaded(path, "offsite:x", "size+md5", T0)

    pruned = wal_archive.prune(tmp_path, window_start, keep_not_uploaded=True)

    assert pruned.base_backups == ("20261129T080200Z",)
    assert [b.finished for b in wal_archive.list_base_backups(tmp_path)] == [
        T0 + timedelta(minutes=5), T0 + timedelta(minutes=8)
    ], "the base backup of minute 5 waits for its upload"
    assert numbers(tmp_path) == list(range(5, 13))
    uploaded = wal_archive.wal_dir(tmp_path) / wal_archive.UPLOADED_DIR
    assert sorted(p.name for p in uploaded.iterdir()) == [], "records go with what they record"

    # Once everything is off-site, retention keeps only what the window needs: never the
    # newest base backup, nor its WAL, nor the segment being written.
    upload_everything(tmp_path)
    wal_archive.prune(tmp_path, window_start, keep_not_uploaded=True)
    assert [b.finished for b in wal_archive.list_base_backups(tmp_path)] == [
        T0 + timedelta(minutes=8)
    ]
    assert numbers(tmp_path) == list(range(8, 13))


def test_retention_without_upload_deletes_what_the_window_does_not_need(tmp_path: Path) -> None:
    archive_of_three_base_backups(tmp_path)
    wal_archive.prune(tmp_path, datetime(2026, 11, 29, 13, 0, tzinfo=UTC))
    assert [b.finished for b in wal_archive.list_base_backups(tmp_path)] == [
        T0 + timedelta(minutes=8)
    ]
    assert numbers(tmp_path) == list(range(8, 13))
