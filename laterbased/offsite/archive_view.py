"""The point-in-time archive on the rclone remote, seen as a local archive folder.

What the window needs, not the data: the base backups' manifests and the timeline history
files (small: fetched), and every WAL segment as an empty local stand-in with its name and
its time on the remote. ``records/wal_archive.py`` then answers for the remote exactly as
for the local archive: which base backup reaches a moment (the restore, ops/), what the
window no longer needs (off-site retention). A base backup exists off-site once its
``manifest.json`` does (the upload sends it last).
"""

from __future__ import annotations

import asyncio
import os
from dataclasses import dataclass
from pathlib import Path

from laterbased.offsite.rclone import Rclone, RemoteEntry
from laterbased.records import wal_archive


@dataclass(frozen=True)
class RemoteArchiveView:
    root: Path  # the local folder: @base/<stamp>/manifest.json, @wal/ history + stand-ins
    wal_entries: tuple[RemoteEntry, ...]  # what the remote's @wal holds
    stand_ins: tuple[Path, ...]

    async def drop_stand_ins(self) -> None:
        """From here on the folder holds real files only."""
        await asyncio.to_thread(_drop, self.stand_ins)


def remote_segments(entries: tuple[RemoteEntry, ...]) -> list[RemoteEntry]:
    return [e for e in entries if wal_archive.parse_segment(Path(e.name)) is not None]


def _stand_ins(root: Path, entries: tuple[RemoteEntry, ...]) -> tuple[Path, ...]:
    directory = wal_archive.wal_dir(root)
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    made = []
    for entry in remote_segments(entries):
        if entry.modified is None:
            continue  # no time, no place in the window: never counted, never deleted
        path = directory / entry.name
        path.touch(mode=0o600)
        moment = entry.modified.timestamp()
        os.utime(path, (moment, moment))
        made.append(path)
    return tuple(made)


def _drop(paths: tuple[Path, ...]) -> None:
    for path in paths:
        path.unlink(missing_ok=True)


async def read_remote_archive(rclone: Rclone, into: Path) -> RemoteArchiveView | None:
    """The remote's archive as a view in the (new or empty) folder ``into``; None when the
    remote holds no base backup. Raises RcloneFailed when it cannot be read."""
    base_entries = await rclone.lsjson(rclone.target(wal_archive.BASE_DIR), recursive=True)
    manifests = sorted(
        entry.path
        for entry in base_entries
        if entry.name == wal_archive.BASE_MANIFEST and entry.path.count("/") == 1
    )
    if not manifests:
        return None
    wal_entries = tuple(await rclone.lsjson(rclone.target(wal_archive.WAL_DIR)))
    base_root = wal_archive.base_dir(into)
    await asyncio.to_thread(base_root.mkdir, 0o700, True, True)
    await rclone.copy_files(rclone.target(wal_archive.BASE_DIR), str(base_root), manifests)
    wal_root = wal_archive.wal_dir(into)
    await asyncio.to_thread(wal_root.mkdir, 0o700, True, True)
    histories = [e.name for e in wal_entries if wal_archive.is_history_file(e.name)]
    await rclone.copy_files(rclone.target(wal_archive.WAL_DIR), str(wal_root), histories)
    stand_ins = await asyncio.to_thread(_stand_ins, into, wal_entries)
    return RemoteArchiveView(into, wal_entries, stand_ins)
