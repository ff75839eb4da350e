"""The window the WAL archive covers, read off real files: unbroken runs of segments that hold
a base backup's WAL, a missing segment cutting a range short, and which base backup a moment
starts from."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from wal_files import T0, base_backup, segment

from laterbased.records import wal_archive


def test_an_unbroken_archive_covers_from_the_base_backup_to_the_last_wal(tmp_path: Path) -> None:
    for number in range(2, 6):
        segment(tmp_path, number, T0 + timedelta(minutes=number))
    segment(tmp_path, 6, T0 + timedelta(minutes=9), ".gz.partial")
    base_backup(tmp_path, 3, T0 + timedelta(minutes=3))
    window = wal_archive.coverage(tmp_path)
    assert window.earliest == T0 + timedelta(minutes=3)
    assert window.latest == T0 + timedelta(minutes=9)
    assert window.gaps == ()
    assert window.covers(T0 + timedelta(minutes=8))
    assert not window.covers(T0 + timedelta(minutes=2))


def test_a_missing_segment_cuts_the_range_and_moments_before_it_stay_restorable(
    tmp_path: Path,
) -> None:
    for number in (2, 3, 4, 6, 7):  # 5 is gone
        segment(tmp_path, number, T0 + timedelta(minutes=number))
    base_backup(tmp_path, 2, T0 + timedelta(minutes=2))
    window = wal_archive.coverage(tmp_path)
    first_missing = wal_archive.segment_name(1, 5)
    assert window.gaps == ((first_missing, first_missing),)
    assert window.gap_since == T0 + timedelta(minutes=4)
    assert window.earliest is None and window.latest is None, "nothing after the gap"
    assert [(r.earliest, r.latest) for r in window.ranges] == [
        (T0 + timedelta(minutes=2), T0 + timedelta(minutes=4))
    ]
    before_gap = T0 + timedelta(minutes=3)
    chosen = wal_archive.base_backup_for(tmp_path, before_gap)
    assert chosen is not None and chosen.finished == T0 + timedelta(minutes=2)
    assert wal_archive.base_backup_for(tmp_path, T0 + timedelta(minutes=6)) is None
    # Past the gap is out of reach (restore refuses it); older than the window is not.
    assert window.out_of_reach(T0 + timedelta(minutes=6))
    assert not window.out_of_reach(before_gap)
    assert not window.out_of_reach(T0 + timedelta(minutes=1))

    # A base backup after the gap starts a new range: the window is whole again from it.
    base_backup(tmp_path, 6, T0 + timedelta(minutes=6))
    window = wal_archive.coverage(tmp_path)
    assert window.earliest == T0 + timedelta(minutes=6)
    assert len(window.ranges) == 2
    assert window.out_of_reach(T0 + timedelta(minutes=5))
    assert not window.out_of_reach(T0 + timedelta(minutes=7))
    assert window.out_of_reach(T0 + timedelta(minutes=8)), "past the last WAL received"


def test_the_newest_base_backup_before_the_moment_is_the_one_started_from(tmp_path: Path) -> None:
    for number in range(2, 9):
        segment(tmp_path, number, T0 + timedelta(minutes=number))
    base_backup(tmp_path, 2, T0 + timedelta(minutes=2))
    base_backup(tmp_path, 5, T0 + timedelta(minutes=5))
    chosen = wal_archive.base_backup_for(tmp_path, T0 + timedelta(minutes=7))
    assert chosen is not None and chosen.finished == T0 + timedelta(minutes=5)
    chosen = wal_archive.base_backup_for(tmp_path, T0 + timedelta(minutes=4))
    assert chosen is not None and chosen.finished == T0 + timedelta(minutes=2)


def test_retention_keeps_what_the_window_needs_and_never_the_newest_base_backup(
    tmp_path: Path,
) -> None:
    for number in range(2, 12):
        segment(tmp_path, number, T0 + timedelta(minutes=number))
    segment(tmp_path, 12, T0 + timedelta(minutes=13), ".gz.partial")
    for start in (2, 5, 8):
        base_backup(tmp_path, start, T0 + timedelta(minutes=start))
    window_start = T0 + timedelta(minutes=6)  # needs the base backup of minute 5

    pruned = wal_archive.prune(tmp_path, window_start)

    assert pruned.base_backups == ("20261129T080200Z",)
    kept = [b.finished for b in wal_archive.list_base_backups(tmp_path)]
    assert kept == [T0 + timedelta(minutes=5), T0 + timedelta(minutes=8)]
    numbers = [s.number for s in wal_archive.list_segments(tmp_path)]
    assert numbers == list(range(5, 13)), "segments from the kept base backup's start on"
    window = wal_archive.coverage(tmp_path)
    assert window.covers(window_start) and window.gaps == ()

    # A window entirely after every base backup still keeps the newest one and its WAL.
    pruned = wal_archive.prune(tmp_path, T0 + timedelta(hours=5))
    assert [b.finished for b in wal_archive.list_base_backups(tmp_path)] == [
        T0 + timedelta(minutes=8)
    ]
    assert [s.number for s in wal_archive.list_segments(tmp_path)][0] == 8


def test_a_caught_up_archive_covers_up_to_when_it_was_seen_caught_up(tmp_path: Path) -> None:
    for number in range(2, 5):
        segment(tmp_path, number, T0 + timedelta(minutes=number))
    base_backup(tmp_path, 2, T0 + timedelta(minutes=2))
    assert wal_archive.coverage(tmp_path).latest == T0 + timedelta(minutes=4)
    # The primary wrote nothing since minute 4; at minute 30 the archive held all of it.
    wal_archive.mark_caught_up(tmp_path, (T0 + timedelta(minutes=30)).timestamp())
    assert wal_archive.coverage(tmp_path).latest == T0 + timedelta(minutes=30)
    # WAL received after the mark: the mark says nothing about it.
    segment(tmp_path, 5, T0 + timedelta(minutes=40))
    assert wal_archive.coverage(tmp_path).latest == T0 + timedelta(minutes=40)


def test_the_window_follows_a_switch_to_a_new_timeline_through_its_history_file(
    tmp_path: Path,
) -> None:
    directory = wal_archive.wal_dir(tmp_path)

    def on(timeline: int, number: int, minute: int, suffix: str = ".gz") -> None:
        segment(tmp_path, number, T0 + timedelta(minutes=minute), suffix)
        made = directory / f"{wal_archive.segment_name(1, number)}{suffix}"
        made.rename(directory / f"{wal_archive.segment_name(timeline, number)}{suffix}")

    for number in range(2, 5):
        on(1, number, number)
    on(1, 5, 5, ".gz.partial")  # the old timeline ends inside segment 5
    (directory / "00000002.history").write_text("1\t0/5000120\tno recovery target specified\n")
    for number in range(5, 8):
        on(2, number, number + 1)
    base_backup(tmp_path, 2, T0 + timedelta(minutes=2))

    window = wal_archive.coverage(tmp_path)
    assert window.gaps == ()
    assert window.earliest == T0 + timedelta(minutes=2)
    assert window.latest == T0 + timedelta(minutes=8)
    assert window.covers(T0 + timedelta(minutes=3)) and window.covers(T0 + timedelta(minutes=7))

    # A segment missing after the switch is named with the timeline recovery asks for.
    (directory / f"{wal_archive.segment_name(2, 6)}.gz").unlink()
    window = wal_archive.coverage(tmp_path)
    assert window.gaps == ((wal_archive.segment_name(2, 6), wal_archive.segment_name(2, 6)),)
    assert window.covers(T0 + timedelta(minutes=4)) and window.out_of_reach(
        T0 + timedelta(minutes=8)
    )

    # Without the history file the new timeline stands alone: nothing from before it.
    (directory / "00000002.history").unlink()
    assert wal_archive.coverage(tmp_path).ranges == ()
