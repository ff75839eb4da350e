"""The dump job: pg_dump every (Resolve) database into the catalogue, atomically.

pg_dump writes straight into a file descriptor of a ``.partial/`` file (no Python in the data
path, so memory stays flat whatever the size); stderr goes to the log. The password reaches
pg_dump through a 0600 passfile named by ``PGPASSFILE``, never argv. The sha256 is computed
after pg_dump exits, in a thread, from the page cache (see bench/dump.py for its cost).

Skip-unchanged: before dumping, we read a *fingerprint* from the primary and dump only when
it differs from the one recorded in the newest good backup's manifest. Its exact part is the
cluster's transaction-ID horizon (``txid_current_snapshot()``): every committed write - rows,
DDL, large objects, unlogged tables - takes a transaction ID, the counter lives in shared
memory, so it is never late, on any major. A fingerprint is recorded only when no write was in
progress at that moment (the snapshot's xmin equals its xmax): a transaction that had written
but commits after the dump's snapshot would otherwise leave the horizon unchanged and be
skipped. The horizon is cluster-wide, so a write to any database of the server dumps every
database at the next run (an idle library overnight costs one more dump after the last work).
Its other part is ``pg_stat_database``'s write counters, ``stats_reset`` and the postmaster
start time: on PostgreSQL 13 they arrive late (a collector process, up to ~0.5 s after the
writer goes idle, and by UDP, which may drop them) and on 15 within about a second, so they
never decide alone; they only add reasons to dump. On a standby source the fingerprint is kept
only if the standby had replayed every transaction below the horizon when the dump started.
With ``track_counts = off`` nothing is ever skipped. A background ANALYZE takes a transaction
ID too (one extra dump).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import secrets
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from laterbased import proc
from laterbased.backup.rowcounts import count_rows
from laterbased.config import Config
from laterbased.errors import JobFailed, LaterbasedError, UnsafePath
from laterbased.pg import sql
from laterbased.pg.binaries import (
    dump_bindir,
    major_from_version_num,
    major_from_version_string,
    major_key,
    newer_pg_dump_fix,
    tool_version,
)
from laterbased.pg.connect import PgUnavailable, connect
from laterbased.pg.conninfo import build_conninfo
from laterbased.pg.passfile import passfile_line, write_passfile
from laterbased.pg.standby_readiness import why_not_ready
from laterbased.records import identity
from laterbased.records.catalogue import GLOBALS_KEY, GLOBALS_NAME, BackupRecord, Catalogue
from laterbased.units import format_size

logger = logging.getLogger(__name__)

# One statement, so both snapshot calls read the same snapshot. txid_* exist from 8.3 to 17.
FINGERPRINT_QUERY = """
SELECT current_setting('track_counts') AS track_counts,
       txid_snapshot_xmax(txid_current_snapshot())::text AS xid_horizon,
       txid_snapshot_xmin(txid_current_snapshot())
           = txid_snapshot_xmax(txid_current_snapshot()) AS quiescent,
       pg_postmaster_start_time()::text AS started,
       d.stats_reset::text AS stats_reset,
       d.tup_inserted, d.tup_updated, d.tup_deleted
FROM pg_stat_database d WHERE d.datname = current_database()
"""
# On a standby: has it replayed (completed) every transaction below the horizon $1?
STANDBY_REPLAYED_HORIZON = (
    "SELECT txid_snapshot_xmin(txid_current_snapshot()) >= $1::text::bigint"
)
SERVER_VERSION = "SELECT current_setting('server_version')"
CONFLICT_WITH_RECOVERY = "conflict with recovery"
# On a standby, pg_dump gives up on a table lock after this long (--lock-wait-timeout): with
# replay paused, a lock the startup process replayed from the primary just before the pause
# is never released, and pg_dump would wait for it until backup.timeout.
STANDBY_LOCK_WAIT = 60.0
STANDBY_ATTEMPTS = 3
STANDBY_RETRY_DELAY = 10.0
HASH_CHUNK = 1 << 20


@dataclass(frozen=True)
class Server:
    """Where to connect for dumping: the primary, or the local standby."""

    role: str  # primary | standby | promoted (our own standby, a primary since a failover)
    host: str
    port: int
    user: str
    password: str | None
    maintenance_db: str
    connect_timeout: float
    # primary.sslmode for the primary; the local standby is reached over loopback (prefer).
    sslmode: str = "prefer"

    async def connect(self, database: str | None = None) -> Any:
        return await connect(
            host=self.host,
            port=self.port,
            user=self.user,
            password=self.password,
            database=database or self.maintenance_db,
            timeout=self.connect_timeout,
            application_name="laterbased-backup",
            sslmode=self.sslmode,
        )

    def conninfo(self, database: str) -> str:
        # A conninfo as --dbname: a database name containing '=' would otherwise be parsed
        # as a connection string by pg_dump.
        return build_conninfo(
            dbname=database,
            host=self.host,
            port=self.port,
            user=self.user,
            application_name="laterbased-dump",
            connect_timeout=max(1, int(self.connect_timeout)),
            sslmode=self.sslmode,
        )


def primary_server(config: Config) -> Server:
    primary = config.primary
    if primary.host is None:
        raise JobFailed("primary.host is not set; nothing to dump")
    return Server(
        role="primary",
        host=primary.host,
        port=primary.port,
        user=primary.user,
        password=primary.password.reveal() if primary.password else None,
        maintenance_db=primary.database,
        connect_timeout=primary.connect_timeout,
        sslmode=primary.sslmode,
    )


def source_server(config: Config) -> Server:
    """The server pg_dump reads from (``backup.source``); with ``auto`` the standby, which
    :func:`standby_if_ready` confirms or trades for the primary at the start of each run."""
    primary = primary_server(config)
    source = config.backup.source
    if source == "primary" or (source == "auto" and not config.standby.enabled):
        return primary
    return Server(
        role="standby",
        host=config.standby.connect_host,
        port=config.standby.port,
        user=primary.user,
        password=primary.password,
        maintenance_db=primary.maintenance_db,
        connect_timeout=primary.connect_timeout,
    )


def promoted_server(config: Config, port: int) -> Server:
    """Our own standby once promoted: the primary of the new world after a failover.

    Reached where laterbased itself reaches it (loopback, the port it runs on now), with
    the primary's login: the promoted server holds the primary's roles and passwords.
    """
    primary = primary_server(config)
    return Server(
        role="promoted",
        host=config.standby.connect_host,
        port=port,
        user=primary.user,
        password=primary.password,
        maintenance_db=primary.maintenance_db,
        connect_timeout=primary.connect_timeout,
    )


STANDBY_WAIT_POLL = 1.0
# backup.source auto: how long a run waits for the standby to replay what the primary had
# written when the run began (it is within monitor.max_lag_bytes: seconds at most).
STANDBY_CATCH_UP = 30.0


async def standby_if_ready(config: Config, standby: Server, run_id: str) -> Server:
    """``backup.source: auto``: ``standby`` when it is the primary's cluster, streaming,
    replaying, within ``monitor.max_lag_bytes`` and caught up with what the primary had
    flushed (so the dump holds every commit made before the run, as one from the primary
    would); else the primary, with the reason in the log. It does not wait for a standby
    that is down: the Resolve server carries this one run instead."""
    primary = primary_server(config)
    try:
        reason = await _standby_unready(config, standby, primary)
    except PgUnavailable as exc:
        reason = f"cannot compare it with the primary: {exc}"
    except (OSError, TimeoutError) as exc:
        reason = f"cannot ask it: {exc}"
    except Exception as exc:  # asyncpg's server errors (a permission, a cancelled query)
        reason = f"cannot ask it: {type(exc).__name__}: {exc}"
    if reason is None:
        logger.info(
            "dump source: the standby %s:%s (backup.source auto: streaming and caught up "
            "with the primary) run=%s",
            standby.host,
            standby.port,
            run_id,
        )
        return standby
    logger.warning(
        "dump source: the primary, not the standby %s:%s: %s (backup.source auto) run=%s",
        standby.host,
        standby.port,
        reason,
        run_id,
    )
    return primary


async def _standby_unready(config: Config, standby: Server, primary: Server) -> str | None:
    timeout = config.monitor.query_timeout
    try:
        standby_conn = await standby.connect()
    except PgUnavailable as exc:
        return f"it does not accept connections ({exc})"
    try:
        primary_conn = await primary.connect()
        try:
            identifiers = []
            for server, conn in ((standby, standby_conn), (primary, primary_conn)):
                async with asyncio.timeout(4 * timeout):
                    identifiers.append(
                        await identity.read_system_identifier(
                            conn,
                            version_num=int(await conn.fetchval(sql.SERVER_VERSION_NUM)),
                            host=server.host,
                            port=server.port,
                            user=server.user,
                            password=server.password,
                            sslmode=server.sslmode,
                            timeout=timeout,
                        )
                    )
            async with asyncio.timeout(4 * timeout + STANDBY_CATCH_UP):
                return await why_not_ready(
                    standby_conn,
                    primary_conn,
                    standby_identifier=identifiers[0],
                    primary_identifier=identifiers[1],
                    max_lag_bytes=config.monitor.max_lag_bytes,
                    catch_up=STANDBY_CATCH_UP,
                )
        finally:
            await asyncio.shield(primary_conn.close())
    finally:
        await asyncio.shield(standby_conn.close())


async def standby_or_primary(config: Config, server: Server, run_id: str) -> Server:
    """``server`` when it is the primary or a standby that accepts connections; else, after
    waiting up to ``backup.standby_wait`` for the standby (it starts with the daemon, and
    the catch-up run fires at once), the primary, with a warning saying so.

    A refused login or TLS setting is not waited for: time does not fix it.
    """
    if server.role not in {"standby", "promoted"}:
        return server
    started = time.monotonic()
    deadline = started + config.backup.standby_wait
    announced = False
    while True:
        try:
            conn = await server.connect()
        except PgUnavailable as exc:
            reason = str(exc)
            if exc.reason in {"auth", "ssl"} or time.monotonic() >= deadline:
                break
            if not announced:
                logger.info(
                    "dump source: waiting up to %.0fs for the %s %s:%s to accept "
                    "connections run=%s: %s",
                    config.backup.standby_wait,
                    "standby" if server.role == "standby" else "promoted server",
                    server.host,
                    server.port,
                    run_id,
                    reason,
                )
                announced = True
            await asyncio.sleep(max(0.0, min(STANDBY_WAIT_POLL, deadline - time.monotonic())))
            continue
        await conn.close()
        if announced:
            logger.info(
                "dump source: the %s accepts connections after %.1fs run=%s",
                "standby" if server.role == "standby" else "promoted server",
                time.monotonic() - started,
                run_id,
            )
        return server
    if server.role == "promoted":
        # The old primary is gone (promoted away): nothing to fall back to. The dump
        # fails with the promoted server's own error.
        logger.warning(
            "dump source: the promoted server %s:%s is not accepting connections after "
            "%.0fs (%s) run=%s",
            server.host,
            server.port,
            time.monotonic() - started,
            reason,
            run_id,
        )
        return server
    logger.warning(
        "dump source: the standby %s:%s is not accepting connections after %.0fs (%s); "
        "dumping from the primary instead run=%s",
        server.host,
        server.port,
        time.monotonic() - started,
        reason,
        run_id,
    )
    return primary_server(config)


@dataclass
class DumpOutcome:
    """What happened to one database in one run."""

    database: str
    result: str  # success | unchanged | failed | cancelled
    detail: str = ""
    record: BackupRecord | None = None
    seconds: float = 0.0
    kind: str = "database"  # database | globals

    @property
    def key(self) -> str:
        """Its series in state and health: a database may be called "(globals)" too."""
        return GLOBALS_KEY if self.kind == "globals" else self.database

    def to_json(self) -> dict[str, Any]:
        return {
            "step": "dump",
            "database": self.database,
            "result": self.result,
            "detail": self.detail,
            "file": str(self.record.path) if self.record else None,
            "size": self.record.size if self.record else None,
            "seconds": round(self.seconds, 3),
        }


@dataclass
class DumpTools:
    bindir: Path
    server_version: str
    pg_dump_version: str
    extra: dict[str, str] = field(default_factory=dict)
    server_major: str | None = None
    pg_dump_major: str | None = None
    # The cluster dumped (pg/identity.py): checked against the accepted one per database.
    system_identifier: str | None = None

    @property
    def resolve_restore_readable(self) -> bool | None:
        """False when pg_dump is newer than the server: Resolve's own Restore runs the
        server's major's pg_restore, which need not read a newer archive."""
        if self.server_major is None or self.pg_dump_major is None:
            return None
        return major_key(self.pg_dump_major) <= major_key(self.server_major)

    @property
    def resolve_restore_detail(self) -> str | None:
        if self.resolve_restore_readable is not False:
            return None
        return (
            f"pg_dump {self.pg_dump_major} archive of a PostgreSQL {self.server_major} server: "
            f"not readable by Resolve's own restore (pg_restore {self.server_major}). Fix: "
            f"{newer_pg_dump_fix(str(self.server_major))}"
        )


async def discover_databases(server: Server) -> list[str]:
    """Databases that contain ``public."SM_Project"`` (DaVinci Resolve project libraries),
    except the ones laterbased restored (marked with ``sql.RESTORED_MARK``)."""
    conn = await server.connect()
    try:
        names = [row["datname"] for row in await conn.fetch(sql.CONNECTABLE_DATABASES)]
        restored = {
            row["datname"] for row in await conn.fetch(sql.RESTORED_DATABASES, sql.RESTORED_MARK)
        }
    finally:
        await conn.close()
    if restored & set(names):
        # A library laterbased restored (a look at last Tuesday's state) does not silently
        # join the hourly backups: restore --back-up, or backup.databases, says it should.
        logger.info(
            "discovery: leaving out database(s) laterbased restored: %s (restore --back-up, "
            "or list them in backup.databases, to back them up)",
            ", ".join(repr(n) for n in sorted(restored & set(names))),
        )
    found: list[str] = []
    for name in (n for n in names if n not in restored):
        try:
            conn = await server.connect(name)
        except PgUnavailable as exc:
            logger.warning("discovery: cannot look into database=%r: %s", name, exc)
            continue
        try:
            if await conn.fetchval(sql.IS_RESOLVE_DATABASE):
                found.append(name)
        finally:
            await conn.close()
    logger.info(
        "discovered Resolve databases count=%s names=%s",
        len(found),
        ", ".join(repr(n) for n in found) or "-",
    )
    return found


@dataclass(frozen=True)
class Fingerprint:
    """What skip-unchanged compares (see the module docstring). ``value`` is None when it must
    not be recorded, with the reason in ``why_not``."""

    value: str | None
    horizon: int | None = None
    why_not: str = ""


async def database_fingerprint(server: Server, database: str) -> Fingerprint:
    """The fingerprint of ``database`` now (see the module docstring)."""
    conn = await server.connect(database)
    try:
        row = await conn.fetchrow(FINGERPRINT_QUERY)
    finally:
        await conn.close()
    if row is None or row["track_counts"] != "on":
        return Fingerprint(None, why_not="track_counts is off")
    if not row["quiescent"]:
        # A write in progress now may commit after the dump's snapshot without moving the
        # horizon: a fingerprint recorded now could call that commit "unchanged" next time.
        return Fingerprint(None, why_not="a write transaction was in progress")
    value = "|".join(
        [f"xid={row['xid_horizon']}"]
        + [
            str(row[key])
            for key in ("started", "stats_reset", "tup_inserted", "tup_updated", "tup_deleted")
        ]
    )
    return Fingerprint(value, int(row["xid_horizon"]))


async def select_tools(config: Config, server: Server) -> DumpTools:
    """pg_dump of the server's major (newer with a warning, older refused)."""
    conn = await server.connect()
    try:
        version_num = int(await conn.fetchval(sql.SERVER_VERSION_NUM))
        server_version = str(await conn.fetchval(SERVER_VERSION))
        system_identifier = await check_server_identity(config, server, conn, version_num)
    finally:
        await conn.close()
    major = major_from_version_num(version_num)
    bindir = await asyncio.to_thread(dump_bindir, major, config.backup.bin_dir)
    version = await asyncio.to_thread(tool_version, bindir / "pg_dump")
    return DumpTools(
        bindir=bindir,
        server_version=server_version,
        pg_dump_version=version,
        server_major=major,
        pg_dump_major=major_from_version_string(version),
        system_identifier=system_identifier,
    )


async def check_server_identity(
    config: Config, server: Server, conn: Any, version_num: int
) -> str | None:
    """The system identifier of the server behind ``conn``; StrangerPrimary (a
    PgUnavailable) when it is another cluster than the accepted one: a dump of it must
    not join the existing series, where retention would later prune the real backups."""
    observed = await identity.read_system_identifier(
        conn,
        version_num=version_num,
        host=server.host,
        port=server.port,
        user=server.user,
        password=server.password,
        sslmode=server.sslmode,
        timeout=config.monitor.query_timeout,
    )
    what = {"primary": "the primary's address", "promoted": "the promoted server"}.get(
        server.role, "the standby"
    )
    await identity.check_identity(config, observed, f"{server.host}:{server.port}", what)
    return observed


def hash_file(path: Path) -> tuple[int, str]:
    """(size, sha256 hex) of a file; blocking, for ``asyncio.to_thread``."""
    digest = hashlib.sha256()
    size = 0
    with open(path, "rb", buffering=0) as handle:
        while chunk := handle.read(HASH_CHUNK):
            digest.update(chunk)
            size += len(chunk)
    return size, digest.hexdigest()


class SnapshotCounter:
    """A transaction whose exported snapshot pg_dump imports (``--snapshot``); counting
    rows in it sees exactly what the dump contains. It stays open until pg_dump exits."""

    def __init__(self, conn: Any, snapshot: str, run_id: str, database: str) -> None:
        self.conn = conn
        self.snapshot = snapshot
        self.run_id = run_id
        self.database = database

    async def count(self) -> dict[str, int] | None:
        """Rows per table, or None when counting failed (the dump goes on regardless)."""
        started = time.monotonic()
        try:
            counts = await count_rows(self.conn)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # permissions on a table, a dropped connection
            logger.warning(
                "row counts failed run=%s database=%r: %s", self.run_id, self.database, exc
            )
            return None
        logger.info(
            "row counts taken run=%s database=%r tables=%s rows=%s seconds=%.1f",
            self.run_id,
            self.database,
            len(counts) - 1,
            sum(counts.values()),
            time.monotonic() - started,
        )
        return counts

    async def close(self) -> None:
        try:
            await self.conn.close(timeout=10)
        except Exception as exc:
            logger.debug("closing the snapshot connection: %s", exc)
            self.conn.terminate()


class DumpFailed(Exception):
    def __init__(self, message: str, *, conflict: bool = False, lock: bool = False) -> None:
        super().__init__(message)
        self.conflict = conflict
        self.lock = lock


class Dumper:
    """Dumps databases of one server into one catalogue, for one run."""

    def __init__(
        self, config: Config, catalogue: Catalogue, run_id: str, promoted_port: int | None = None
    ) -> None:
        self.config = config
        self.catalogue = catalogue
        self.run_id = run_id
        if promoted_port is not None:
            # After a failover our promoted standby is the primary: dump it, discover on
            # it (primary.host is the old, gone server).
            self.server = self.primary = promoted_server(config, promoted_port)
        else:
            self.server = source_server(config)
            self.primary = primary_server(config)
        self.passfile: Path | None = None

    async def __aenter__(self) -> Dumper:
        await asyncio.to_thread(self.catalogue.prepare)
        if self.server.role == "standby" and self.config.backup.source == "auto":
            self.server = await standby_if_ready(self.config, self.server, self.run_id)
        else:
            self.server = await standby_or_primary(self.config, self.server, self.run_id)
        if self.server.password is not None:
            self.passfile = self.catalogue.partial / f"pgpass-{secrets.token_hex(4)}"
            line = passfile_line(
                self.server.host, self.server.port, "*", self.server.user, self.server.password
            )
            await write_passfile(self.passfile, [line], None)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        if self.passfile is not None:
            self.passfile.unlink(missing_ok=True)

    def environment(self) -> dict[str, str]:
        extra = {"PGPASSFILE": str(self.passfile)} if self.passfile else {}
        # Messages in English and UTF-8 whatever the machine's locale: they go to our log.
        extra |= {"LC_MESSAGES": "C", "PGCLIENTENCODING": "UTF8"}
        return proc.child_environment(extra)

    async def dump(self, database: str, tools: DumpTools) -> DumpOutcome:
        """Dump one database; never raises except CancelledError."""
        started_clock = time.monotonic()
        fmt = self.config.backup.format
        try:
            fingerprint = Fingerprint(None, why_not="skip_unchanged is off")
            if self.config.backup.skip_unchanged:
                try:
                    fingerprint = await database_fingerprint(self.primary, database)
                except PgUnavailable as exc:
                    logger.warning(
                        "skip-unchanged: no fingerprint run=%s database=%r: %s",
                        self.run_id,
                        database,
                        exc,
                    )
            if fingerprint.value is not None:
                unchanged = await self._confirm_unchanged(database, fmt, fingerprint.value)
                if unchanged is not None:
                    return DumpOutcome(
                        database,
                        "unchanged",
                        f"unchanged since {unchanged.file}",
                        unchanged,
                        time.monotonic() - started_clock,
                    )
            elif self.config.backup.skip_unchanged:
                logger.info(
                    "skip-unchanged: dumping, and the next run will dump too, run=%s "
                    "database=%r: %s",
                    self.run_id,
                    database,
                    fingerprint.why_not,
                )
            record = await self._dump_with_retry(database, fmt, tools, fingerprint)
        except asyncio.CancelledError:
            logger.warning("dump cancelled run=%s database=%r", self.run_id, database)
            raise
        # UnsafePath: a link planted as this database's directory fails this database only.
        except (DumpFailed, PgUnavailable, OSError, TimeoutError, UnsafePath) as exc:
            detail = _describe_failure(exc, self.config.backup.timeout)
            logger.error("dump failed run=%s database=%r: %s", self.run_id, database, detail)
            return DumpOutcome(database, "failed", detail, None, time.monotonic() - started_clock)
        seconds = time.monotonic() - started_clock
        logger.info(
            "dump finished run=%s database=%r file=%s size=%s bytes=%d seconds=%.1f",
            self.run_id,
            database,
            record.path,
            format_size(record.size),
            record.size,
            seconds,
        )
        return DumpOutcome(database, "success", record.file, record, seconds)

    async def _confirm_unchanged(
        self, database: str, fmt: str, fingerprint: str
    ) -> BackupRecord | None:
        records = await asyncio.to_thread(self.catalogue.list_backups, database)
        now = datetime.now(UTC)
        # A backup dated in the future is no base to skip from: a new one gets a true date.
        good = [
            r
            for r in records
            if r.database == database
            and r.format == fmt
            and r.good
            and not r.from_the_future(now)
        ]
        if not good or good[-1].fingerprint != fingerprint:
            return None
        newest = await asyncio.to_thread(self.catalogue.mark_confirmed, good[-1], datetime.now(UTC))
        logger.info(
            "dump skipped: database unchanged run=%s database=%r since=%s",
            self.run_id,
            database,
            newest.file,
        )
        return newest

    async def _dump_with_retry(
        self, database: str, fmt: str, tools: DumpTools, fingerprint: Fingerprint
    ) -> BackupRecord:
        attempts = STANDBY_ATTEMPTS if self.server.role == "standby" else 1
        for attempt in range(1, attempts + 1):
            try:
                async with self._replay_paused():
                    kept = await self._fingerprint_seen_by_source(database, fingerprint)
                    return await self._dump_once(database, fmt, tools, kept)
            except DumpFailed as exc:
                if not (exc.conflict or exc.lock) or attempt == attempts:
                    raise
                # Replay runs again (the context above resumed it) while we wait, so a lock
                # the primary has released since is released here too.
                logger.warning(
                    "dump on the standby %s; replay resumed, retrying in %.0fs "
                    "run=%s database=%r attempt=%s/%s",
                    "hit a recovery conflict" if exc.conflict else "could not lock a table",
                    STANDBY_RETRY_DELAY,
                    self.run_id,
                    database,
                    attempt,
                    attempts,
                )
                await asyncio.sleep(STANDBY_RETRY_DELAY)
        raise AssertionError("unreachable")  # pragma: no cover

    @contextlib.asynccontextmanager
    async def _replay_paused(self) -> Any:
        """On a standby, pause WAL replay for the dump (no recovery conflicts), and always
        resume it afterwards, even on failure or cancellation."""
        if self.server.role != "standby":
            yield
            return
        conn = await self.server.connect()
        paused = False
        try:
            if await conn.fetchval(sql.IS_IN_RECOVERY):
                # Counted as paused before the call returns: a cancellation that lands while
                # the pause is in flight (done on the server, not yet acknowledged) must still
                # resume, or the standby stays paused for good.
                paused = True
                try:
                    await conn.execute("SELECT pg_wal_replay_pause()")
                    logger.info("paused WAL replay on the standby for the dump run=%s", self.run_id)
                except asyncio.CancelledError:
                    raise
                except Exception as exc:  # permission denied: fall back to retrying
                    paused = False
                    logger.warning("cannot pause WAL replay run=%s: %s", self.run_id, exc)
            yield
        finally:
            # Resumed before this returns, even when cancelled (again) meanwhile.
            await proc.finish_uncancellable(
                asyncio.ensure_future(self._resume_and_close(conn, paused))
            )

    async def _resume_and_close(self, conn: Any, paused: bool) -> None:
        try:
            if paused:
                try:
                    await conn.execute("SELECT pg_wal_replay_resume()")
                except Exception:  # noqa: BLE001 - a cancelled pause can leave it unusable
                    await conn.close()
                    conn = await self.server.connect()
                    await conn.execute("SELECT pg_wal_replay_resume()")
                logger.info("resumed WAL replay on the standby run=%s", self.run_id)
        finally:
            await conn.close()

    async def _fingerprint_seen_by_source(
        self, database: str, fingerprint: Fingerprint
    ) -> str | None:
        """The fingerprint to record with this dump: on a standby only if it had replayed
        every transaction below the horizon (replay is paused by now, so the dump's snapshot
        sees at least as much); a lagging standby's dump may lack a committed write."""
        if fingerprint.value is None or self.server.role != "standby":
            return fingerprint.value
        try:
            conn = await self.server.connect(database)
            try:
                replayed = await conn.fetchval(STANDBY_REPLAYED_HORIZON, str(fingerprint.horizon))
            finally:
                await asyncio.shield(conn.close())
        except Exception as exc:  # unreachable or an asyncpg server error: do not skip later
            replayed = False
            logger.warning("skip-unchanged: cannot ask the standby run=%s: %s", self.run_id, exc)
        if replayed:
            return fingerprint.value
        logger.info(
            "skip-unchanged: the standby had not replayed every write yet; the next run dumps "
            "again run=%s database=%r",
            self.run_id,
            database,
        )
        return None

    async def _snapshot_counter(self, database: str) -> SnapshotCounter | None:
        """An open transaction with an exported snapshot for pg_dump to share, or None (then
        the dump runs as usual and the drill has no source counts to compare with)."""
        try:
            conn = await self.server.connect(database)
        except PgUnavailable as exc:
            logger.warning("row counts: cannot connect run=%s: %s", self.run_id, exc)
            return None
        try:
            await conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
            snapshot = str(await conn.fetchval("SELECT pg_export_snapshot()"))
        except asyncio.CancelledError:
            await asyncio.shield(conn.close())
            raise
        except Exception as exc:  # asyncpg server errors: too old a server, permissions
            await asyncio.shield(conn.close())
            logger.warning(
                "row counts: cannot export a snapshot run=%s database=%r: %s; the restore "
                "drill of this backup will not compare row counts",
                self.run_id,
                database,
                exc,
            )
            return None
        return SnapshotCounter(conn, snapshot, self.run_id, database)

    async def _same_cluster(self) -> str | None:
        """Check again, right before each database: the server may have been replaced
        since the run began."""
        conn = await self.server.connect()
        try:
            version_num = int(await conn.fetchval(sql.SERVER_VERSION_NUM))
            return await check_server_identity(self.config, self.server, conn, version_num)
        finally:
            await conn.close()

    async def _dump_once(
        self, database: str, fmt: str, tools: DumpTools, fingerprint: str | None
    ) -> BackupRecord:
        system_identifier = await self._same_cluster()
        started = datetime.now(UTC)
        name = self.catalogue.file_name(database, fmt, started)
        partial = self.catalogue.new_partial(name)
        argv = [str(tools.bindir / "pg_dump"), "--no-password"]
        argv += ["--format=custom"] if fmt == "custom" else ["--format=plain", "--compress=6"]
        if self.server.role == "standby":
            argv.append(f"--lock-wait-timeout={int(STANDBY_LOCK_WAIT * 1000)}")
        argv.append(f"--dbname={self.server.conninfo(database)}")
        counter = (
            await self._snapshot_counter(database)
            if self.config.backup.restore_drill and fmt == "custom"
            else None
        )
        row_counts: dict[str, int] | None = None
        fd = await asyncio.to_thread(self.catalogue.open_partial, partial)
        try:
            try:
                if counter is not None:
                    argv.insert(-1, f"--snapshot={counter.snapshot}")
                dumping = proc.run(
                    argv,
                    env=self.environment(),
                    stdout=fd,
                    log_name=f"pg_dump run={self.run_id} database={database!r}",
                    timeout=self.config.backup.timeout,
                    stderr_level=logging.WARNING,
                )
                if counter is None:
                    completed = await dumping
                else:
                    # Counted while pg_dump runs, in its snapshot: exact for this dump.
                    # (Not a TaskGroup: a pg_dump timeout must stay a TimeoutError.)
                    count_task = asyncio.create_task(counter.count())
                    try:
                        completed = await dumping
                        row_counts = await count_task
                    finally:
                        if not count_task.done():
                            count_task.cancel()
                            with contextlib.suppress(asyncio.CancelledError):
                                await count_task
            finally:
                os.close(fd)
                if counter is not None:
                    await asyncio.shield(counter.close())
            if completed.returncode != 0:
                tail = " | ".join(completed.stderr_tail[-3:]) or "no message"
                locking = self.server.role == "standby" and any(
                    "LOCK TABLE" in line or "could not obtain lock" in line
                    for line in completed.stderr_tail
                )
                raise DumpFailed(
                    f"pg_dump exited with status {completed.returncode}: {tail}"
                    + (
                        f" (a table stayed locked for more than {STANDBY_LOCK_WAIT:.0f}s: "
                        "DDL or maintenance running on the primary?)"
                        if locking
                        else ""
                    ),
                    conflict=any(CONFLICT_WITH_RECOVERY in line for line in completed.stderr_tail),
                    lock=locking,
                )
            size, digest = await asyncio.to_thread(hash_file, partial)
            record = BackupRecord(
                database=database,
                file=name,
                directory=self.catalogue.database_dir(database, fmt),
                format=fmt,
                size=size,
                sha256=digest,
                started=started,
                finished=datetime.now(UTC),
                source=self.server.role,
                server_version=tools.server_version,
                pg_dump_version=tools.pg_dump_version,
                resolve_restore_readable=tools.resolve_restore_readable,
                resolve_restore_detail=tools.resolve_restore_detail,
                fingerprint=fingerprint,
                system_identifier=system_identifier,
                row_counts=row_counts,
            )
            await asyncio.to_thread(self.catalogue.publish, partial, record)
            return record
        finally:
            # Published files were renamed away; anything left here is unfinished.
            partial.unlink(missing_ok=True)

    async def dump_globals(self, tools: DumpTools) -> DumpOutcome:
        """Roles and tablespaces (``pg_dumpall --globals-only``), without role passwords."""
        started_clock = time.monotonic()
        started = datetime.now(UTC)
        name = self.catalogue.file_name(GLOBALS_NAME, "globals", started)
        partial = self.catalogue.new_partial(name)
        argv = [str(tools.bindir / "pg_dumpall"), "--globals-only", "--no-password"]
        if not tools.server_version.startswith("9."):
            argv.append("--no-role-passwords")
        argv.append(f"--dbname={self.server.conninfo(self.server.maintenance_db)}")
        try:
            fd = await asyncio.to_thread(self.catalogue.open_partial, partial)
            try:
                completed = await proc.run(
                    argv,
                    env=self.environment(),
                    stdout=fd,
                    log_name=f"pg_dumpall run={self.run_id}",
                    timeout=self.config.backup.timeout,
                    stderr_level=logging.WARNING,
                )
            finally:
                os.close(fd)
            if completed.returncode != 0:
                tail = " | ".join(completed.stderr_tail[-3:]) or "no message"
                raise DumpFailed(f"pg_dumpall exited with status {completed.returncode}: {tail}")
            size, digest = await asyncio.to_thread(hash_file, partial)
            record = BackupRecord(
                database=GLOBALS_NAME,
                file=name,
                directory=self.catalogue.database_dir(GLOBALS_NAME, "globals"),
                format="globals",
                size=size,
                sha256=digest,
                started=started,
                finished=datetime.now(UTC),
                source=self.server.role,
                server_version=tools.server_version,
                pg_dump_version=tools.pg_dump_version,
                system_identifier=tools.system_identifier,
            )
            await asyncio.to_thread(self.catalogue.publish, partial, record)
        except (DumpFailed, OSError, TimeoutError) as exc:
            detail = _describe_failure(exc, self.config.backup.timeout)
            logger.error("globals dump failed run=%s: %s", self.run_id, detail)
            seconds = time.monotonic() - started_clock
            return DumpOutcome(GLOBALS_NAME, "failed", detail, None, seconds, "globals")
        finally:
            partial.unlink(missing_ok=True)
        return DumpOutcome(
            GLOBALS_NAME,
            "success",
            record.file,
            record,
            time.monotonic() - started_clock,
            "globals",
        )


def _describe_failure(exc: BaseException, timeout: float) -> str:
    if isinstance(exc, TimeoutError):
        return f"pg_dump did not finish within backup.timeout={timeout:.0f}s"
    if isinstance(exc, OSError):
        return f"{exc.strerror or exc} ({exc.filename})" if exc.filename else str(exc)
    return str(exc)


async def run_dumps(
    config: Config,
    catalogue: Catalogue,
    run_id: str,
    databases: Sequence[str] | None = None,
    promoted_port: int | None = None,
    on_source: Callable[[str], None] | None = None,
) -> list[DumpOutcome]:
    """Dump ``databases`` (default: configured, else discovered), then globals if asked.

    ``promoted_port``: our standby was promoted and runs there; it is the source.
    ``on_source``: told the role of the server the run reads, once chosen.

    Failures of single databases are outcomes, not exceptions; a failure before any dump
    (server unreachable, no pg_dump) is one outcome for database ``"*"``.
    """
    outcomes: list[DumpOutcome] = []
    try:
        async with Dumper(config, catalogue, run_id, promoted_port) as dumper:
            if on_source is not None:
                on_source(dumper.server.role)
            tools = await select_tools(config, dumper.server)
            names = list(databases or config.backup.databases)
            if not names:
                names = await discover_databases(dumper.primary)
                if not names:
                    return [
                        DumpOutcome(
                            "*",
                            "failed",
                            'no database with a table public."SM_Project" found; set '
                            "backup.databases (PRIMARY_DBS) to choose what to dump",
                        )
                    ]
            logger.info(
                "dump run started run=%s source=%s databases=%s pg_dump=%s",
                run_id,
                dumper.server.role,
                len(names),
                tools.bindir / "pg_dump",
            )
            for name in names:
                outcomes.append(await dumper.dump(name, tools))
            if config.backup.dump_globals:
                outcomes.append(await dumper.dump_globals(tools))
    except (LaterbasedError, OSError) as exc:
        # Includes ToolMissing: no usable pg_dump fails the backup, not the whole daemon.
        logger.error("dump run failed run=%s: %s", run_id, exc)
        outcomes.append(DumpOutcome("*", "failed", str(exc)))
    return outcomes
