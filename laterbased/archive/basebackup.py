"""Base backups on ``pitr.base_backup_schedule``: ``pg_basebackup -Ft -z -X none``.

No WAL in the backup (``-X none``): the archive has it, streamed by pg_receivewal through its
own slot, from before the backup's start. The tar and PostgreSQL's ``backup_manifest`` are
written into ``@base/.partial-<stamp>/``; our manifest (start/end LSN and timeline from the
backup manifest's WAL range, start time, end time, server version, system identifier) is
added and the folder renamed into place: it is there whole or not at all. On cancellation
(SIGTERM of the daemon) pg_basebackup is stopped and reaped and the partial folder removed.
"""

from __future__ import annotations

import asyncio
import json
import logging
import shutil
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from laterbased.archive.primary import inspect_primary, primary_conninfo, write_primary_passfile
from laterbased.config import Config
from laterbased.core.context import WorkerContext
from laterbased.errors import JobFailed
from laterbased.pg.binaries import find_bindir
from laterbased.proc import child_environment, finish_uncancellable, run
from laterbased.records import wal_archive
from laterbased.records.catalogue import STAMP_FORMAT
from laterbased.schedule.cron import next_fire

logger = logging.getLogger(__name__)

PASSFILE = "pitr-basebackup-passfile"
RETRY_DELAY = 300.0


def basebackup_argv(bindir: Path, config: Config, passfile: Path, target: Path) -> list[str]:
    level = config.pitr.compression_level
    return [
        str(bindir / "pg_basebackup"),
        f"--dbname={primary_conninfo(config, passfile, 'basebackup')}",
        "--no-password",
        "-D",
        str(target),
        "-Ft",
        *([f"--compress={level}"] if level else []),
        "-X",
        "none",
        "--checkpoint=fast",
        "--manifest-checksums=CRC32C",
    ]


async def take_base_backup(config: Config) -> wal_archive.BaseBackup:
    """One base backup from the primary, published in ``@base/<stamp>/``."""
    root = config.backup_directory
    facts = await inspect_primary(config, ensure_slot=False)
    bindir = await asyncio.to_thread(
        find_bindir, facts.major, config.standby.bin_dir, tools=("pg_basebackup",)
    )
    started = datetime.now(UTC)
    stamp = started.strftime(STAMP_FORMAT)
    partial = await asyncio.to_thread(wal_archive.new_base_partial, root, stamp)
    passfile = config.state_dir / PASSFILE
    try:
        await write_primary_passfile(config, passfile)
        result = await run(
            basebackup_argv(bindir, config, passfile, partial),
            env=child_environment({"PGPASSFILE": str(passfile)}),
            log_name="pitr pg_basebackup",
            timeout=config.backup.timeout,
            stderr_level=logging.INFO,
        )
        if result.returncode != 0:
            tail = " | ".join(result.stderr_tail[-3:]) or "no message"
            raise JobFailed(f"pg_basebackup failed (status {result.returncode}): {tail}")
        finished = datetime.now(UTC)
        manifest = json.loads(await asyncio.to_thread((partial / "backup_manifest").read_text))
        ranges = manifest["WAL-Ranges"]
        backup = wal_archive.BaseBackup(
            directory=wal_archive.base_dir(root) / stamp,
            started=started,
            finished=finished,
            start_lsn=str(ranges[0]["Start-LSN"]),
            end_lsn=str(ranges[-1]["End-LSN"]),
            timeline=int(ranges[-1]["Timeline"]),
            server_version=facts.server_version,
            server_version_num=facts.version_num,
            system_identifier=facts.system_identifier,
            segment_size=facts.segment_size,
        )
        await asyncio.to_thread(wal_archive.publish_base_backup, partial, backup)
    except BaseException:
        await finish_uncancellable(
            asyncio.ensure_future(asyncio.to_thread(shutil.rmtree, partial, True))
        )
        raise
    finally:
        passfile.unlink(missing_ok=True)
    logger.info(
        "base backup finished dir=%s start_lsn=%s end_lsn=%s seconds=%.1f",
        backup.directory,
        backup.start_lsn,
        backup.end_lsn,
        (backup.finished - backup.started).total_seconds(),
    )
    return backup


async def run_base_backups(ctx: WorkerContext) -> None:
    """A base backup at start when there is none, then on the schedule; a failed one is
    retried after a pause (the window cannot begin without one)."""
    st = ctx.state.archive
    root = ctx.config.backup_directory
    await asyncio.to_thread(wal_archive.remove_base_partials, root)
    due_now = not await asyncio.to_thread(wal_archive.list_base_backups, root)
    while not ctx.stopping.is_set():
        if not due_now:
            config = ctx.config
            fire = next_fire(
                config.pitr.base_backup_schedule, datetime.now(config.zone), config.zone
            )
            if await ctx.sleep(max(0.0, fire.timestamp() - time.time())):
                return
        due_now = False
        # A base backup is restorable only with the WAL from its start on: the archive
        # must be receiving before it begins.
        while st.phase != "streaming":
            if await ctx.sleep(0.5):
                return
        try:
            backup = await take_base_backup(ctx.config)
        except (JobFailed, OSError, ValueError, KeyError) as exc:
            st.last_base_backup_error = str(exc)
            logger.error("base backup failed: %s", exc)
            ctx.state.record_event("error", f"base backup failed: {exc}")
            due_now = True
            if await ctx.sleep(RETRY_DELAY):
                return
            continue
        except Exception as exc:  # PgUnavailable and friends: same as a failed run
            st.last_base_backup_error = str(exc)
            logger.error("base backup failed: %s", exc)
            due_now = True
            if await ctx.sleep(RETRY_DELAY):
                return
            continue
        st.last_base_backup_error = None
        st.last_base_backup = backup.finished.timestamp()
        st.base_backups += 1
        # Retention after each base backup: a newer one may let older WAL go.
        window_start = datetime.now(UTC) - timedelta(seconds=ctx.config.pitr_window)
        try:
            await asyncio.to_thread(wal_archive.prune, root, window_start)
        except OSError as exc:
            logger.error("pitr retention failed: %s", exc)
