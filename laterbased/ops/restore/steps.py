"""Restoring a backup into a new database, safely.

1. pick the backup: ``--file``, or from the local catalogue (``--at`` / latest), or, when
   none is local, from the rclone remote (``<remote>:<path>/<encoded db>/``, the local
   layout mirrored), downloaded into ``.partial/``;
2. verify its sha256 against the manifest;
3. create a work database ``UTF8`` from ``template0`` under a temporary name, restore into
   it (``pg_restore -j N`` for custom archives, ``psql`` fed the decompressed stream for
   plain-gzip), and only then rename it to the target name, so a half-restored database
   never carries the name Resolve would open;
4. an existing target is refused unless ``replace``; then it is renamed aside with a
   timestamp (never dropped) just before the new one takes its name.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import json
import logging
import os
import re
import secrets
import shutil
import subprocess
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from laterbased import proc
from laterbased.backup.dump import hash_file
from laterbased.backup.verify import reading_major
from laterbased.config import Config
from laterbased.errors import JobFailed, RefuseToRun
from laterbased.pg import sql
from laterbased.pg.binaries import (
    READ_TOOLS,
    major_from_version_num,
    newest_bindir_at_least,
    reading_bindir,
)
from laterbased.pg.connect import connect
from laterbased.pg.passfile import passfile_line, write_passfile
from laterbased.records.catalogue import (
    MANIFEST_SUFFIX,
    BackupRecord,
    Catalogue,
    encode_name,
    manifest_name,
)

logger = logging.getLogger(__name__)

MAX_IDENTIFIER_BYTES = 63
# pg_restore --verbose says one line per step of its table of contents (thousands for a big
# project library). At INFO we say where it is every this many steps or seconds; every
# step is at DEBUG.
PROGRESS_EVERY_STEPS = 1000
PROGRESS_EVERY_SECONDS = 15.0
# What is not progress: pg_restore's diagnostics, the "while PROCESSING TOC:" / "from TOC
# entry" lines before an error, and "Command was:" with the failing SQL after it. Parallel
# workers share one stderr and write the "pg_restore: " prefix separately, so lines come
# interleaved ("pg_restore:pg_restore: finished item ..."): search, do not anchor.
_DIAGNOSTIC = re.compile(
    r"\b(error|warning|detail|hint): |PROCESSING TOC|from TOC entry|^Command was:"
)
_PREFIXES = re.compile(r"^(\s*pg_restore:)+\s*")

# Locales a UTF8 database can use: C/POSIX, or any "*.UTF-8"/"*.utf8" locale.
_C_LOCALES = {"c", "posix"}


@dataclass(frozen=True)
class RestoreRequest:
    target_db: str
    database: str | None = None
    at: datetime | None = None
    file: Path | None = None
    target_host: str | None = None
    target_port: int | None = None
    target_user: str | None = None
    target_password: str | None = None
    replace: bool = False
    jobs: int = 1
    # Join laterbased's automatic backups (discovery). By default a restored database is
    # marked (COMMENT ON DATABASE, sql.RESTORED_MARK) and left out of them.
    back_up: bool = False
    # With ``at``: the newest dump at or before it, never the point-in-time archive (the
    # way out when a moment past a gap in the archive is refused).
    from_dump: bool = False


@dataclass(frozen=True)
class RestoreResult:
    target_db: str
    source: str
    moved_aside: str | None
    seconds: float
    tables: int
    # With --at: which way it went (the moment itself from the point-in-time archive, or
    # the newest dump at or before it, and why), for the operator to read.
    at_how: str | None = None


@dataclass(frozen=True)
class Target:
    host: str
    port: int
    user: str
    password: str | None
    sslmode: str = "prefer"

    async def connect(self, database: str, timeout: float) -> Any:  # noqa: ASYNC109
        return await connect(
            host=self.host,
            port=self.port,
            user=self.user,
            password=self.password,
            database=database,
            timeout=timeout,
            application_name="laterbased-restore",
            sslmode=self.sslmode,
        )


class RestoreProgress:
    """Logs ``pg_restore --verbose``: steps at DEBUG with a progress line at INFO now and
    then; errors at ERROR, warnings and an error's context (the failing SQL) at WARNING."""

    def __init__(self, database: str) -> None:
        self.database = database
        self.steps = 0
        self.started = self.reported_at = time.monotonic()
        self.reported_steps = 0
        self._in_diagnostic = False

    def __call__(self, line: str) -> None:
        if not line.strip():
            return
        diagnostic = _DIAGNOSTIC.search(line)
        if diagnostic is not None:
            self._in_diagnostic = True
            level = logging.ERROR if diagnostic.group(1) == "error" else logging.WARNING
            logger.log(level, "%s", line)
            return
        if self._in_diagnostic and not line.startswith("pg_restore:"):
            logger.warning("%s", line)  # the SQL text of "Command was:"
            return
        self._in_diagnostic = False
        self.steps += 1
        logger.debug("%s", line)
        now = time.monotonic()
        if (
            self.steps - self.reported_steps >= PROGRESS_EVERY_STEPS
            or now - self.reported_at >= PROGRESS_EVERY_SECONDS
        ):
            self.reported_steps, self.reported_at = self.steps, now
            logger.info(
                "pg_restore progress database=%s steps=%d seconds=%.0f at: %s",
                self.database,
                self.steps,
                now - self.started,
                _PREFIXES.sub("", line),
            )


def quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def quote_literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def aside_name(target: str, moment: datetime) -> str:
    """``<target>_before_restore_<UTC stamp>``, shortened to PostgreSQL's 63 bytes."""
    suffix = f"_before_restore_{moment.astimezone(UTC).strftime('%Y%m%dT%H%M%SZ')}"
    head = target.encode("utf-8")[: MAX_IDENTIFIER_BYTES - len(suffix)]
    return head.decode("utf-8", errors="ignore") + suffix


def restored_comment(source: str, moment: datetime) -> str:
    """The COMMENT ON DATABASE of a restored library: why the hourly backups leave it out."""
    return (
        f"{sql.RESTORED_MARK} {moment.strftime('%Y-%m-%d %H:%M:%S UTC')} from {source}; not "
        "in laterbased's automatic backups (list it in backup.databases, or run COMMENT ON "
        "DATABASE ... IS NULL, to back it up)"
    )


def utf8_locale(locale: str) -> bool:
    lowered = locale.lower()
    return lowered in _C_LOCALES or lowered.replace("-", "").endswith(".utf8")


def format_of(path: Path) -> str:
    name = path.name
    if name.endswith(".sql.gz"):
        return "plain-gzip"
    if name.endswith(".sql"):
        return "plain"
    return "custom"


def choose(
    records: list[BackupRecord], at: datetime | None, now: datetime | None = None
) -> BackupRecord | None:
    """The newest good backup, or the newest one started at or before ``at``.

    "Newest" never means one dated in the future (started more than ``FUTURE_TOLERANCE``
    after ``now``: made while the clock ran fast): its date says nothing about its content,
    so ``--latest`` takes the newest one with a believable date (``--file`` restores the
    other on purpose)."""
    usable = [
        r for r in records if r.format in ("custom", "plain-gzip") and r.verified is not False
    ]
    if at is not None:
        usable = [r for r in usable if r.started <= at]
    else:
        moment = now or datetime.now(UTC)
        usable = [r for r in usable if not r.from_the_future(moment)]
    return max(usable, key=lambda r: r.started, default=None)


class Restorer:
    def __init__(self, config: Config, request: RestoreRequest) -> None:
        self.config = config
        self.request = request
        primary = config.primary
        user = request.target_user or primary.user
        password = request.target_password
        if password is None and user == primary.user and primary.password:
            password = primary.password.reveal()
        self.target = Target(
            host=request.target_host or primary.host or "localhost",
            port=request.target_port or primary.port,
            user=user,
            password=password,
            sslmode=primary.sslmode,
        )
        self.catalogue = Catalogue(config.backup_directory)
        self.workdir: Path | None = None
        # --at: restored from the point-in-time archive, or why not (its window).
        self.point_in_time = False
        self.point_in_time_miss: str | None = None

    async def run(self) -> RestoreResult:
        started = asyncio.get_running_loop().time()
        request = self.request
        admin = await self.target.connect(
            self.config.primary.database, self.config.primary.connect_timeout
        )
        try:
            if await self._exists(admin, request.target_db) and not request.replace:
                raise RefuseToRun(
                    f"database {request.target_db!r} already exists on "
                    f"{self.target.host}:{self.target.port}; choose another --target-db, or "
                    "--replace to rename the existing one aside (it is never dropped)"
                )
            version_num = int(await admin.fetchval(sql.SERVER_VERSION_NUM))
            locale = await self._locale(admin)
        finally:
            await admin.close()
        await asyncio.to_thread(self.catalogue.prepare)
        self.workdir = self.catalogue.partial / f"restore-{secrets.token_hex(4)}"
        await asyncio.to_thread(self.workdir.mkdir, 0o700)
        try:
            path, kind, source, dumped_from = await self._fetch()
            result = await self._restore(path, kind, source, version_num, locale, dumped_from)
        finally:
            await asyncio.to_thread(shutil.rmtree, self.workdir, True)
        seconds = asyncio.get_running_loop().time() - started
        logger.info(
            "restore finished target_db=%s source=%s tables=%s seconds=%.1f moved_aside=%s",
            result.target_db,
            result.source,
            result.tables,
            seconds,
            result.moved_aside,
        )
        at_how = None
        if request.at is not None and self.point_in_time:
            at_how = "point in time: exactly as it was at that moment"
        elif request.at is not None:
            at_how = (
                "the newest dump at or before that moment, not the moment itself: "
                f"{self.point_in_time_miss or 'no point-in-time archive'}"
            )
        return RestoreResult(
            result.target_db, result.source, result.moved_aside, seconds, result.tables, at_how
        )

    # --- which backup -------------------------------------------------------------------

    async def _fetch(self) -> tuple[Path, str, str, BackupRecord | None]:
        """Local path, format and a description of the verified backup to restore, and its
        manifest (None when there is none)."""
        request = self.request
        if request.file is not None:
            return await self._from_file(request.file)
        if request.database is None:
            raise JobFailed("say which backup: --database NAME (with --at/--latest) or --file")
        if request.at is not None and request.from_dump:
            self.point_in_time_miss = "--from-dump"
        elif request.at is not None:
            assert self.workdir is not None  # noqa: S101 - set by run()
            from laterbased.ops.restore.point_in_time import (
                dump_at,
                out_of_reach_text,
                window_text,
            )

            moment_file = self.workdir / "point-in-time.backup"
            off_site: list[str] = []
            off_site_refused: list[str] = []
            how = await dump_at(
                self.config,
                request.database,
                request.at,
                moment_file,
                self.workdir.name,
                missed=off_site,
                refused=off_site_refused,
            )
            if how is not None:
                self.point_in_time = True
                return moment_file, "custom", f"{request.database!r} as it was at "\
                    f"{request.at.isoformat()} ({how})", None
            refused = await asyncio.to_thread(out_of_reach_text, self.config, request.at)
            if refused is None and off_site_refused:
                # The local archive is gone (or began later): the remote's window decides.
                refused = off_site_refused[0]
            if refused is not None:
                raise RefuseToRun(refused + await self._dump_fallback_hint(request.database))
            self.point_in_time_miss = "; ".join(
                [await asyncio.to_thread(window_text, self.config), *off_site]
            )
        records = await asyncio.to_thread(self._local_records, request.database)
        record = choose(records, request.at)
        if record is not None:
            await self._verify(record.path, record.sha256, record.size)
            return record.path, record.format, f"local {record.path}", record
        if not self.config.upload.enabled:
            raise JobFailed(
                await self._none_found("locally (no rclone remote configured)")
                + self._future_hint(records)
                + (f"; {self.point_in_time_miss}" if self.point_in_time_miss else "")
            )
        return await self._download(request.database)

    async def _dump_fallback_hint(self, database: str) -> str:
        """The way out of a refused moment: a moment of a range, or the dump before it."""
        assert self.request.at is not None  # noqa: S101 - only for --at
        records = await asyncio.to_thread(self._local_records, database)
        record = choose(records, self.request.at)
        dump = (
            f"the newest dump at or before it (started {record.started.isoformat()}, loses "
            "the work after that)"
            if record is not None
            else "the newest dump at or before it (none is here locally; the rclone remote "
            "is searched when configured)"
        )
        return f". Choose --at inside one of these ranges, or add --from-dump to restore {dump}"

    def _future_hint(self, records: list[BackupRecord]) -> str:
        now = datetime.now(UTC)
        future = [r for r in records if r.from_the_future(now)]
        if self.request.at is not None or not future:
            return ""
        return (
            f"; {len(future)} backup(s) are dated in the future (made while the clock ran "
            f"fast, or the clock is wrong now), never taken as the latest: restore one on "
            f"purpose with --file {future[-1].path}"
        )

    def _local_records(self, database: str) -> list[BackupRecord]:
        return [r for r in self.catalogue.list_backups(database) if r.path.exists()]

    async def _none_found(self, where: str) -> str:
        request = self.request
        when = f" started at or before {request.at.isoformat()}" if request.at else ""
        known = await asyncio.to_thread(self._known_names)
        return f"no backup of database {request.database!r}{when} found {where}{known}"

    def _known_names(self) -> str:
        """The databases there are local backups of, the one differing only in case first:
        database names are case-sensitive, and Resolve shows them as typed."""
        names = sorted(
            {r.database for r in self.catalogue.list_backups() if not r.is_globals}
        )
        if not names:
            return ""
        wanted = (self.request.database or "").casefold()
        # Only a different spelling: the name itself is no suggestion (its backups are
        # all newer than --at, say).
        close = [
            name for name in names
            if name.casefold() == wanted and name != self.request.database
        ]
        hint = (
            f"; did you mean --database {close[0]!r}? (names are case-sensitive)" if close else ""
        )
        return hint + "; backed-up databases here: " + ", ".join(repr(n) for n in names)

    async def _from_file(self, path: Path) -> tuple[Path, str, str, BackupRecord | None]:
        if not await asyncio.to_thread(path.is_file):
            raise JobFailed(f"--file {path}: no such file")
        manifest = path.parent / manifest_name(path.name)
        record = await asyncio.to_thread(self.catalogue.read_manifest, manifest)
        if record is not None and record.file == path.name:
            await self._verify(path, record.sha256, record.size)
            return path, record.format, f"file {path} (sha256 verified)", record
        logger.warning("restore: %s has no manifest; its checksum cannot be verified", path)
        return path, format_of(path), f"file {path} (no manifest: not verified)", None

    async def _verify(self, path: Path, sha256: str, size: int) -> None:
        actual_size, actual = await asyncio.to_thread(hash_file, path)
        if actual != sha256 or actual_size != size:
            raise JobFailed(
                f"{path} does not match its manifest (sha256 {actual[:12]}… size {actual_size}, "
                f"expected {sha256[:12]}… size {size}): the file is damaged; pick another "
                "backup with --at or --file"
            )
        logger.info("restore: sha256 verified file=%s size=%s", path, actual_size)

    async def _download(self, database: str) -> tuple[Path, str, str, BackupRecord | None]:
        from laterbased.offsite.rclone import Rclone, RcloneFailed

        assert self.workdir is not None  # noqa: S101 - set by run()
        rclone = await Rclone.open(self.config.upload)
        folder = rclone.target(encode_name(database))
        entries = await rclone.lsjson(folder)
        manifests = [e for e in entries if e.name.endswith(MANIFEST_SUFFIX)]
        records: list[BackupRecord] = []
        for entry in manifests:
            try:
                result = await rclone.call("cat", f"{folder}/{entry.name}", capture=True)
                data = json.loads(result.stdout)
                records.append(BackupRecord.from_json(data, self.workdir))
            except (RcloneFailed, ValueError, KeyError, TypeError) as exc:
                logger.warning("restore: skipping remote manifest %s: %s", entry.name, exc)
        record = choose(records, self.request.at)
        if record is None:
            raise JobFailed(await self._none_found(f"locally or on {folder}"))
        local = self.workdir / record.file
        logger.info("restore: downloading %s/%s size=%s", folder, record.file, record.size)
        await rclone.call("copyto", f"{folder}/{record.file}", str(local))
        await self._verify(local, record.sha256, record.size)
        return local, record.format, f"{folder}/{record.file}", record

    # --- into the server ------------------------------------------------------------------

    @staticmethod
    async def _exists(conn: Any, name: str) -> bool:
        return bool(await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name))

    @staticmethod
    async def _locale(conn: Any) -> tuple[str, str]:
        row = await conn.fetchrow(
            "SELECT datcollate, datctype FROM pg_database WHERE datname = 'template0'"
        )
        return str(row["datcollate"]), str(row["datctype"])

    async def _restore(
        self,
        path: Path,
        kind: str,
        source: str,
        version_num: int,
        locale: tuple[str, str],
        dumped_from: BackupRecord | None,
    ) -> RestoreResult:
        request = self.request
        timeout = self.config.primary.connect_timeout
        work_name = f"laterbased_restore_{secrets.token_hex(6)}"
        collate, ctype = locale
        if not (utf8_locale(collate) and utf8_locale(ctype)):
            raise RefuseToRun(
                f"the target server's default locale ({collate}/{ctype}) cannot hold a UTF8 "
                "database, and Resolve's databases are UTF8: refusing to restore into a "
                "non-UTF8 database; use a server initialised with a UTF-8 locale"
            )
        admin = await self.target.connect(self.config.primary.database, timeout)
        try:
            await admin.execute(
                f"CREATE DATABASE {quote_ident(work_name)} TEMPLATE template0 ENCODING 'UTF8' "
                f"LC_COLLATE {quote_literal(collate)} LC_CTYPE {quote_literal(ctype)}"
            )
            # Marked from the start: discovery must not dump a half-restored library either.
            # The comment follows the database through the rename.
            await admin.execute(
                f"COMMENT ON DATABASE {quote_ident(work_name)} IS "
                f"{quote_literal(restored_comment(source, datetime.now(UTC)))}"
            )
            encoding = await admin.fetchval(sql.DATABASE_ENCODING, work_name)
        finally:
            await admin.close()
        logger.info(
            "restore: created work database %s (UTF8, %s) for %r",
            work_name,
            collate,
            request.target_db,
        )
        try:
            if encoding != "UTF8":
                raise RefuseToRun(f"the server created {work_name} as {encoding}, not UTF8")
            await self._load(path, kind, work_name, version_num, dumped_from)
            tables = await self._count_tables(work_name)
            moved = await self._swap(work_name)
        except BaseException:
            await self._drop_work(work_name)
            raise
        if request.back_up:
            await self._unmark(request.target_db)
        return RestoreResult(request.target_db, source, moved, 0.0, tables)

    async def _unmark(self, name: str) -> None:
        """--back-up: the restored database joins the automatic backups."""
        admin = await self.target.connect(
            self.config.primary.database, self.config.primary.connect_timeout
        )
        try:
            await admin.execute(f"COMMENT ON DATABASE {quote_ident(name)} IS NULL")
        finally:
            await admin.close()

    async def _load(
        self,
        path: Path,
        kind: str,
        database: str,
        version_num: int,
        dumped_from: BackupRecord | None,
    ) -> None:
        source_major = reading_major(dumped_from) if dumped_from is not None else None
        if source_major is not None:
            # The pg_restore/psql of the backup's server major, as Resolve's own Restore would
            # read it, not the newest (see reading_major for a backup a newer pg_dump wrote).
            bindir, reader = await asyncio.to_thread(
                reading_bindir, source_major, self.config.backup.bin_dir, tools=READ_TOOLS
            )
        else:
            # No manifest: the newest reads archives of every older major.
            bindir, reader = await asyncio.to_thread(
                newest_bindir_at_least, major_from_version_num(version_num), tools=READ_TOOLS
            )
        logger.info(
            "restore: reading the backup with PostgreSQL %s's %s (dumped from %s)",
            reader,
            "pg_restore" if kind == "custom" else "psql",
            (dumped_from and dumped_from.server_version) or "an unknown server version",
        )
        assert self.workdir is not None  # noqa: S101
        passfile = self.workdir / "pgpass"
        lines = []
        if self.target.password:
            lines.append(
                passfile_line(
                    self.target.host, self.target.port, "*", self.target.user, self.target.password
                )
            )
        await write_passfile(passfile, lines, None)
        env = proc.child_environment(
            {"PGPASSFILE": str(passfile), "PGSSLMODE": self.target.sslmode}
        )
        connection = [
            "-h",
            self.target.host,
            "-p",
            str(self.target.port),
            "-U",
            self.target.user,
            "-w",
        ]
        if kind == "custom":
            argv = [
                str(bindir / "pg_restore"),
                *connection,
                "-d",
                database,
                "--no-owner",
                "--no-acl",
                "--exit-on-error",
                "--verbose",
                "-j",
                str(max(1, self.request.jobs)),
                str(path),
            ]
            progress = RestoreProgress(database)
            completed = await proc.run(
                argv,
                env=env,
                log_name="pg_restore",
                timeout=self.config.backup.timeout,
                on_line=progress,
            )
            logger.info(
                "pg_restore exited status=%s database=%s steps=%d seconds=%.1f",
                completed.returncode,
                database,
                progress.steps,
                time.monotonic() - progress.started,
            )
        else:
            completed = await self._psql_stream(bindir, connection, database, path, kind, env)
        if completed.returncode != 0:
            tail = " | ".join(completed.stderr_tail[-5:])
            raise JobFailed(f"restore into {database} failed (exit {completed.returncode}): {tail}")

    async def _psql_stream(
        self,
        bindir: Path,
        connection: list[str],
        database: str,
        path: Path,
        kind: str,
        env: dict[str, str],
    ) -> proc.CompletedRun:
        """psql reading the (decompressed) SQL from a pipe that a thread fills."""
        read_fd, write_fd = os.pipe()
        damaged: list[str] = []

        def feed() -> None:
            opener = gzip.open if kind == "plain-gzip" else open
            try:
                with os.fdopen(write_fd, "wb") as sink:
                    try:
                        with opener(path, "rb") as source:
                            shutil.copyfileobj(source, sink, 1 << 20)
                    except (OSError, EOFError) as exc:
                        if isinstance(exc, BrokenPipeError):
                            raise
                        # psql must not take the end of the pipe for the end of the dump.
                        damaged.append(f"{type(exc).__name__}: {exc}")
            except BrokenPipeError:
                logger.warning("restore: psql stopped reading %s", path)

        argv = [
            str(bindir / "psql"),
            "-X",
            "-q",
            "-v",
            "ON_ERROR_STOP=1",
            *connection,
            "-d",
            database,
            "-f",
            "-",
        ]
        feeder = asyncio.create_task(asyncio.to_thread(feed))
        try:
            completed = await proc.run(
                argv,
                env=env,
                stdin=read_fd,
                # psql echoes query results (set_config rows …): noise, not news.
                stdout=subprocess.DEVNULL,
                log_name="psql restore",
                timeout=self.config.backup.timeout,
                stderr_level=logging.WARNING,
            )
        finally:
            os.close(read_fd)
            with contextlib.suppress(Exception):
                await feeder
        if damaged:
            raise JobFailed(
                f"{path} is damaged or truncated ({damaged[0]}): it could not be read to the "
                "end, so the restore is incomplete and was discarded; pick another backup"
            )
        return completed

    async def _count_tables(self, database: str) -> int:
        conn = await self.target.connect(database, self.config.primary.connect_timeout)
        try:
            return int(
                await conn.fetchval(
                    "SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                    "WHERE c.relkind IN ('r', 'p') AND n.nspname NOT IN ('pg_catalog', "
                    "'information_schema')"
                )
            )
        finally:
            await conn.close()

    async def _swap(self, work_name: str) -> str | None:
        """Rename an existing target aside (``replace``), then the work database in."""
        target = self.request.target_db
        admin = await self.target.connect(
            self.config.primary.database, self.config.primary.connect_timeout
        )
        try:
            moved: str | None = None
            if await self._exists(admin, target):
                if not self.request.replace:
                    raise RefuseToRun(
                        f"database {target!r} appeared during the restore; nothing was replaced"
                    )
                busy = await admin.fetchval(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = $1", target
                )
                if busy:
                    raise RefuseToRun(
                        f"database {target!r} has {busy} open connection(s): close the project "
                        "library in Resolve on every client, then run the restore again"
                    )
                moved = aside_name(target, datetime.now(UTC))
            # One transaction (ALTER DATABASE ... RENAME is transactional): if the restored
            # database cannot take the name, the old one keeps it.
            async with admin.transaction():
                if moved is not None:
                    await admin.execute(
                        f"ALTER DATABASE {quote_ident(target)} RENAME TO {quote_ident(moved)}"
                    )
                await admin.execute(
                    f"ALTER DATABASE {quote_ident(work_name)} RENAME TO {quote_ident(target)}"
                )
            if moved is not None:
                logger.warning("restore: renamed existing database %r aside to %r", target, moved)
            return moved
        finally:
            await admin.close()

    async def _drop_work(self, work_name: str) -> None:
        """Remove our own half-restored work database (never a database we did not create)."""
        try:
            admin = await self.target.connect(
                self.config.primary.database, self.config.primary.connect_timeout
            )
            try:
                await admin.execute(f"DROP DATABASE IF EXISTS {quote_ident(work_name)}")
            finally:
                await admin.close()
            logger.info("restore: removed unfinished work database %s", work_name)
        except Exception as exc:  # noqa: BLE001 - report, keep the original error
            logger.error(
                "restore: could not remove work database %s: %s; drop it by hand", work_name, exc
            )


async def restore(config: Config, request: RestoreRequest) -> RestoreResult:
    return await Restorer(config, request).run()
