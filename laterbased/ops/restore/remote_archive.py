"""The point-in-time archive fetched back from the rclone remote, for ``restore --at``.

When the local archive cannot give a moment back (the backup disk was lost, ``@wal`` and
``@base`` deleted, or pruned), the copy the upload job keeps off-site
(offsite/archive_upload.py: ``<remote>:<path>/@base/<stamp>/``, ``<remote>:<path>/@wal/``)
can. The restore reads it in two steps, in a folder of its own work directory:

1. the remote's window: the base backups' manifests and the timeline history files (small,
   fetched) and the list of WAL segments with their times (empty local stand-ins carry each
   name and time): the same ``wal_archive.coverage`` / ``base_backup_for`` as for the local
   archive pick the base backup, so both answer alike;
2. what the recovery needs, and only that: the stand-ins are dropped, one ``rclone copy``
   brings that base backup's folder, and one ``rclone copy --files-from`` every segment from
   its start on, straight to disk (rclone streams them; nothing is held in memory). The
   folder is then an archive like the local one; the throw-away cluster stages its WAL from
   it as usual.

An unreachable remote is no error here: the restore goes on as without an archive (the
newest dump at or before the moment) and says why.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from laterbased.config import Config
from laterbased.errors import ToolMissing
from laterbased.offsite.archive_view import read_remote_archive, remote_segments
from laterbased.offsite.rclone import Rclone, RcloneFailed, RemoteEntry
from laterbased.records import wal_archive

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class FetchedArchive:
    """A local archive folder holding what the recovery to the moment needs."""

    root: Path
    backup: wal_archive.BaseBackup
    source: str  # remote:path it came from
    wal_files: int


@dataclass(frozen=True)
class RemoteMiss:
    """The remote was asked and cannot give the moment back: why, for the operator."""

    reason: str
    # The moment is inside the remote's window but out of its reach: the refusal, with
    # the ranges it can restore (None: older than its window, or no window at all).
    refused: str | None = None


def _needed_segments(
    entries: tuple[RemoteEntry, ...], backup: wal_archive.BaseBackup
) -> list[str]:
    """Every segment the recovery from ``backup`` may ask for: from its start on, of its
    timeline and every later one (the recovery follows a switch)."""
    first = wal_archive.segment_of_lsn(backup.start_lsn, backup.segment_size)
    names = []
    for entry in remote_segments(entries):
        segment = wal_archive.parse_segment(Path(entry.name), backup.segment_size)
        if segment is not None and segment.number >= first and segment.timeline >= backup.timeline:
            names.append(entry.name)
    return sorted(names)


async def fetch_for_moment(
    config: Config, moment: datetime, into: Path
) -> FetchedArchive | RemoteMiss:
    """Fetch from the remote the base backup and WAL a recovery to ``moment`` needs, into
    the (new) folder ``into``; or why the remote cannot give it."""
    try:
        rclone = await Rclone.open(config.upload)
        source = rclone.target()
        view = await read_remote_archive(rclone, into)
        if view is None:
            return RemoteMiss(f"{source} holds no base backup of the point-in-time archive")
        backup = await asyncio.to_thread(wal_archive.base_backup_for, into, moment)
        if backup is None:
            window = await asyncio.to_thread(wal_archive.coverage, into)
            covers = window.describe_ranges() or "no restorable range"
            refused = window.why_out_of_reach(
                moment,
                f"the point-in-time archive on {source} (the local one does not reach it "
                "either)",
                "it has what was uploaded, after each dump",
            )
            return RemoteMiss(f"the archive on {source} covers {covers}", refused)
        await view.drop_stand_ins()
        stamp = backup.directory.name
        logger.info(
            "restore: fetching base backup %s and its WAL from %s (the local archive does not "
            "cover %s)",
            stamp,
            source,
            moment.isoformat(),
        )
        await rclone.call(
            "copy", rclone.target(wal_archive.BASE_DIR, stamp), str(backup.directory)
        )
        needed = _needed_segments(view.wal_entries, backup)
        wal_root = wal_archive.wal_dir(into)
        await rclone.copy_files(rclone.target(wal_archive.WAL_DIR), str(wal_root), needed)
    except (RcloneFailed, ToolMissing) as exc:
        logger.warning("restore: the point-in-time archive off-site cannot be read: %s", exc)
        return RemoteMiss(f"the archive off-site cannot be read: {exc}")
    logger.info("restore: fetched base backup %s and %s WAL file(s)", stamp, len(needed))
    return FetchedArchive(into, backup, source, len(needed))
