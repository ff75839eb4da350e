"""A point-in-time archive made of stand-in files: empty WAL segments dated by their mtime
and base backup manifests, for the tests of the window, retention and the upload records."""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

from laterbased.records import wal_archive

T0 = datetime(2026, 11, 29, 8, 0, tzinfo=UTC)


def segment(
    root: Path, number: int, at: datetime, suffix: str = ".gz", content: bytes = b""
) -> Path:
    directory = wal_archive.wal_dir(root)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{wal_archive.segment_name(1, number)}{suffix}"
    path.write_bytes(content)
    os.utime(path, (at.timestamp(), at.timestamp()))
    return path


def base_backup(root: Path, start_segment: int, finished: datetime) -> Path:
    lsn = f"0/{start_segment * wal_archive.DEFAULT_SEGMENT_SIZE + 40:X}"
    directory = wal_archive.base_dir(root) / finished.strftime("%Y%m%dT%H%M%SZ")
    directory.mkdir(parents=True)
    (directory / wal_archive.BASE_MANIFEST).write_text(
        json.dumps(
            {
                "kind": wal_archive.BASE_MANIFEST_KIND,
                "started": (finished - timedelta(seconds=5)).isoformat(),
                "finished": finished.isoformat(),
                "start_lsn": lsn,
                "end_lsn": lsn,
                "timeline": 1,
                "server_version": "15.0",
                "server_version_num": 150000,
                "system_identifier": "1",
                "wal_segment_size": wal_archive.DEFAULT_SEGMENT_SIZE,
            }
        )
    )
    return directory
