"""The restore drill: restore a backup into a throw-away cluster and count its rows.

Never on the Resolve primary and never on our standby: the drill ``initdb``s a temporary
cluster in ``<state_dir>/drill-<random>/`` with the PostgreSQL programs of the backup's
server major (the nearest newer major, with a warning, when that one is not installed), as
the standby's run-as user when we are root. The server listens on a unix socket in that
0700 directory only (``listen_addresses=''``, ``trust`` for local connections: only that
user and root can reach the socket) with ``fsync=off``. The backup is restored with ``pg_restore -j2
--no-owner --no-acl --exit-on-error`` into a UTF8 database created from ``template0``,
every table is counted exactly (``jobs/rowcounts.py``) and the counts are compared with the
ones recorded at dump time in the same snapshot as the dump. Whatever happens, including
cancellation, the server is stopped (fast → immediate → kill) and the directory removed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import signal
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg

from laterbased import proc
from laterbased.backup.rowcounts import compare_counts, count_rows
from laterbased.config import Config
from laterbased.errors import LaterbasedError
from laterbased.pg.binaries import reading_bindir
from laterbased.records.catalogue import BackupRecord

logger = logging.getLogger(__name__)

DRILL_PREFIX = "drill-"
DRILL_TOOLS = ("postgres", "initdb", "pg_restore")
DRILL_USER = "laterbased_drill"
DRILL_DATABASE = "drill"
DRILL_PORT = 5432  # only names the socket file inside our private directory
START_TIMEOUT = 60.0
STOP_STEPS: tuple[tuple[signal.Signals, float], ...] = (
    (signal.SIGINT, 15.0),  # fast shutdown
    (signal.SIGQUIT, 10.0),  # immediate shutdown
    (signal.SIGKILL, 5.0),
)
SERVER_SETTINGS = {
    "listen_addresses": "",
    "fsync": "off",
    "full_page_writes": "off",
    "synchronous_commit": "off",
    "wal_level": "minimal",
    "max_wal_senders": "0",
    "autovacuum": "off",
    "logging_collector": "off",
    "shared_buffers": "32MB",
}


class DrillError(LaterbasedError):
    """The drill could not run here (programs missing, initdb failed): says nothing about
    the backup itself."""


@dataclass
class DrillResult:
    ok: bool
    detail: str
    # False when the drill could not run at all (see DrillError): the backup stays "good".
    backup_at_fault: bool = True
    tables: int = 0
    rows: int = 0
    seconds: float = 0.0
    counts: dict[str, int] = field(default_factory=dict)

    def to_manifest(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "at": time.time(),
            "detail": self.detail,
            "tables": self.tables,
            "rows": self.rows,
            "seconds": round(self.seconds, 3),
        }


def drill_root(config: Config) -> Path:
    return config.state_dir.absolute()


def server_bindir(major: str, configured: Path | None) -> Path:
    """Server programs of ``major``, the backup's server's (Resolve restores with that
    major's pg_restore), else the nearest newer major with a warning (pg_restore reads
    older archives); blocking."""
    path, _found = reading_bindir(
        major, configured, tools=DRILL_TOOLS, config_key="standby.bin_dir"
    )
    return path


def remove_leftovers(root: Path) -> int:
    """Kill what still runs in, and delete, drill directories of an earlier run (a daemon
    killed mid-drill). Only one verify runs at a time, so none of them is in use."""
    removed = 0
    for directory in sorted(root.glob(f"{DRILL_PREFIX}*")):
        if not directory.is_dir() or directory.is_symlink():
            continue
        _kill_inside(directory)
        shutil.rmtree(directory, ignore_errors=True)
        removed += 1
        logger.warning("restore drill: removed the leftover temporary cluster %s", directory)
    return removed


def _kill_inside(directory: Path) -> None:
    # Backends run in their own sessions: after the postmaster is gone, only their working
    # directory ties them to this cluster. Only postgres processes of the directory's owner
    # (the run-as user it was made for) are ours: an operator's shell looking inside stays.
    try:
        owner = directory.stat().st_uid
    except OSError:
        return
    for pid in proc.pids_with_cwd_under(directory):
        facts = proc.process_facts(pid)
        if facts is None:
            continue
        if facts.program not in ("postgres", "postmaster") or any(
            uid != owner for uid in facts.uids
        ):
            logger.warning(
                "restore drill: not killing pid=%s (%s) working in %s: not a postgres of ours",
                pid,
                facts.exe or "?",
                directory,
            )
            continue
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)


def _make_work_dir(root: Path, run_as: proc.RunAs | None) -> Path:
    root.mkdir(parents=True, exist_ok=True, mode=0o700)
    work = Path(tempfile.mkdtemp(prefix=DRILL_PREFIX, dir=root))
    (work / "socket").mkdir(mode=0o700)
    if run_as is not None:
        for path in (work, work / "socket"):
            os.chown(path, run_as.uid, run_as.gid)
        proc.ensure_reachable(work, run_as, fix_up_to=root)
    return work


class TemporaryCluster:
    """initdb + postgres on a private unix socket; :meth:`close` removes every trace."""

    def __init__(self, bindir: Path, root: Path, run_as: proc.RunAs | None, run_id: str) -> None:
        self.bindir = bindir
        self.root = root
        self.run_as = run_as
        self.run_id = run_id
        self.work: Path | None = None
        self.child: proc.Child | None = None

    @property
    def data_dir(self) -> Path:
        assert self.work is not None  # noqa: S101 - only after start()
        return self.work / "data"

    @property
    def socket_dir(self) -> Path:
        assert self.work is not None  # noqa: S101 - only after start()
        return self.work / "socket"

    def environment(self) -> dict[str, str]:
        return proc.child_environment({"LC_ALL": "C", "LC_MESSAGES": "C", "TZ": "UTC"})

    async def start(self) -> None:
        self.work = await asyncio.to_thread(_make_work_dir, self.root, self.run_as)
        initdb = await proc.run(
            [
                str(self.bindir / "initdb"),
                "-D",
                str(self.data_dir),
                "-U",
                DRILL_USER,
                "--auth-local=trust",
                "--auth-host=reject",
                "--encoding=UTF8",
                "--no-locale",
                "--no-sync",
            ],
            env=self.environment(),
            run_as=self.run_as,
            cwd=self.work,
            log_name=f"drill initdb run={self.run_id}",
            timeout=START_TIMEOUT * 2,
            stderr_level=logging.DEBUG,
        )
        if initdb.returncode != 0:
            tail = " | ".join(initdb.stderr_tail[-3:]) or "no message"
            raise DrillError(f"initdb of the drill cluster failed: {tail}")
        argv = [str(self.bindir / "postgres"), "-D", str(self.data_dir)]
        settings = SERVER_SETTINGS | {
            "port": str(DRILL_PORT),
            "unix_socket_directories": str(self.socket_dir),
        }
        for name, value in settings.items():
            argv += ["-c", f"{name}={value}"]
        self.child = await proc.spawn(
            argv,
            env=self.environment(),
            run_as=self.run_as,
            cwd=self.work,
            log_name=f"drill postgres run={self.run_id}",
        )
        await self._wait_ready()

    async def _wait_ready(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        last_error = "no answer"
        while time.monotonic() < deadline:
            if self.child is not None and self.child.returncode is not None:
                raise DrillError(
                    f"the drill server exited with status {self.child.returncode} during "
                    "start (see the log lines 'drill postgres')"
                )
            try:
                conn = await self.connect("postgres")
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                last_error = str(exc)
                await asyncio.sleep(0.1)
                continue
            await conn.close()
            return
        raise DrillError(
            f"the drill server did not accept connections in {START_TIMEOUT:.0f}s: {last_error}"
        )

    async def connect(self, database: str) -> Any:
        return await asyncpg.connect(
            host=str(self.socket_dir),
            port=DRILL_PORT,
            user=DRILL_USER,
            database=database,
            timeout=10,
            server_settings={"application_name": "laterbased-drill"},
        )

    async def close(self) -> None:
        """Stop the server and delete the directory; runs to the end even when cancelled."""
        cleanup = asyncio.ensure_future(self._close())
        cancelled = False
        while not cleanup.done():
            try:
                await asyncio.shield(cleanup)
            except asyncio.CancelledError:
                cancelled = cancelled or not cleanup.done()
        if cleanup.exception() is not None:
            logger.error(
                "restore drill: cleanup failed run=%s: %s", self.run_id, cleanup.exception()
            )
        if cancelled:
            raise asyncio.CancelledError

    async def _close(self) -> None:
        if self.child is not None:
            await self.child.stop(STOP_STEPS)
        if self.work is not None:
            work = self.work
            await asyncio.to_thread(_kill_inside, work)
            await asyncio.to_thread(shutil.rmtree, work, True)
            logger.info(
                "restore drill: removed the temporary cluster run=%s dir=%s", self.run_id, work
            )


async def restore_drill(
    config: Config, record: BackupRecord, major: str, run_id: str
) -> DrillResult:
    """Restore ``record`` (custom format) into a temporary cluster; compare row counts."""
    started = time.monotonic()

    def result(ok: bool, detail: str, **extra: Any) -> DrillResult:
        return DrillResult(ok, detail, seconds=time.monotonic() - started, **extra)

    if record.format != "custom":
        return result(
            True,
            f"restore drill skipped: format {record.format} (custom only)",
            backup_at_fault=False,
        )
    root = drill_root(config)
    try:
        run_as = proc.resolve_run_as(config.standby.run_as)
        bindir = await asyncio.to_thread(server_bindir, major, config.standby.bin_dir)
        await asyncio.to_thread(remove_leftovers, root)
    except (LaterbasedError, OSError) as exc:
        return result(False, f"restore drill could not run: {exc}", backup_at_fault=False)
    cluster = TemporaryCluster(bindir, root, run_as, run_id)
    try:
        try:
            await cluster.start()
            conn = await cluster.connect("postgres")
            try:
                await conn.execute(
                    f"CREATE DATABASE {DRILL_DATABASE} TEMPLATE template0 ENCODING 'UTF8'"
                )
            finally:
                await conn.close()
        except (LaterbasedError, OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            return result(False, f"restore drill could not run: {exc}", backup_at_fault=False)
        restored = await proc.run(
            [
                str(bindir / "pg_restore"),
                "--jobs=2",
                "--no-owner",
                "--no-acl",
                "--exit-on-error",
                "--no-password",
                f"--host={cluster.socket_dir}",
                f"--port={DRILL_PORT}",
                f"--username={DRILL_USER}",
                f"--dbname={DRILL_DATABASE}",
                str(record.path),
            ],
            env=cluster.environment(),
            log_name=f"drill pg_restore run={run_id}",
            timeout=config.backup.timeout,
            stderr_level=logging.WARNING,
        )
        if restored.returncode != 0:
            tail = " | ".join(restored.stderr_tail[-3:]) or "no message"
            return result(False, f"pg_restore failed (status {restored.returncode}): {tail}")
        try:
            conn = await cluster.connect(DRILL_DATABASE)
            try:
                counts = await count_rows(conn)
            finally:
                await conn.close()
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            return result(False, f"counting the restored rows failed: {exc}", backup_at_fault=False)
    except TimeoutError:
        return result(
            False,
            f"restore did not finish within backup.timeout={config.backup.timeout:.0f}s",
            backup_at_fault=False,
        )
    finally:
        await cluster.close()
    tables, rows = len(counts) - 1, sum(counts.values())
    if record.row_counts is None:
        return result(
            True,
            f"restored {tables} tables, {rows} rows; no source row counts in the manifest "
            "(dumped without backup.restore_drill), so none compared",
            tables=tables,
            rows=rows,
            counts=counts,
        )
    problems = compare_counts(record.row_counts, counts)
    if problems:
        shown = "; ".join(problems[:5]) + (
            f"; and {len(problems) - 5} more" if len(problems) > 5 else ""
        )
        return result(
            False,
            f"row counts differ from the source: {shown}",
            tables=tables,
            rows=rows,
            counts=counts,
        )
    return result(
        True,
        f"restored {tables} tables, {rows} rows, counts match the source",
        tables=tables,
        rows=rows,
        counts=counts,
    )
