"""The point-in-time archive off-site: base backups and finished WAL, by the upload job.

With ``pitr`` and the upload both on, every upload run (after the dumps) sends what the
archive has finished and the remote lacks, mirroring the local layout under the upload
path::

    <remote>:<path>/@base/<stamp>/base.tar.gz, backup_manifest, then manifest.json
    <remote>:<path>/@wal/<segment>.gz, <timeline>.history[.gz]

Never the ``.partial`` segment pg_receivewal is writing. Each file goes the way a dump does
(offsite/upload.py ``send_verified``: asked first, skipped when the remote has it with the
same size and hash, copied with ``rclone copyto``, checked after); a base backup's own
manifest goes last, so off-site as locally a base backup exists only once its manifest does.
What made it is recorded beside it (records/wal_archive.py ``mark_uploaded``): archive
retention keeps everything not recorded yet, and ``restore --at`` can fetch it back
(ops/restore/remote_archive.py) when the local archive is gone. The first failure ends the
run's archive part (the remote is most likely down): the rest waits for the next run.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from laterbased.config import Config
from laterbased.core.state import State
from laterbased.offsite.rclone import Rclone, RcloneFailed
from laterbased.offsite.verified_copy import send_verified
from laterbased.records import wal_archive
from laterbased.units import format_size

logger = logging.getLogger(__name__)


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
        for path in files:
            if not await asyncio.to_thread(path.is_file):
                continue  # gone since the listing (deleted by hand): nothing to send
            target = rclone.target(wal_archive.WAL_DIR, path.name)
            how = await _send(rclone, path, target, outcome)
            await asyncio.to_thread(
                wal_archive.mark_uploaded, path, target, how, datetime.now(UTC)
            )
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
