"""One database as it was at a moment, from the point-in-time archive, as a pg_dump file.

Newest base backup finished before the moment → extracted into a throw-away cluster in
``<state_dir>/pitr-restore-<random>/`` (the standby's run-as user, a unix socket in that 0700
directory only, ``trust`` for local connections) → recovery with ``restore_command`` reading
the WAL and ``recovery_target_time`` = the moment, ``recovery_target_action = promote``
(``postgresql.auto.conf`` + ``recovery.signal``, PostgreSQL 12 and later) → ``pg_dump -Fc``
of the one database with the server's major → the caller restores that file as any dump.
Whatever happens, including cancellation, the server is stopped and the directory removed.

The WAL the recovery needs is staged, decompressed, in the throw-away directory before the
server starts: the archive is private to laterbased (0600), the server runs as another user,
so ``restore_command`` only copies from the staging folder. The segment being received
(``.partial``) is staged padded to a whole segment, as recovery expects. When no commit
follows the moment in the archive, PostgreSQL (13 and later) refuses to end recovery short
of the target: then everything archived is replayed, which is the same state.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import shutil
import signal
import time
import zlib
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg

from laterbased import proc
from laterbased.config import Config
from laterbased.core.lockfile import HeldLock, LockBusy, take_lock
from laterbased.errors import JobFailed, LaterbasedError
from laterbased.ops.restore.remote_archive import RemoteMiss, fetch_for_moment
from laterbased.pg.binaries import find_bindir, major_from_version_num
from laterbased.records import wal_archive

logger = logging.getLogger(__name__)

WORK_PREFIX = "pitr-restore-"
SOCKET_PORT = 5432  # names the socket file inside our private directory only
START_TIMEOUT = 60.0
STOP_STEPS: tuple[tuple[signal.Signals, float], ...] = (
    (signal.SIGINT, 15.0),
    (signal.SIGQUIT, 10.0),
)
SETTINGS = {
    "listen_addresses": "''",
    "port": str(SOCKET_PORT),
    "fsync": "off",
    "full_page_writes": "off",
    "synchronous_commit": "off",
    "hot_standby": "off",
    "archive_mode": "off",
    "max_wal_senders": "10",
    "autovacuum": "off",
    # Into a file of the throw-away directory: whether recovery stopped short of the target
    # (and nothing else) is read from it.
    "logging_collector": "on",
    "log_filename": "'postgresql.log'",
    "shared_buffers": "32MB",
    "shared_preload_libraries": "''",
}


SHORT_OF_TARGET = "recovery ended before configured recovery target was reached"


class PointInTimeError(LaterbasedError):
    """The archive cannot give this moment back."""


def _lock_path(directory: Path) -> Path:
    # Beside the directory, not in it: the directory belongs to the run-as user, and a
    # hidden name keeps it out of the pitr-restore-* glob.
    return directory.with_name(f".{directory.name}.lock")


def remove_leftovers(root: Path) -> None:
    """Kill what still runs in, and delete, throw-away clusters of an interrupted restore.

    A restore running beside this one (two operators, or a retry while the first still
    recovers) holds its directory's lock: its cluster is left alone, not killed as a
    leftover. The lock is taken before the directory is made, so a directory seen here
    whose lock can be taken has no live restore."""
    for directory in sorted(root.glob(f"{WORK_PREFIX}*")):
        if not directory.is_dir() or directory.is_symlink():
            continue
        try:
            lock = take_lock(_lock_path(directory))
        except LockBusy as exc:
            logger.info(
                "restore: %s belongs to another restore running now (pid %s); left alone",
                directory, exc.holder,
            )
            continue
        except OSError as exc:
            logger.warning("restore: cannot check %s: %s; left alone", directory, exc)
            continue
        with lock:
            remove_work_dir(directory)
            lock.path.unlink(missing_ok=True)
        logger.warning("restore: removed the leftover throw-away cluster %s", directory)


def remove_work_dir(directory: Path) -> None:
    """Kill the postgres processes of its cluster's owner working in it, then delete it."""
    with contextlib.suppress(OSError):
        # The data folder belongs to the run-as user (the directory itself to us, or to
        # that user when an earlier version made it).
        try:
            owner = (directory / "data").lstat().st_uid
        except FileNotFoundError:
            owner = directory.lstat().st_uid
        for pid in proc.pids_with_cwd_under(directory):
            facts = proc.process_facts(pid)
            if facts and facts.program in ("postgres", "postmaster") and all(
                uid == owner for uid in facts.uids
            ):
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)
    shutil.rmtree(directory, ignore_errors=True)


def _make_work_dir(root: Path, run_as: proc.RunAs | None) -> tuple[Path, HeldLock]:
    """A new throw-away directory and the lock that marks it as in use (held until it is
    removed)."""
    root.mkdir(parents=True, exist_ok=True, mode=0o700)
    while True:
        work = root / f"{WORK_PREFIX}{secrets.token_hex(4)}"
        lock = take_lock(_lock_path(work))
        try:
            work.mkdir(mode=0o700)
        except FileExistsError:
            lock.release()  # the name of a leftover (its lock file was gone): another name
            continue
        except BaseException:
            lock.path.unlink(missing_ok=True)
            lock.release()
            raise
        break
    for name in ("data", "socket", "wal", "log"):
        (work / name).mkdir(mode=0o700)
    if run_as is not None:
        # The directory stays ours (the run-as user passes through, cannot swap its
        # folders for links); only the folders postgres writes in are its own.
        os.chmod(work, 0o711)  # noqa: S103 - others may pass through, not list
        for name in ("data", "socket", "wal", "log"):
            os.chown(work / name, run_as.uid, run_as.gid)
        proc.ensure_reachable(work, run_as, fix_up_to=root)
    return work, lock


def _create_owned(path: Path, run_as: proc.RunAs | None) -> int:
    """A new file ``path`` in a folder the run-as user owns, open for writing and owned by
    that user; whatever had the name (a link planted there) is replaced, never followed:
    written or chowned through it, a root file would be handed to that user."""
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        if run_as is not None:
            os.fchown(fd, run_as.uid, run_as.gid)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _write_owned(path: Path, text: str, run_as: proc.RunAs | None) -> None:
    with os.fdopen(_create_owned(path, run_as), "w", encoding="utf-8") as handle:
        handle.write(text)


def _stage_wal(
    archive_root: Path, staging: Path, backup: wal_archive.BaseBackup, run_as: proc.RunAs | None
) -> int:
    """Decompress every segment from the base backup's start on (and the history files)
    into ``staging``; a partial segment is padded to a whole one. Returns how many."""
    size = backup.segment_size
    first = wal_archive.segment_of_lsn(backup.start_lsn, size)
    staged: dict[str, bool] = {}
    for segment in wal_archive.list_segments(archive_root, size):
        if segment.number < first or segment.timeline < backup.timeline:
            continue
        if segment.name in staged and not staged[segment.name]:
            continue  # the complete file is there already; its partial twin adds nothing
        target = staging / segment.name
        _decompress(
            segment.path, target, segment.compressed, run_as, size if segment.partial else None
        )
        staged[segment.name] = segment.partial
    for history in wal_archive.wal_dir(archive_root).glob("*.history*"):
        name = history.name.removesuffix(".gz")
        _decompress(history, staging / name, history.name.endswith(".gz"), run_as)
    return len(staged)


def _decompress(
    source: Path,
    target: Path,
    compressed: bool,
    run_as: proc.RunAs | None,
    pad_to: int | None = None,
) -> None:
    """Copy ``source`` into ``target`` (a new file of ``run_as``), inflated; a file that is
    not whole gzip is named in a :class:`PointInTimeError` (a damaged archive), not a
    traceback."""
    # A partial segment's gzip stream is still being written: decompress what is there.
    with source.open("rb") as reader, os.fdopen(_create_owned(target, run_as), "wb") as writer:
        inflater = zlib.decompressobj(wbits=31) if compressed else None
        written = 0
        while chunk := reader.read(1 << 20):
            try:
                data = inflater.decompress(chunk) if inflater is not None else chunk
            except zlib.error as exc:
                raise PointInTimeError(
                    f"the archive's WAL file {source} is damaged (cannot be decompressed: "
                    f"{exc}); moments that need it cannot be restored from this copy"
                ) from None
            writer.write(data)
            written += len(data)
        if inflater is not None and pad_to is None and not inflater.eof:
            raise PointInTimeError(
                f"the archive's WAL file {source} is damaged (its gzip stream ends early: "
                f"{written} bytes); moments that need it cannot be restored from this copy"
            )
        if pad_to is not None and written < pad_to:
            writer.write(bytes(pad_to - written))


def _write_settings(
    data_dir: Path, work: Path, target: datetime | None, run_as: proc.RunAs | None
) -> None:
    """Our own configuration: the primary's may name files of its machine."""
    settings = dict(SETTINGS)
    settings["unix_socket_directories"] = f"'{work / 'socket'}'"
    settings["log_directory"] = f"'{work / 'log'}'"
    # Asked for files that do not exist too (the next timeline's history): not an error.
    settings["restore_command"] = f"'cp \"{work / 'wal'}/%f\" \"%p\" 2>/dev/null'"
    # After a failover the archive goes on on the new timeline: follow its history file
    # (staged with the WAL) to the newest one (the default since 12, said so on purpose).
    settings["recovery_target_timeline"] = "'latest'"
    if target is not None:
        settings["recovery_target_time"] = f"'{target.astimezone(UTC).isoformat()}'"
        settings["recovery_target_action"] = "'promote'"
        settings["recovery_target_inclusive"] = "on"
    text = "".join(f"{name} = {value}\n" for name, value in settings.items())
    _write_owned(data_dir / "postgresql.conf", text, run_as)
    _write_owned(data_dir / "postgresql.auto.conf", "", run_as)
    _write_owned(data_dir / "pg_hba.conf", "local all all trust\n", run_as)
    _write_owned(data_dir / "pg_ident.conf", "", run_as)
    for name in ("standby.signal", "postmaster.pid", "postmaster.opts"):
        (data_dir / name).unlink(missing_ok=True)
    _write_owned(data_dir / "recovery.signal", "", run_as)


class ThrowAwayCluster:
    def __init__(
        self,
        config: Config,
        backup: wal_archive.BaseBackup,
        run_id: str,
        archive_root: Path | None = None,
    ) -> None:
        self.config = config
        self.backup = backup
        self.run_id = run_id
        # Where the WAL comes from: the local archive, or a copy fetched from the remote.
        self.archive_root = archive_root or config.backup_directory
        self.run_as: proc.RunAs | None = None
        self.work: Path | None = None
        self.lock: HeldLock | None = None
        self.child: proc.Child | None = None
        self.bindir = Path()

    @property
    def data_dir(self) -> Path:
        assert self.work is not None  # noqa: S101 - only after prepare()
        return self.work / "data"

    @property
    def socket_dir(self) -> Path:
        assert self.work is not None  # noqa: S101 - only after prepare()
        return self.work / "socket"

    def environment(self) -> dict[str, str]:
        return proc.child_environment({"LC_ALL": "C", "LC_MESSAGES": "C", "TZ": "UTC"})

    async def prepare(self, target: datetime) -> None:
        config = self.config
        major = major_from_version_num(self.backup.server_version_num)
        self.bindir = await asyncio.to_thread(
            find_bindir, major, config.standby.bin_dir, tools=("postgres", "pg_dump")
        )
        self.run_as = proc.resolve_run_as(config.standby.run_as)
        root = config.state_dir.absolute()
        await asyncio.to_thread(remove_leftovers, root)
        work, self.lock = await asyncio.to_thread(_make_work_dir, root, self.run_as)
        self.work = work
        logger.info(
            "restore: extracting base backup %s into %s", self.backup.directory, self.work
        )
        fd = await asyncio.to_thread(os.open, self.backup.tar, os.O_RDONLY | os.O_CLOEXEC)
        try:
            gz = "-xzf" if self.backup.tar.name.endswith(".gz") else "-xf"
            extracted = await proc.run(
                ["tar", gz, "-", "-C", str(self.data_dir)],
                stdin=fd,
                env=self.environment(),
                run_as=self.run_as,
                cwd=self.work,
                log_name=f"restore tar run={self.run_id}",
                stderr_level=logging.WARNING,
            )
        finally:
            os.close(fd)
        if extracted.returncode != 0:
            tail = " | ".join(extracted.stderr_tail[-2:]) or f"exit status {extracted.returncode}"
            raise JobFailed(f"extracting {self.backup.tar} failed (damaged?): {tail}")
        staged = await asyncio.to_thread(
            _stage_wal, self.archive_root, work / "wal", self.backup, self.run_as
        )
        logger.info("restore: %s WAL segment(s) staged for recovery run=%s", staged, self.run_id)
        await asyncio.to_thread(self._configure, target)

    def _configure(self, target: datetime | None) -> None:
        assert self.work is not None  # noqa: S101 - only after prepare()
        _write_settings(self.data_dir, self.work, target, self.run_as)

    async def recover(self, target: datetime) -> str:
        """Start the server and wait until it is promoted at ``target``; what it did."""
        if await self._start_and_wait():
            return f"recovered to {target.astimezone(UTC).isoformat()}"
        server_log = await asyncio.to_thread(self._server_log)
        if SHORT_OF_TARGET not in server_log:
            lines = [line for line in server_log.splitlines() if "FATAL" in line or "PANIC" in line]
            raise PointInTimeError(
                "the throw-away cluster stopped during recovery: "
                + (" | ".join(lines[-3:]) or "no message")
            )
        # No commit after the moment was archived yet (13+ refuse to end short of the
        # target), and nothing else went wrong: everything archived is the state at the
        # moment.
        logger.info(
            "restore: no transaction after %s in the archive; replaying all of it run=%s",
            target.isoformat(),
            self.run_id,
        )
        await asyncio.to_thread(self._configure, None)
        if await self._start_and_wait():
            return "recovered to the end of the archive (nothing was committed after the moment)"
        raise PointInTimeError(
            "the throw-away cluster stopped during recovery (see the 'restore postgres' log "
            "lines)"
        )

    def _server_log(self) -> str:
        assert self.work is not None  # noqa: S101 - only after prepare()
        try:
            return (self.work / "log" / "postgresql.log").read_text("utf-8", "replace")
        except OSError:
            return ""

    async def _start_and_wait(self) -> bool:
        if self.child is not None:
            await self.child.stop(STOP_STEPS)
        self.child = await proc.spawn(
            [str(self.bindir / "postgres"), "-D", str(self.data_dir)],
            env=self.environment(),
            run_as=self.run_as,
            cwd=self.work,
            log_name=f"restore postgres run={self.run_id}",
        )
        deadline = time.monotonic() + max(START_TIMEOUT, self.config.backup.timeout)
        while time.monotonic() < deadline:
            if self.child.returncode is not None:
                await self.child.stop(STOP_STEPS)
                return False
            with contextlib.suppress(OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
                conn = await self.connect("postgres")
                try:
                    if not await conn.fetchval("SELECT pg_is_in_recovery()"):
                        return True
                finally:
                    await conn.close()
            await asyncio.sleep(0.2)
        raise PointInTimeError("recovery did not finish within backup.timeout")

    async def connect(self, database: str) -> Any:
        return await asyncpg.connect(
            host=str(self.socket_dir),
            port=SOCKET_PORT,
            user=self.config.primary.user,
            database=database,
            timeout=10,
            server_settings={"application_name": "laterbased-restore"},
        )

    async def dump(self, database: str, target: Path) -> None:
        result = await proc.run(
            [
                str(self.bindir / "pg_dump"),
                "-Fc",
                "--no-password",
                f"--host={self.socket_dir}",
                f"--port={SOCKET_PORT}",
                f"--username={self.config.primary.user}",
                f"--file={target}",
                f"--dbname={database}",
            ],
            env=self.environment(),
            log_name=f"restore pg_dump run={self.run_id}",
            timeout=self.config.backup.timeout,
            stderr_level=logging.WARNING,
        )
        if result.returncode != 0:
            tail = " | ".join(result.stderr_tail[-3:]) or "no message"
            raise JobFailed(f"pg_dump of {database!r} at the moment failed: {tail}")

    async def close(self) -> None:
        await proc.finish_uncancellable(asyncio.ensure_future(self._close()))

    async def _close(self) -> None:
        if self.child is not None:
            await self.child.stop(STOP_STEPS)
        if self.work is not None:
            work = self.work
            await asyncio.to_thread(remove_work_dir, work)
            logger.info("restore: removed the throw-away cluster %s run=%s", work, self.run_id)
        if self.lock is not None:
            lock, self.lock = self.lock, None
            await asyncio.to_thread(lock.path.unlink, True)
            lock.release()


def window_text(config: Config) -> str:
    window = wal_archive.coverage(config.backup_directory)
    if not window.ranges:
        return "the point-in-time archive has no restorable window yet"
    missing = "".join(
        f"; WAL segments {first} to {last} are missing" for first, last in window.gaps
    )
    return f"the point-in-time archive covers {window.describe_ranges()}{missing}"


def out_of_reach_text(config: Config, moment: datetime) -> str | None:
    """Why the archive cannot give ``moment`` back although its window began before it
    (a gap, or WAL not received that far), with the exact ranges it can; None when it
    covers ``moment`` or ``moment`` is older than the whole window (or there is none)."""
    return wal_archive.coverage(config.backup_directory).why_out_of_reach(moment)


async def dump_at(
    config: Config,
    database: str,
    moment: datetime,
    target: Path,
    run_id: str,
    missed: list[str] | None = None,
    refused: list[str] | None = None,
) -> str | None:
    """Write ``database`` as it was at ``moment`` into ``target`` (pg_dump -Fc) when the
    archive covers it; None (nothing written) when it does not. Returns what was done.
    When the local archive does not cover it and the upload is on, the archive's copy on the
    rclone remote is asked (ops/restore/remote_archive.py), fetched next to ``target``;
    why it could not give the moment either is appended to ``missed``, and to ``refused``
    when the moment lies inside the remote's window yet out of its reach (a gap there,
    or past its last WAL uploaded): refused like the local archive's."""
    root = config.backup_directory
    backup = await asyncio.to_thread(wal_archive.base_backup_for, root, moment)
    fetched_from: str | None = None
    fetched = target.parent / "remote-archive"
    if backup is None and config.upload.enabled:
        remote = await fetch_for_moment(config, moment, fetched)
        if isinstance(remote, RemoteMiss):
            logger.info("restore: the archive off-site does not give it either: %s", remote.reason)
            if missed is not None:
                missed.append(remote.reason)
            if refused is not None and remote.refused is not None:
                refused.append(remote.refused)
        else:
            backup, root, fetched_from = remote.backup, remote.root, remote.source
    if backup is None:
        await asyncio.to_thread(shutil.rmtree, fetched, True)
        return None
    logger.info(
        "restore: point in time %s from base backup %s", moment.isoformat(), backup.directory
    )
    cluster = ThrowAwayCluster(config, backup, run_id, root)
    try:
        await cluster.prepare(moment)
        how = await cluster.recover(moment)
        conn = await cluster.connect("postgres")
        try:
            exists = await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", database)
        finally:
            await conn.close()
        if not exists:
            raise PointInTimeError(
                f"database {database!r} did not exist at {moment.isoformat()}"
            )
        await cluster.dump(database, target)
    finally:
        await cluster.close()
        if fetched_from is not None:
            await proc.finish_uncancellable(
                asyncio.ensure_future(asyncio.to_thread(shutil.rmtree, fetched, True))
            )
    where = (
        f"WAL archive fetched from {fetched_from} (the local archive does not cover the moment)"
        if fetched_from is not None
        else "WAL archive"
    )
    return f"base backup {backup.directory.name} + {where}, {how}"
