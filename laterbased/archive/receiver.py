"""pg_receivewal as a supervised child: WAL of the primary into ``<backup_dir>/@wal``.

The primary's major picks the program (pg/binaries.py), the archive's own physical slot
(``pitr.slot_name``, created with ``immediately_reserve``) keeps the primary from recycling
WAL we have not received, the password comes from a 0600 passfile. The child runs with
``--no-loop`` so every lost connection comes back to us: restarted at once after a long run,
with a doubling delay in a loop. On shutdown it gets SIGINT (pg_receivewal flushes and exits),
then SIGKILL; a child an earlier daemon left behind (killed with SIGKILL) is found by its
working directory, the archive, and stopped before ours starts, since the slot admits one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import signal
import time
from collections.abc import Iterable
from pathlib import Path

from laterbased.archive.primary import (
    archive_server,
    inspect_primary,
    primary_conninfo,
    renew_slot,
    write_primary_passfile,
)
from laterbased.config import Config, PrimaryConfig
from laterbased.core.context import WorkerContext
from laterbased.core.state import ArchiveState, SlotState
from laterbased.errors import LaterbasedError, RefuseToRun
from laterbased.pg import sql
from laterbased.pg.binaries import find_bindir
from laterbased.pg.connect import connect_primary
from laterbased.proc import (
    child_environment,
    finish_uncancellable,
    spawn,
    stop_leftovers,
)
from laterbased.records import wal_archive

logger = logging.getLogger(__name__)

RESTART_BASE_DELAY = 1.0
RESTART_MAX_DELAY = 60.0
RESTART_RESET_AFTER = 120.0
STOP_STEPS: tuple[tuple[signal.Signals, float], ...] = ((signal.SIGINT, 10.0),)
REFRESH_INTERVAL = 1.0
PASSFILE = "pitr-passfile"
# What pg_receivewal says when the primary no longer has the WAL after the archive's end
# (its slot was dropped meanwhile): it can never continue from there.
WAL_REMOVED = "has already been removed"
# Where pg_receivewal starts afresh after such a loss (no segment there: it starts where the
# server has WAL); hidden from the archive's listing until its first file is moved in.
RESUME_DIR = ".resume"
RESUME_TIMEOUT = 60.0


def receivewal_argv(
    bindir: Path,
    config: Config,
    passfile: Path,
    directory: Path,
    server: PrimaryConfig | None = None,
) -> list[str]:
    """The pg_receivewal command line (no password: it is in the passfile)."""
    argv = [
        str(bindir / "pg_receivewal"),
        f"--dbname={primary_conninfo(config, passfile, 'receivewal', server)}",
        "--no-password",
        "--directory",
        str(directory),
        "--slot",
        config.pitr.slot_name,
        "--no-loop",
        # Each received piece fsynced and its position reported at once: a commit is in the
        # archive within a second, not at the next segment switch.
        "--synchronous",
        "--status-interval=1",
    ]
    level = config.pitr.compression_level
    if level:
        argv.append(f"--compress={level}")
    return argv


class WalReceiver:
    def __init__(self, ctx: WorkerContext) -> None:
        self.ctx = ctx
        self.state: ArchiveState = ctx.state.archive

    @property
    def config(self) -> Config:
        return self.ctx.config

    async def run(self) -> None:
        st = self.state
        st.enabled = True
        st.phase = "starting"
        delay = 0.0
        try:
            while not self.ctx.stopping.is_set():
                started = time.monotonic()
                try:
                    description = await self._run_once()
                except RefuseToRun:
                    st.phase = "failed"
                    raise
                except (LaterbasedError, OSError) as exc:
                    description = f"could not start: {exc}"
                except Exception as exc:  # asyncpg's errors (no REPLICATION right, …)
                    description = f"could not start: {type(exc).__name__}: {exc}"
                if self.ctx.stopping.is_set():
                    break
                if time.monotonic() - started > RESTART_RESET_AFTER:
                    delay = 0.0
                    st.failed_starts = 0
                else:
                    # Started, then gone within seconds (the backup disk full, the slot
                    # held elsewhere): as much a failed start as one that never ran, so
                    # health turns critical after a few instead of 'restarting' for ever.
                    st.failed_starts += 1
                st.restarts += 1
                st.last_exit = description
                st.phase = "restarting"
                st.message = f"pg_receivewal {description}; restarting in {delay:.0f}s"
                logger.warning(
                    "archive: pg_receivewal %s; restarting in %.0fs", description, delay
                )
                self.ctx.state.record_event("warning", f"WAL archive: pg_receivewal {description}")
                if await self.ctx.sleep(delay):
                    break
                delay = min(max(delay * 2, RESTART_BASE_DELAY), RESTART_MAX_DELAY)
        finally:
            st.pid = None
            if st.phase != "failed":
                st.phase = "stopped"

    async def _run_once(self) -> str:
        config = self.config
        root = config.backup_directory
        directory = wal_archive.wal_dir(root)
        await asyncio.to_thread(directory.mkdir, 0o700, True, True)
        # After a failover to our own standby, the promoted server (its new timeline's
        # history comes with the stream: pg_receivewal carries on from the archive's end).
        server = archive_server(config, self.ctx.state.standby)
        facts = await inspect_primary(config, ensure_slot=True, server=server)
        if facts.slot_created and bool(await asyncio.to_thread(wal_archive.list_segments, root)):
            message = (
                f"the archive's slot {config.pitr.slot_name} was missing on "
                f"{server.host}:{server.port} (dropped?) and is created again: WAL the server "
                "removed meanwhile is a gap in the archive"
            )
            logger.warning("archive: %s", message)
            self.ctx.state.record_event("warning", f"WAL archive: {message}")
        bindir = await asyncio.to_thread(
            find_bindir, facts.major, config.standby.bin_dir, tools=("pg_receivewal",)
        )
        await self._stop_leftovers(directory)
        passfile = config.state_dir / PASSFILE
        await write_primary_passfile(config, passfile, server)
        argv = receivewal_argv(bindir, config, passfile, directory, server)
        child = await spawn(
            argv,
            env=child_environment({"PGPASSFILE": str(passfile)}),
            cwd=directory,
            log_name="pg_receivewal",
        )
        st = self.state
        st.pid = child.pid
        st.started_at = time.time()
        st.phase = "streaming"
        st.message = None
        try:
            exit_task = asyncio.ensure_future(child.wait())
            try:
                while not exit_task.done():
                    await self._refresh()
                    if self.ctx.stopping.is_set():
                        return "stopped with the daemon"
                    moved = archive_server(self.config, self.ctx.state.standby)
                    if moved != server:
                        logger.warning(
                            "archive: the primary is now %s:%s (failover); following it",
                            moved.host,
                            moved.port,
                        )
                        return f"left {server.host}:{server.port}: the primary moved (failover)"
                    await asyncio.wait({exit_task}, timeout=REFRESH_INTERVAL)
            finally:
                if not exit_task.done():
                    exit_task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await exit_task
            returncode = exit_task.result()
            await self._refresh()
            if any(WAL_REMOVED in line for line in child.tail):
                return await self._resume_after_lost_wal(bindir, passfile, directory, server)
            if returncode < 0:
                return f"killed by signal {-returncode}"
            # Its own words say why (the backup disk full, the slot held by another
            # process): in the health reason and the warning, not only in INFO lines.
            said = _last_error(child.tail)
            return f"exited with status {returncode}" + (f": {said}" if said else "")
        finally:
            await finish_uncancellable(asyncio.ensure_future(child.stop(STOP_STEPS)))
            st.pid = None

    async def _resume_after_lost_wal(
        self, bindir: Path, passfile: Path, directory: Path, server: PrimaryConfig
    ) -> str:
        """The server no longer has the WAL that follows the archive's end, so pg_receivewal
        (which always starts from the archive's newest segment) can never go on. Start it
        once in an empty folder, where it begins at the oldest WAL the server still keeps
        (the slot's, or the server's current position on 13), stop it once its first file
        is there and move that into the archive: the next start goes on from it. What lies
        between is a gap, reported as such (health, /status.json ranges, restore)."""
        await renew_slot(self.config, server)
        resume = directory / RESUME_DIR
        await asyncio.to_thread(shutil.rmtree, resume, True)
        await asyncio.to_thread(resume.mkdir, 0o700)
        last = await asyncio.to_thread(wal_archive.list_segments, self.config.backup_directory)
        child = await spawn(
            receivewal_argv(bindir, self.config, passfile, resume, server),
            env=child_environment({"PGPASSFILE": str(passfile)}),
            cwd=resume,
            log_name="pg_receivewal (resume after lost WAL)",
        )
        deadline = time.monotonic() + RESUME_TIMEOUT
        try:
            while child.returncode is None and time.monotonic() < deadline:
                if await asyncio.to_thread(_received_files, resume):
                    break
                if await self.ctx.sleep(REFRESH_INTERVAL / 5):
                    break
        finally:
            await finish_uncancellable(asyncio.ensure_future(child.stop(STOP_STEPS)))
        moved = await asyncio.to_thread(_move_received, resume, directory)
        if not moved:
            return "could not go on: the server no longer has the WAL after the archive's end"
        before = last[-1].name if last else "nothing"
        message = (
            f"the server no longer has the WAL after the archive's end ({before}): archiving "
            f"goes on from {moved[0]}; the WAL between is lost, a gap in the undo window "
            "(moments after it are restorable from the next base backup on)"
        )
        logger.error("archive: %s", message)
        self.ctx.state.record_event("error", f"WAL archive: {message}")
        # The window starts again only at a base backup after the gap: take one now.
        self.state.base_backup_wanted = f"a gap in the archive before {moved[0]}"
        await self._refresh()
        return f"resumed after a gap: {message}"

    async def _refresh(self) -> None:
        """Read the window off the disk into state (a thread: it lists the archive)."""
        await refresh_coverage(self.ctx, self.config.backup_directory)

    async def _stop_leftovers(self, directory: Path) -> None:
        """Stop a pg_receivewal an earlier daemon left running on this archive (ours by
        program, user, working directory and target directory); anything else there is
        left alone."""
        await stop_leftovers(
            directory,
            "pg_receivewal",
            os.geteuid(),
            STOP_STEPS,
            "archive",
            target=("-D", "--directory"),
        )


def _last_error(lines: Iterable[str]) -> str | None:
    """pg_receivewal's first ``error:`` line of its last run (its later ones, such as
    ``disconnected``, follow from it), without the program's name."""
    errors = [line for line in lines if "error:" in line]
    if not errors:
        return None
    return errors[0].split("error:", 1)[1].strip() or None


def _received_files(folder: Path) -> list[Path]:
    """Segment files with something in them (pg_receivewal creates one as data arrives)."""
    found = []
    for entry in folder.iterdir():
        with contextlib.suppress(OSError):
            if wal_archive.parse_segment(entry) is not None and entry.stat().st_size > 0:
                found.append(entry)
    return sorted(found)


def _move_received(resume: Path, directory: Path) -> list[str]:
    """Move what the resuming pg_receivewal wrote into the archive; remove its folder."""
    moved = []
    for entry in _received_files(resume):
        os.rename(entry, directory / entry.name)
        moved.append(entry.name)
    shutil.rmtree(resume, ignore_errors=True)
    return moved


async def refresh_coverage(ctx: WorkerContext, root: Path) -> None:
    window = await asyncio.to_thread(wal_archive.coverage, root)
    backups = await asyncio.to_thread(wal_archive.list_base_backups, root)
    st = ctx.state.archive
    st.earliest = window.earliest.timestamp() if window.earliest else None
    st.latest = window.latest.timestamp() if window.latest else None
    st.gaps = window.gaps
    st.ranges = tuple((r.earliest.timestamp(), r.latest.timestamp()) for r in window.ranges)
    st.gap_since = window.gap_since.timestamp() if window.gap_since else None
    st.last_segment = window.last_segment
    if window.last_segment is not None:
        with contextlib.suppress(OSError):
            path = wal_archive.wal_dir(root) / window.last_segment
            st.last_receive = (await asyncio.to_thread(path.stat)).st_mtime
    st.base_backups = len(backups)
    if backups:
        st.last_base_backup = backups[-1].finished.timestamp()
    if ctx.config.upload.enabled:
        st.pending_upload, st.oldest_pending_upload = await asyncio.to_thread(
            wal_archive.pending_upload, root
        )


async def watch_slot(ctx: WorkerContext) -> None:
    """Poll the archive's slot on the primary every ``monitor.interval``: how much WAL it
    keeps there and its ``wal_status``. A primary that cannot be asked keeps the last facts."""
    while not ctx.stopping.is_set():
        config = ctx.config
        asked_at = time.time()  # before the query: the marker never claims more than seen
        try:
            conn = await connect_primary(
                archive_server(config, ctx.state.standby),
                application_name="laterbased_archive_slot",
            )
            try:
                async with asyncio.timeout(config.monitor.query_timeout):
                    version_num = int(await conn.fetchval(sql.SERVER_VERSION_NUM))
                    modern = version_num >= 130000
                    query = sql.REPLICATION_SLOT if modern else sql.REPLICATION_SLOT_PRE13
                    row = await conn.fetchrow(query, config.pitr.slot_name)
            finally:
                conn.terminate()
            slot = SlotState(name=config.pitr.slot_name, exists=row is not None)
            if row is not None:
                slot.active = bool(row["active"])
                slot.restart_lsn = None if row["restart_lsn"] is None else str(row["restart_lsn"])
                retained = row["retained_wal_bytes"]
                slot.retained_bytes = None if retained is None else int(retained)
                slot.wal_status = row["wal_status"]
                safe = row["safe_wal_size"]
                slot.safe_wal_size = None if safe is None else int(safe)
            ctx.state.archive.slot = slot
            if slot.active and slot.retained_bytes == 0 and ctx.state.archive.phase == "streaming":
                await asyncio.to_thread(
                    wal_archive.mark_caught_up, config.backup_directory, asked_at
                )
        except (LaterbasedError, OSError, TimeoutError) as exc:
            logger.debug("archive: cannot read slot %s: %s", config.pitr.slot_name, exc)
        except Exception as exc:  # asyncpg's errors: the same, a poll missed
            logger.debug("archive: cannot read slot %s: %s", config.pitr.slot_name, exc)
        if await ctx.sleep(config.monitor.interval):
            return
