"""The upload step: copy every local backup that has no off-site copy yet with rclone.

For each good local backup whose manifest has no ``uploaded_to`` (newest first, so the most
valuable copy leaves first when the line is slow):

1. ask the remote whether it already holds the file with the same size (and hash, when the
   backend has one we can compare): then it is not sent again;
2. otherwise ``rclone copyto`` the file to ``<remote>:<path>/<db dir>/<file>``;
3. verify: same size, and the same hash: the best of sha256 / md5 / sha1 the remote has
   (rclone is asked only for those its backend offers: S3 has md5 alone);
4. copy the manifest next to it (recording where, when and how it was verified), then
   record ``uploaded_to``, ``uploaded_at`` and ``uploaded_verified`` ("size+md5", ...) in
   the local manifest.

A failure leaves the backup "pending upload" for the next run (and local retention keeps
it). Optional remote retention (``upload.retention_days``) deletes only files that have our
manifest alongside, and never the newest backup of a database.

With ``pitr`` on, the point-in-time archive (base backups, finished WAL) follows the dumps in
the same run: offsite/archive_upload.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import os
import re
import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from laterbased.config import Config
from laterbased.core.state import State
from laterbased.errors import ToolMissing
from laterbased.offsite.archive_upload import (
    prune_remote_archive,
    refresh_archive_pending,
    upload_archive,
)
from laterbased.offsite.rclone import Rclone, RcloneFailed, RemoteEntry, find_rclone
from laterbased.offsite.verified_copy import file_matches, send_verified
from laterbased.records.catalogue import (
    FUTURE_TOLERANCE,
    MANIFEST_SUFFIX,
    BackupRecord,
    Catalogue,
    manifest_name,
)
from laterbased.records.wal_archive import BASE_DIR
from laterbased.units import format_size

logger = logging.getLogger(__name__)

_STAMP = re.compile(r"-(\d{8}T\d{6}Z)(?:-\d+)?\.[^/]+$")


@dataclass
class UploadResult:
    """What one upload run did; ``to_json`` is the chain step the runner reports."""

    run_id: str
    result: str = "success"  # success | failed | skipped
    uploaded: list[str] = field(default_factory=list)
    already_there: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    deleted_remote: list[str] = field(default_factory=list)
    bytes_sent: int = 0
    detail: str | None = None
    # The point-in-time archive's part (pitr on): counts, see offsite/archive_upload.py.
    archive: dict[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "step": "upload",
            "result": self.result,
            "detail": self.detail,
            "uploaded": self.uploaded,
            "already_there": self.already_there,
            "failed": self.failed,
            "deleted_remote": self.deleted_remote,
            "bytes": self.bytes_sent,
            "archive": self.archive,
        }


def remote_dir(record: BackupRecord) -> str:
    """The folder under the upload path: the same (file-name safe) name as locally."""
    return record.directory.name


async def matches(record: BackupRecord, entry: RemoteEntry | None) -> tuple[bool, str]:
    """Does the remote object hold this backup? (same size, same hash when comparable)"""
    return await file_matches(record.path, record.size, entry, record.sha256)


def _write_manifest_copy(catalogue: Catalogue, record: BackupRecord) -> Path:
    """The manifest as it will read off-site (with uploaded_to/at), in ``.partial/``."""
    catalogue.prepare()
    temp = catalogue.partial / f"{secrets.token_hex(4)}-{manifest_name(record.file)}"
    data = json.dumps(record.to_json(), indent=2, ensure_ascii=False) + "\n"
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(data)
    return temp


async def upload_one(
    rclone: Rclone, catalogue: Catalogue, record: BackupRecord, run_id: str, result: UploadResult
) -> None:
    """Upload (or recognise) one backup and record it; raises RcloneFailed/JobFailed."""
    folder = remote_dir(record)
    file_target = rclone.target(folder, record.file)
    manifest_target = rclone.target(folder, manifest_name(record.file))
    started = time.monotonic()
    sent, how = await send_verified(
        rclone, record.path, record.size, file_target, record.sha256
    )
    if not sent:
        result.already_there.append(record.file)
        logger.info(
            "upload skipped run=%s file=%s reason=remote already has it (%s)",
            run_id,
            record.file,
            how,
        )
    else:
        result.bytes_sent += record.size
        result.uploaded.append(record.file)
        logger.info(
            "upload finished run=%s file=%s size=%s seconds=%.1f verified=%s",
            run_id,
            record.file,
            format_size(record.size),
            time.monotonic() - started,
            how,
        )
    destination = file_target
    now = datetime.now(UTC)
    marked = dataclasses.replace(
        record, uploaded_to=destination, uploaded_at=now, uploaded_verified=how
    )
    temp = await asyncio.to_thread(_write_manifest_copy, catalogue, marked)
    try:
        await rclone.copyto(temp, manifest_target)
    finally:
        with contextlib.suppress(OSError):
            await asyncio.to_thread(temp.unlink)
    manifest_entry = await rclone.stat(manifest_target, hashes=False)
    if manifest_entry is None:
        raise RcloneFailed(f"{manifest_target}: manifest missing right after upload", None)
    await asyncio.to_thread(catalogue.mark_uploaded, record, destination, now, how)


async def upload_pending(
    config: Config,
    state: State,
    catalogue: Catalogue | None = None,
    run_id: str | None = None,
) -> UploadResult:
    """Upload every good local backup not uploaded yet; then apply remote retention.

    Never raises for an rclone or remote problem: the result says ``failed`` with the
    reason, and what did not make it stays pending for the next run. Job status
    (``state.jobs["upload"]``) is kept by the caller (the backup chain).
    """
    run_id = run_id or f"upload-{datetime.now(UTC):%Y%m%dT%H%M%S}Z"
    result = UploadResult(run_id)
    if not config.upload.enabled:
        result.result, result.detail = "skipped", "uploads are off"
        return result
    catalogue = catalogue or Catalogue(config.backup_directory)
    records = await asyncio.to_thread(catalogue.list_backups)
    pending = [r for r in records if r.uploaded_at is None and r.good]
    try:
        rclone = await Rclone.open(config.upload)
    except (ToolMissing, RcloneFailed) as exc:
        result.result, result.detail = "failed", str(exc)
        logger.error("upload failed run=%s reason=%s", run_id, exc)
        _update_pending(state, records, set())
        if config.pitr.enabled:
            await refresh_archive_pending(config, state)
        return result
    done: set[str] = set()
    for record in sorted(pending, key=lambda r: r.started, reverse=True):
        try:
            await upload_one(rclone, catalogue, record, run_id, result)
        except (RcloneFailed, OSError) as exc:
            result.failed[record.file] = str(exc)
            logger.error(
                "upload failed run=%s file=%s database=%s reason=%s; "
                "the backup stays local and is retried next run",
                run_id,
                record.file,
                record.database,
                exc,
            )
            continue
        done.add(record.file)
    if config.pitr.enabled:
        archive = await upload_archive(config, state, rclone, run_id)
        result.archive = archive.to_json()
        result.bytes_sent += archive.bytes_sent
        if archive.failed is not None:
            result.failed["point-in-time archive"] = archive.failed
    if config.upload.retention_days is not None and not result.failed:
        try:
            result.deleted_remote = await prune_remote(
                rclone, config.upload.retention_days, run_id
            )
            if config.pitr.enabled:
                bases, segments = await prune_remote_archive(
                    rclone, config.upload.retention_days, run_id
                )
                result.deleted_remote += [f"{BASE_DIR}/{stamp}" for stamp in bases]
                if result.archive is not None:
                    result.archive["deleted_remote_wal"] = segments
        except RcloneFailed as exc:
            result.failed["remote retention"] = str(exc)
            logger.error("remote retention failed run=%s reason=%s", run_id, exc)
    state.upload_bytes += result.bytes_sent
    _update_pending(state, records, done)
    if result.failed:
        result.result = "failed"
        result.detail = "; ".join(f"{name}: {reason}" for name, reason in result.failed.items())
    else:
        state.upload_last_success = time.time()
        result.detail = (
            f"{len(result.uploaded)} uploaded ({format_size(result.bytes_sent)}), "
            f"{len(result.already_there)} already there"
            + (f", {len(result.deleted_remote)} deleted off-site" if result.deleted_remote else "")
            + (
                f"; point-in-time archive: {result.archive['uploaded']} file(s) uploaded, "
                f"{result.archive['already_there']} already there"
                if result.archive is not None
                else ""
            )
        )
    logger.info(
        "upload run finished run=%s result=%s uploaded=%s already_there=%s failed=%s "
        "bytes=%s target=%s",
        run_id,
        result.result,
        len(result.uploaded),
        len(result.already_there),
        len(result.failed),
        result.bytes_sent,
        rclone.target(),
    )
    return result


def _update_pending(state: State, records: Sequence[BackupRecord], done: set[str]) -> None:
    by_database: dict[str, list[BackupRecord]] = {}
    for record in records:
        if record.good:
            # By series: the globals are not the database called "(globals)".
            by_database.setdefault(record.series, [])
            if record.uploaded_at is None and record.file not in done:
                by_database[record.series].append(record)
    for database, waiting in by_database.items():
        summary = state.backup(database)
        summary.pending_upload = len(waiting)
        summary.oldest_pending_upload = (
            min(r.finished.timestamp() for r in waiting) if waiting else None
        )


def stamp_of(name: str) -> datetime | None:
    """The UTC time in ``<db>-<yyyymmddTHHMMSSZ>[-n].<ext>``, or None."""
    match = _STAMP.search(name)
    if not match:
        return None
    return datetime.strptime(match.group(1), "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)


def remote_expired(
    entries: Sequence[RemoteEntry], retention_days: int, now: datetime
) -> list[RemoteEntry]:
    """Our uploads (a data file with our manifest alongside) older than the retention, never
    the newest one in each folder. Files without our manifest are never candidates."""
    paths = {entry.path for entry in entries}
    ours: dict[str, list[tuple[datetime, RemoteEntry]]] = {}
    for entry in entries:
        if entry.path.endswith(MANIFEST_SUFFIX):
            continue
        folder, _, name = entry.path.rpartition("/")
        manifest = f"{folder}/{manifest_name(name)}" if folder else manifest_name(name)
        stamp = stamp_of(name)
        if manifest in paths and stamp is not None:
            ours.setdefault(folder, []).append((stamp, entry))
    cutoff = now - timedelta(days=retention_days)
    expired: list[RemoteEntry] = []
    for group in ours.values():
        group.sort(key=lambda pair: pair[0])
        # The newest of each folder always stays, and so does the newest with a believable
        # date: one dated in the future (a clock that ran fast) must not let it expire.
        believable = [entry for stamp, entry in group if stamp <= now + FUTURE_TOLERANCE]
        keep = {id(group[-1][1])} | ({id(believable[-1])} if believable else set())
        for stamp, entry in group:
            if id(entry) not in keep and stamp < cutoff:
                expired.append(entry)
    return expired


async def prune_remote(rclone: Rclone, retention_days: int, run_id: str) -> list[str]:
    """Delete our uploads older than ``retention_days`` (data file, then its manifest)."""
    entries = await rclone.lsjson(rclone.target(), recursive=True)
    deleted: list[str] = []
    for entry in remote_expired(entries, retention_days, datetime.now(UTC)):
        folder, _, name = entry.path.rpartition("/")
        await rclone.deletefile(rclone.target(folder, name))
        await rclone.deletefile(rclone.target(folder, manifest_name(name)))
        deleted.append(entry.path)
        logger.info(
            "remote retention deleted run=%s file=%s age_limit_days=%s",
            run_id,
            rclone.target(entry.path),
            retention_days,
        )
    return deleted


async def check_upload_tools(ctx: Any) -> None:
    """Daemon worker: with uploads configured, a missing rclone stops the start (exit 3)."""
    config: Config = ctx.config
    binary = await asyncio.to_thread(find_rclone, config.upload)
    logger.info(
        "uploads enabled target=%s:%s rclone=%s", config.upload.remote, config.upload.path, binary
    )
