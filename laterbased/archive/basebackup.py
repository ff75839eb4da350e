"""Base backups on ``pitr.base_backup_schedule``: ``pg_basebackup -Ft -z -X none``.

Taken from the local standby while it streams (the Resolve server does not read its whole
data directory for it): the same cluster as the primary (system identifier), streaming,
replaying, within ``monitor.max_lag_bytes``, and its last restartpoint inside the archive
(recovery from the backup starts there; the archive streams from the primary, which is ahead
of the standby, so the backup's end is covered too). Else, or when pg_basebackup fails on
the standby, from the primary; the manifest's ``source`` and the log say which.

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
import os
import shutil
import signal
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from laterbased.archive.primary import (
    APPLICATION_NAME,
    PrimaryFacts,
    archive_server,
    inspect_primary,
)
from laterbased.config import Config, PrimaryConfig
from laterbased.core.context import WorkerContext
from laterbased.errors import JobFailed, LaterbasedError
from laterbased.pg import sql
from laterbased.pg.binaries import find_bindir
from laterbased.pg.connect import PgUnavailable, connect, connect_primary
from laterbased.pg.conninfo import build_conninfo
from laterbased.pg.passfile import passfile_line, write_passfile
from laterbased.pg.standby_readiness import why_not_ready
from laterbased.proc import child_environment, finish_uncancellable, run, stop_leftovers
from laterbased.records import identity, wal_archive
from laterbased.records.catalogue import STAMP_FORMAT
from laterbased.schedule.cron import next_fire

logger = logging.getLogger(__name__)

PASSFILE = "pitr-basebackup-passfile"
RETRY_DELAY = 300.0
# Then SIGKILL (stop_unrelated_process).
LEFTOVER_STOP_STEPS: tuple[tuple[signal.Signals, float], ...] = ((signal.SIGTERM, 10.0),)
# How often a wait for the schedule looks whether a base backup is wanted sooner.
WANTED_POLL = 1.0


@dataclass(frozen=True)
class BackupSource:
    """The server pg_basebackup reads: the primary, or the local standby."""

    role: str  # primary | standby
    host: str
    port: int
    sslmode: str


def primary_source(config: Config, server: PrimaryConfig | None = None) -> BackupSource:
    """The primary: the configured one, or ``server`` (after a failover to our own standby,
    the promoted server: archive/primary.archive_server)."""
    primary = server or config.primary
    return BackupSource("primary", primary.host or "localhost", primary.port, primary.sslmode)


def basebackup_argv(
    bindir: Path, config: Config, passfile: Path, target: Path, source: BackupSource | None = None
) -> list[str]:
    source = source or primary_source(config)
    level = config.pitr.compression_level
    conninfo = build_conninfo(
        host=source.host,
        port=source.port,
        user=config.primary.user,
        passfile=str(passfile),
        sslmode=source.sslmode,
        connect_timeout=max(1, int(config.primary.connect_timeout)),
        application_name=f"{APPLICATION_NAME}_basebackup",
    )
    return [
        str(bindir / "pg_basebackup"),
        f"--dbname={conninfo}",
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


def archive_holds_from(root: Path, timeline: int, lsn: str, segment_size: int) -> bool:
    """Whether the archive holds every segment of ``timeline`` from the one of ``lsn`` to its
    newest: recovery from a backup that starts at ``lsn`` finds all it needs. Blocking."""
    numbers = {
        s.number for s in wal_archive.list_segments(root, segment_size) if s.timeline == timeline
    }
    first = wal_archive.segment_of_lsn(lsn, segment_size)
    return bool(numbers) and all(n in numbers for n in range(first, max(numbers) + 1))


async def choose_source(config: Config, facts: PrimaryFacts) -> tuple[BackupSource, str]:
    """The local standby when it can stand in for the primary, else the primary; with the
    reason, for the log."""
    if not config.standby.enabled:
        return primary_source(config), "no local standby (standby.enabled is off)"
    standby = BackupSource("standby", config.standby.connect_host, config.standby.port, "prefer")
    try:
        reason = await _standby_unready(config, facts, standby)
    except (LaterbasedError, OSError, TimeoutError) as exc:
        reason = f"cannot ask it: {exc}"
    except Exception as exc:  # asyncpg's server errors (a permission, a cancelled query)
        reason = f"cannot ask it: {type(exc).__name__}: {exc}"
    if reason is None:
        return standby, "it streams within monitor.max_lag_bytes"
    return primary_source(config), f"not the standby {standby.host}:{standby.port}: {reason}"


async def _standby_unready(
    config: Config, facts: PrimaryFacts, standby: BackupSource
) -> str | None:
    primary = config.primary
    password = primary.password.reveal() if primary.password else None
    timeout = config.monitor.query_timeout
    try:
        standby_conn = await connect(
            host=standby.host,
            port=standby.port,
            user=primary.user,
            password=password,
            database=primary.database,
            timeout=primary.connect_timeout,
            application_name=APPLICATION_NAME,
        )
    except PgUnavailable as exc:
        return f"it does not accept connections ({exc})"
    try:
        primary_conn = await connect_primary(primary, application_name=APPLICATION_NAME)
        try:
            async with asyncio.timeout(4 * timeout):
                identifier = await identity.read_system_identifier(
                    standby_conn,
                    version_num=int(await standby_conn.fetchval(sql.SERVER_VERSION_NUM)),
                    host=standby.host,
                    port=standby.port,
                    user=primary.user,
                    password=password,
                    sslmode=standby.sslmode,
                    timeout=timeout,
                )
                reason = await why_not_ready(
                    standby_conn,
                    primary_conn,
                    standby_identifier=identifier,
                    primary_identifier=facts.system_identifier,
                    max_lag_bytes=config.monitor.max_lag_bytes,
                )
                if reason is not None:
                    return reason
                row = await standby_conn.fetchrow(
                    "SELECT redo_lsn::text AS redo, timeline_id FROM pg_control_checkpoint()"
                )
        finally:
            await asyncio.shield(primary_conn.close())
    finally:
        await asyncio.shield(standby_conn.close())
    redo, timeline = str(row["redo"]), int(row["timeline_id"])
    held = await asyncio.to_thread(
        archive_holds_from, config.backup_directory, timeline, redo, facts.segment_size
    )
    if not held:
        # Its backup would start at that restartpoint: the first base backup after the
        # archive began, or a standby whose primary has not checkpointed since.
        return f"its last restartpoint ({redo}, timeline {timeline}) is older than the archive"
    return None


async def write_backup_passfile(
    config: Config, path: Path, source: BackupSource | None = None
) -> None:
    """A 0600 passfile for pg_basebackup to the primary or the standby (same login: the
    standby is a copy of the primary), and ``source`` (the promoted server after a failover,
    on its failover port): the password never goes in argv."""
    primary = config.primary
    lines = []
    if primary.password and primary.host:
        secret = primary.password.reveal()
        lines.append(passfile_line(primary.host, primary.port, "*", primary.user, secret))
        standby = config.standby
        lines.append(passfile_line(standby.connect_host, standby.port, "*", primary.user, secret))
        if source is not None:
            lines.append(passfile_line(source.host, source.port, "*", primary.user, secret))
    await write_passfile(path, lines, None)


async def take_base_backup(
    config: Config, server: PrimaryConfig | None = None
) -> wal_archive.BaseBackup:
    """One base backup, published in ``@base/<stamp>/``: from the local standby when it
    can stand in for the primary (:func:`choose_source`), else (or when that one fails)
    from the primary. ``server``: the primary the archive follows (after a failover to our
    own standby, the promoted server: there is no other to read then)."""
    server = server or config.primary
    facts = await inspect_primary(config, ensure_slot=False, server=server)
    if server != config.primary:
        source, why = primary_source(config, server), "our standby, promoted: the primary now"
    else:
        source, why = await choose_source(config, facts)
    logger.info("base backup source: the %s (%s)", source.role, why)
    if source.role == "standby":
        try:
            return await _take_base_backup(config, facts, source)
        except (JobFailed, OSError, ValueError, KeyError) as exc:
            logger.warning(
                "base backup from the standby %s:%s failed (%s); taking it from the primary",
                source.host,
                source.port,
                exc,
            )
    return await _take_base_backup(config, facts, primary_source(config, server))


async def _take_base_backup(
    config: Config, facts: PrimaryFacts, source: BackupSource
) -> wal_archive.BaseBackup:
    root = config.backup_directory
    bindir = await asyncio.to_thread(
        find_bindir, facts.major, config.standby.bin_dir, tools=("pg_basebackup",)
    )
    started = datetime.now(UTC)
    stamp = started.strftime(STAMP_FORMAT)
    partial = await asyncio.to_thread(wal_archive.new_base_partial, root, stamp)
    passfile = config.state_dir / PASSFILE
    try:
        await write_backup_passfile(config, passfile, source)
        result = await run(
            basebackup_argv(bindir, config, passfile, partial, source),
            env=child_environment({"PGPASSFILE": str(passfile)}),
            log_name=f"pitr pg_basebackup ({source.role})",
            # Working in the folder it writes: after a SIGKILLed daemon the next one
            # finds it there as provably ours (stop_leftovers) and stops it.
            cwd=partial,
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
            directory=wal_archive.base_dir(root) / wal_archive.base_name(partial),
            started=started,
            finished=finished,
            start_lsn=str(ranges[0]["Start-LSN"]),
            end_lsn=str(ranges[-1]["End-LSN"]),
            timeline=int(ranges[-1]["Timeline"]),
            server_version=facts.server_version,
            server_version_num=facts.version_num,
            system_identifier=facts.system_identifier,
            segment_size=facts.segment_size,
            source=source.role,
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
        "base backup finished source=%s dir=%s start_lsn=%s end_lsn=%s seconds=%.1f",
        backup.source,
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
    # What a SIGKILLed daemon left: its pg_basebackup still reading the whole server (and
    # holding a walsender) into a folder about to be removed, then that folder.
    await stop_leftovers(
        wal_archive.base_dir(root),
        "pg_basebackup",
        os.geteuid(),
        LEFTOVER_STOP_STEPS,
        "pitr",
        target=("-D", "--pgdata"),
    )
    await asyncio.to_thread(wal_archive.remove_base_partials, root)
    due_now = not await asyncio.to_thread(wal_archive.list_base_backups, root)
    while not ctx.stopping.is_set():
        if not due_now:
            config = ctx.config
            fire = next_fire(
                config.pitr.base_backup_schedule, datetime.now(config.zone), config.zone
            )
            while (left := fire.timestamp() - time.time()) > 0 and not st.base_backup_wanted:
                if await ctx.sleep(min(left, WANTED_POLL)):
                    return
        due_now = False
        if st.base_backup_wanted:
            logger.warning("base backup now, before the schedule: %s", st.base_backup_wanted)
            st.base_backup_wanted = None
        # A base backup is restorable only with the WAL from its start on: the archive
        # must be receiving before it begins.
        while st.phase != "streaming":
            if await ctx.sleep(0.5):
                return
        try:
            backup = await take_base_backup(
                ctx.config, archive_server(ctx.config, ctx.state.standby)
            )
        except (JobFailed, OSError, ValueError, KeyError) as exc:
            st.last_base_backup_error = str(exc)
            logger.error("base backup failed: %s", exc)
            ctx.state.record_event("error", f"base backup failed: {exc}")
            due_now = True
            # Retention all the same: on a full backup disk a base backup fails for want of
            # the room only retention gives back.
            await _retention(ctx)
            if await ctx.sleep(RETRY_DELAY):
                return
            continue
        except Exception as exc:  # PgUnavailable and friends: same as a failed run
            st.last_base_backup_error = str(exc)
            logger.error("base backup failed: %s", exc)
            due_now = True
            await _retention(ctx)
            if await ctx.sleep(RETRY_DELAY):
                return
            continue
        st.last_base_backup_error = None
        st.last_base_backup = backup.finished.timestamp()
        st.base_backups += 1
        # Retention after each base backup: a newer one may let older WAL go.
        await _retention(ctx)


async def _retention(ctx: WorkerContext) -> None:
    """Delete what the window no longer needs (wal_archive.prune); with the upload on, what
    has no off-site copy yet stays until it has one."""
    window_start = datetime.now(UTC) - timedelta(seconds=ctx.config.pitr_window)
    try:
        await asyncio.to_thread(
            wal_archive.prune,
            ctx.config.backup_directory,
            window_start,
            keep_not_uploaded=ctx.config.upload.enabled,
        )
    except OSError as exc:
        logger.error("pitr retention failed: %s", exc)
