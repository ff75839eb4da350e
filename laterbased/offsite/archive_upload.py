"""The point-in-time archive off-site: base backups and finished WAL, by the upload job.

With ``pitr`` and the upload both on, every upload run (after the dumps) sends what the
archive has finished and the remote lacks, mirroring the local layout under the upload
path::

    <remote>:<path>/@base/<stamp>/base.tar.gz, backup_manifest, then manifest.json
    <remote>:<path>/@wal/<segment>.gz, <timeline>.history[.gz]

Never the ``.partial`` segment pg_receivewal is writing. Each file goes the way a dump does
(offsite/verified_copy.py: asked first, skipped when the remote has it with the same size
and hash, copied, checked after): a base backup's files one by one with ``rclone copyto``,
its own manifest last, so off-site as locally a base backup exists only once its manifest
does; WAL files (a busy hour makes hundreds) in batches of :data:`WAL_BATCH`, three rclone
commands a batch (``lsjson`` of just those names, one ``rclone copy``, ``lsjson`` again).
What made it is recorded beside it (records/wal_archive.py ``mark_uploaded``): archive
retention keeps everything not recorded yet, and ``restore --at`` can fetch it back
(ops/restore/remote_archive.py) when the local archive is gone. The first failure ends the
run's archive part (the remote is most likely down): the rest waits for the next run. With
``upload.retention_days``, :func:`prune_remote_archive` keeps off-site what a window of that
many days needs, by the local archive's own rule.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from laterbased.config import Config
from laterbased.core.state import State
from laterbased.offsite.archive_view import read_remote_archive
from laterbased.offsite.rclone import Rclone, RcloneFailed, RemoteEntry
from laterbased.offsite.verified_copy import file_matches, send_verified
from laterbased.records import wal_archive
from laterbased.units import format_size

logger = logging.getLogger(__name__)

# WAL files per ``rclone copy``: a backlog of days goes in steps, each within upload.timeout.
WAL_BATCH = 200


@dataclass
class ArchiveUpload:
    """What one run did with the archive."""

    uploaded: int = 0
    already_there: int = 0
    bytes_sent: int = 0
    failed: str | None = None
    pending: int = 0

    def to_json(self) -> dict[str, Any]:
        return {
            "uploaded": self.uploaded,
            "already_there": self.already_there,
            "bytes": self.bytes_sent,
            "failed": self.failed,
            "pending": self.pending,
        }


async def refresh_archive_pending(config: Config, state: State) -> int:
    """Count what waits for its off-site copy into ``state.archive``; returns the count."""
    count, oldest = await asyncio.to_thread(wal_archive.pending_upload, config.backup_directory)
    state.archive.pending_upload = count
    state.archive.oldest_pending_upload = oldest
    return count


def base_backup_files(directory: Path) -> list[Path]:
    """A base backup's files in upload order: its manifest (its publication) last."""
    files = sorted(p for p in directory.iterdir() if p.is_file())
    return [p for p in files if p.name != wal_archive.BASE_MANIFEST] + [
        p for p in files if p.name == wal_archive.BASE_MANIFEST
    ]


async def _send(rclone: Rclone, path: Path, target: str, outcome: ArchiveUpload) -> str:
    size = (await asyncio.to_thread(path.stat)).st_size
    sent, how = await send_verified(rclone, path, size, target)
    if sent:
        outcome.uploaded += 1
        outcome.bytes_sent += size
    else:
        outcome.already_there += 1
    logger.debug("archive upload %s file=%s verified=%s", "sent" if sent else "skipped", path, how)
    return how


async def _send_wal(rclone: Rclone, files: list[Path], outcome: ArchiveUpload) -> None:
    """A batch of WAL files the way ``send_verified`` sends one, in three rclone commands
    rather than three per file: which of them the remote already holds (size and hash), one
    ``rclone copy`` of the others, then each checked; every one recorded as it is known
    off-site. A copy that does not match raises RcloneFailed (the rest stays pending)."""
    folder = rclone.target(wal_archive.WAL_DIR)
    sizes = {}
    for path in files:
        with contextlib.suppress(FileNotFoundError):  # deleted by hand since the listing
            sizes[path.name] = (await asyncio.to_thread(path.stat)).st_size
    present = [p for p in files if p.name in sizes]

    async def holds(paths: list[Path], entries: list[RemoteEntry]) -> list[Path]:
        """Record those the remote holds; the others."""
        by_name = {entry.name: entry for entry in entries}
        missing = []
        for path in paths:
            ok, how = await file_matches(path, sizes[path.name], by_name.get(path.name))
            if not ok:
                missing.append(path)
                continue
            target = rclone.target(wal_archive.WAL_DIR, path.name)
            await asyncio.to_thread(
                wal_archive.mark_uploaded, path, target, how, datetime.now(UTC)
            )
        return missing

    names = [p.name for p in present]
    missing = await holds(present, await rclone.lsjson(folder, hashes=True, only=names))
    outcome.already_there += len(present) - len(missing)
    if not missing:
        return
    wanted = [p.name for p in missing]
    await rclone.copy_files(str(missing[0].parent), folder, wanted)
    failed = await holds(missing, await rclone.lsjson(folder, hashes=True, only=wanted))
    sent = [p for p in missing if p not in failed]
    outcome.uploaded += len(sent)
    outcome.bytes_sent += sum(sizes[p.name] for p in sent)
    if failed:
        raise RcloneFailed(
            f"{rclone.target(wal_archive.WAL_DIR, failed[0].name)}: verification after upload "
            f"failed ({len(failed)} WAL file(s) do not match)",
            None,
        )


async def upload_archive(
    config: Config, state: State, rclone: Rclone, run_id: str
) -> ArchiveUpload:
    """Send every base backup and finished WAL file not uploaded yet, oldest first (base
    backups before WAL); record each; refresh ``state.archive``'s pending count."""
    root = config.backup_directory
    outcome = ArchiveUpload()
    backups, files = await asyncio.to_thread(wal_archive.not_uploaded, root)
    started = time.monotonic()
    try:
        for backup in backups:
            folder = backup.directory
            how = ""
            for path in await asyncio.to_thread(base_backup_files, folder):
                how = await _send(
                    rclone, path, rclone.target(wal_archive.BASE_DIR, folder.name, path.name),
                    outcome,
                )
            destination = rclone.target(wal_archive.BASE_DIR, folder.name)
            await asyncio.to_thread(
                wal_archive.mark_uploaded, folder, destination, how, datetime.now(UTC)
            )
            logger.info(
                "archive upload: base backup %s is off-site run=%s target=%s",
                folder.name,
                run_id,
                destination,
            )
        for first in range(0, len(files), WAL_BATCH):
            await _send_wal(rclone, files[first : first + WAL_BATCH], outcome)
    except (RcloneFailed, OSError) as exc:
        outcome.failed = str(exc)
        logger.error(
            "archive upload failed run=%s reason=%s; what is not off-site yet stays local "
            "(archive retention keeps it) and is retried next run",
            run_id,
            exc,
        )
    count = outcome.pending = await refresh_archive_pending(config, state)
    logger.info(
        "archive upload finished run=%s uploaded=%s already_there=%s bytes=%s seconds=%.1f "
        "pending=%s",
        run_id,
        outcome.uploaded,
        outcome.already_there,
        format_size(outcome.bytes_sent),
        time.monotonic() - started,
        count,
    )
    return outcome


def _deleted_from(stand_ins: tuple[Path, ...]) -> list[str]:
    return sorted(path.name for path in stand_ins if not path.exists())


async def prune_remote_archive(
    rclone: Rclone, retention_days: int, run_id: str
) -> tuple[list[str], int]:
    """Off-site retention of the archive (``upload.retention_days``): the same rule as the
    local one (``wal_archive.prune``) applied to the remote's view, with a window of
    ``retention_days``: the newest base backup finished before it and every later one stay
    (the newest always), and the WAL from the oldest kept one's start on; older base
    backups (manifest first) and segments are deleted. History files stay. Returns the
    base backups deleted and how many WAL files."""
    work = Path(await asyncio.to_thread(tempfile.mkdtemp, prefix="laterbased-remote-archive-"))
    try:
        view = await read_remote_archive(rclone, work)
        if view is None:
            return [], 0
        window_start = datetime.now(UTC) - timedelta(days=retention_days)
        pruned = await asyncio.to_thread(wal_archive.prune, view.root, window_start)
        doomed = await asyncio.to_thread(_deleted_from, view.stand_ins)
    finally:
        await asyncio.to_thread(shutil.rmtree, work, True)
    for stamp in pruned.base_backups:
        # Its manifest first: a half-deleted base backup is no longer one.
        await rclone.deletefile(
            rclone.target(wal_archive.BASE_DIR, stamp, wal_archive.BASE_MANIFEST)
        )
        await rclone.purge(rclone.target(wal_archive.BASE_DIR, stamp))
    await rclone.delete_files(rclone.target(wal_archive.WAL_DIR), doomed)
    if pruned.base_backups or doomed:
        logger.info(
            "remote retention of the archive run=%s age_limit_days=%s: deleted %s base "
            "backup(s) %s and %s WAL file(s) off-site",
            run_id,
            retention_days,
            len(pruned.base_backups),
            ", ".join(pruned.base_backups) or "-",
            len(doomed),
        )
    return list(pruned.base_backups), len(doomed)
