"""The verify job: is the newest backup of each database readable and intact?

Checks, cheapest first: the file's sha256 still matches its manifest; a custom-format
archive lists with ``pg_restore --list`` of the backup's server major, the one Resolve's own
Restore runs (the nearest newer major, with a warning, when that one is not installed; the
pg_dump's major when a newer pg_dump wrote it; the detail names the major used), so its
table of contents is complete; a plain-gzip
file decompresses to the end (gzip's own CRC). The result goes into the manifest
(``verified``, ``verified_at``, ``verify_detail``).

With ``backup.restore_drill`` the newest custom-format backup of each database that passed
those checks is also restored into a throw-away cluster and its row counts compared with
the source (``jobs/drill.py``); the outcome goes into the manifest's ``drill`` field. A
drill that fails because of the backup (pg_restore error, different counts) marks the
backup not verified; one that cannot run here (no server programs) fails the job but does
not condemn the backup.
"""

from __future__ import annotations

import asyncio
import gzip
import logging
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from laterbased import proc
from laterbased.backup.drill import DrillResult, restore_drill
from laterbased.backup.dump import HASH_CHUNK, hash_file
from laterbased.config import Config
from laterbased.errors import LaterbasedError, ToolMissing
from laterbased.pg.binaries import (
    major_from_version_string,
    major_key,
    newest_bindir_at_least,
    probe_bindir,
    reading_bindir,
)
from laterbased.records.catalogue import BackupRecord, Catalogue

logger = logging.getLogger(__name__)

VERIFY_TOOLS = ("pg_restore",)


def server_major(version: str | None) -> str | None:
    """``"15.4 (Debian…)"`` → ``"15"``, ``"9.5.24"`` → ``"9.5"``."""
    if not version:
        return None
    parts = version.split()[0].split(".")
    try:
        first = int(parts[0])
    except ValueError:
        return None
    if first >= 10 or len(parts) < 2:
        return str(first)
    return f"{first}.{parts[1]}"


def reading_major(record: BackupRecord) -> str | None:
    """The major whose pg_restore reads ``record``: its server's, the one Resolve's own
    Restore runs. Unless a newer pg_dump wrote it (none of the server's major was installed;
    the manifest says Resolve cannot read it): an older pg_restore need not restore such an
    archive (``pg_restore`` 13 ``--no-owner`` stops at pg_dump 15's ``CREATE SCHEMA public``),
    so that pg_dump's major, or a good backup would be condemned for what Resolve cannot do."""
    major = server_major(record.server_version)
    if major is None or not record.pg_dump_version:
        return major
    try:
        written = major_from_version_string(record.pg_dump_version)
    except ValueError:
        return major
    return written if major_key(written) > major_key(major) else major


def _gunzip_to_end(record: BackupRecord) -> None:
    with gzip.open(record.path, "rb") as handle:
        while handle.read(HASH_CHUNK):
            pass


async def check_backup(config: Config, record: BackupRecord, run_id: str) -> tuple[bool, str]:
    size, digest = await asyncio.to_thread(hash_file, record.path)
    if size != record.size or digest != record.sha256:
        return False, f"checksum mismatch (size {size}, manifest says {record.size})"
    if record.format == "plain-gzip":
        try:
            await asyncio.to_thread(_gunzip_to_end, record)
        except (OSError, EOFError) as exc:
            return False, f"gzip stream is damaged: {exc}"
        return True, "sha256 ok, gzip stream complete"
    if record.format != "custom":
        return True, "sha256 ok"
    major = reading_major(record)
    if major is not None:
        # The server's major, as Resolve's own Restore reads it (not the newest installed).
        bindir, reader = await asyncio.to_thread(
            reading_bindir, major, config.backup.bin_dir, tools=VERIFY_TOOLS
        )
    else:
        # A manifest without the server's version (not one of ours, or very old): any
        # pg_restore reads archives of its own major and older, so take the newest.
        bindir, reader = await asyncio.to_thread(_newest_reader, config.backup.bin_dir)
    completed = await proc.run(
        [str(bindir / "pg_restore"), "--list", str(record.path)],
        capture_stdout=True,
        log_name=f"pg_restore --list run={run_id}",
        timeout=config.backup.timeout,
        stderr_level=logging.WARNING,
    )
    if completed.returncode != 0:
        tail = " | ".join(completed.stderr_tail[-3:]) or "no message"
        return (
            False,
            f"pg_restore --list (pg_restore {reader}) exited with status "
            f"{completed.returncode}: {tail}",
        )
    entries = sum(
        1
        for line in completed.stdout.decode("utf-8", errors="replace").splitlines()
        if line and not line.startswith(";")
    )
    detail = f"sha256 ok, pg_restore --list ok (pg_restore {reader}, {entries} entries)"
    if record.resolve_restore_readable is False:
        detail += (
            "; a pg_dump newer than its server wrote it: not readable by Resolve's own restore"
        )
    return True, detail


def _newest_reader(configured: Path | None) -> tuple[Path, str]:
    if configured is not None:
        found = probe_bindir(configured, VERIFY_TOOLS)
        if found is None:
            raise ToolMissing(f"backup.bin_dir={configured}: no usable pg_restore there")
        return configured, found
    return newest_bindir_at_least("9.0", tools=VERIFY_TOOLS)


async def verify_newest(config: Config, catalogue: Catalogue, run_id: str) -> list[dict[str, Any]]:
    """Check the newest backup of every database; record the verdict in its manifest."""
    records = await asyncio.to_thread(catalogue.list_backups)
    now = datetime.now(UTC)
    newest: dict[str, BackupRecord] = {}
    for record in records:  # oldest first
        if record.is_globals or not record.path.exists():
            continue
        # One dated in the future (the clock ran fast) is not the newest while one with a
        # believable date exists: else the real newest would never be checked.
        current = newest.get(record.database)
        if current is None or not record.from_the_future(now) or current.from_the_future(now):
            newest[record.database] = record
    results: list[dict[str, Any]] = []
    for database, record in sorted(newest.items()):
        try:
            ok, detail = await check_backup(config, record, run_id)
        except (OSError, LaterbasedError, TimeoutError) as exc:
            # We could not judge the backup (pg_restore missing, a timeout, an I/O error on
            # our side): the job fails and says so, but the backup keeps the verdict it had.
            # Marking it damaged would make retention treat a good backup as bad.
            reason = str(exc) or type(exc).__name__
            logger.error(
                "verify could not run run=%s database=%r file=%s: %s",
                run_id,
                database,
                record.file,
                reason,
            )
            results.append(
                {
                    "database": database,
                    "file": record.file,
                    "ok": False,
                    "backup_ok": None,
                    "detail": f"could not verify: {reason}",
                }
            )
            continue
        job_ok, drill = ok, None
        if ok and config.backup.restore_drill:
            drill = await _drill(config, record, run_id)
            job_ok = drill.ok
            detail = f"{detail}; {drill.detail}"
            if not drill.ok and drill.backup_at_fault:
                ok = False
        await asyncio.to_thread(
            catalogue.mark_verified,
            record,
            ok,
            detail,
            None,
            drill.to_manifest() if drill is not None else None,
        )
        if ok:
            logger.info(
                "verify ok run=%s database=%r file=%s: %s", run_id, database, record.file, detail
            )
        else:
            logger.error(
                "verify FAILED run=%s database=%r file=%s: %s",
                run_id,
                database,
                record.file,
                detail,
            )
        results.append(
            {
                "database": database,
                "file": record.file,
                "ok": job_ok and ok,
                "backup_ok": ok,
                "detail": detail,
                **({"drill": drill.to_manifest()} if drill is not None else {}),
            }
        )
    return results


async def _drill(config: Config, record: BackupRecord, run_id: str) -> DrillResult:
    major = reading_major(record)
    if major is None:
        return DrillResult(False, "restore drill: manifest has no server version", False)
    logger.info(
        "restore drill started run=%s database=%r file=%s", run_id, record.database, record.file
    )
    drill = await restore_drill(config, record, major, run_id)
    logger.log(
        logging.INFO if drill.ok else logging.ERROR,
        "restore drill %s run=%s database=%r tables=%s rows=%s seconds=%.1f: %s",
        "passed" if drill.ok else "FAILED",
        run_id,
        record.database,
        drill.tables,
        drill.rows,
        drill.seconds,
        drill.detail,
    )
    return drill
