"""Two base backups started within the same second each get a folder of their own."""

from __future__ import annotations

from pathlib import Path

from laterbased.records import wal_archive

STAMP = "20261129T101500Z"


def test_a_second_base_backup_in_the_same_second_gets_its_own_name(tmp_path: Path) -> None:
    first = wal_archive.new_base_partial(tmp_path, STAMP)
    # The first is still being written (a fallback from the standby to the primary).
    second = wal_archive.new_base_partial(tmp_path, STAMP)
    assert first != second
    assert wal_archive.base_name(first) == STAMP
    assert wal_archive.base_name(second) == f"{STAMP}-2"
    # The first is published; a third in that second takes neither name.
    first.rename(wal_archive.base_dir(tmp_path) / wal_archive.base_name(first))
    second.rmdir()
    third = wal_archive.new_base_partial(tmp_path, STAMP)
    assert wal_archive.base_name(third) == f"{STAMP}-2"
    assert third.is_dir() and not any(third.iterdir())
