"""The on-disk backup catalogue: where backups live, their manifests, atomic publishing.

Layout under the backup directory::

    <root>/<db>/<db>-<UTC yyyymmddTHHMMSSZ>.backup    pg_dump -Fc (format: custom)
    <root>/<db>/<db>-<...>.sql.gz                       format: plain-gzip
    <root>/<db>/<db>-<...>.json                         the manifest of that backup
    <root>/@globals/globals-<...>.sql                   pg_dumpall --globals-only (optional)
    <root>/.partial/                                    work in progress; cleaned at start
    <root>/.lock                                        flock of the process writing here

``<db>`` is the database name percent-encoded (every byte outside ``[A-Za-z0-9_.-]`` becomes
``%XX``, and so does a leading ``.``), so any name PostgreSQL accepts is a safe file name;
the real name is kept in the manifest. Custom archives end in ``.backup``, the extension
Resolve's Project Manager "Restore" dialog offers; earlier versions wrote ``.dump``, and
those backups are listed, verified, pruned and restored like the others (their manifest
names the file). A backup exists only once its manifest exists: the
data file and the manifest are written and fsynced in ``.partial/`` first, then renamed
into place data-first, manifest last, and the directory is fsynced.

Everything here is blocking file I/O: call it through ``asyncio.to_thread`` from the loop.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import json
import logging
import os
import secrets
import shutil
import signal
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from laterbased import __version__
from laterbased.config import read_regular_file
from laterbased.core.clock import FUTURE_TOLERANCE as FUTURE_TOLERANCE
from laterbased.core.lockfile import HeldLock, LockBusy, take_lock
from laterbased.core.state import GLOBALS_KEY as GLOBALS_KEY  # re-exported: the globals' series key
from laterbased.core.state import GLOBALS_LABEL
from laterbased.errors import JobFailed, UnsafePath
from laterbased.proc import process_facts
from laterbased.records.wal_archive import PITR_DIRS

logger = logging.getLogger(__name__)

PARTIAL_DIR = ".partial"
LOCK_FILE = ".lock"
MANIFEST_SUFFIX = ".json"
MANIFEST_KIND = "laterbased-backup"
MANIFEST_VERSION = 1
GLOBALS_DIR = "@globals"  # '@' is always encoded in database names, so no database collides
# How the globals (roles, tablespaces) are shown and named in their manifests. A database may
# have this name too, so it is never their key: GLOBALS_KEY is (BackupRecord.series).
GLOBALS_NAME = GLOBALS_LABEL
# A backup that started later than now plus FUTURE_TOLERANCE (a clock that ran fast, a restored
# system image) is "from the future": listed and kept, never the newest, never --latest.
SUFFIXES = {"custom": ".backup", "plain-gzip": ".sql.gz", "globals": ".sql"}
# Custom archives written before they were named like Resolve's own backups.
LEGACY_SUFFIXES = (".dump",)
_SAFE = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.-")
STAMP_FORMAT = "%Y%m%dT%H%M%SZ"


def encode_name(database: str) -> str:
    """A file-name-safe, reversible spelling of ``database`` (percent-encoding of UTF-8).

    ``"My Project/ü"`` → ``"My%20Project%2F%C3%BC"``; at most 63 bytes in, 189 chars out.
    """
    out: list[str] = []
    for index, byte in enumerate(database.encode("utf-8")):
        if byte in _SAFE and not (index == 0 and byte == ord(".")):
            out.append(chr(byte))
        else:
            out.append(f"%{byte:02X}")
    return "".join(out) or "%00"


def decode_name(encoded: str) -> str:
    """Inverse of :func:`encode_name`."""
    raw = bytearray()
    index = 0
    while index < len(encoded):
        char = encoded[index]
        if char == "%" and index + 3 <= len(encoded):
            raw.append(int(encoded[index + 1 : index + 3], 16))
            index += 3
        else:
            raw += char.encode("utf-8")
            index += 1
    return raw.decode("utf-8")


def utc_stamp(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime(STAMP_FORMAT)


def _iso(moment: datetime | None) -> str | None:
    return None if moment is None else moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _parse_iso(text: Any) -> datetime | None:
    if text is None:
        return None
    moment = datetime.fromisoformat(str(text).replace("Z", "+00:00"))
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment


@dataclass
class BackupRecord:
    """One published backup, as its manifest describes it."""

    database: str
    file: str  # file name inside ``directory``
    directory: Path
    format: str  # custom | plain-gzip | globals
    size: int
    sha256: str
    started: datetime
    finished: datetime
    source: str  # primary | standby
    server_version: str | None = None
    pg_dump_version: str | None = None
    # False when pg_dump was newer than the server's major (none of the server's major was
    # installed): Resolve's own Restore runs the pg_restore of its server's major, which
    # need not read a newer archive. None: not known (a manifest of an older laterbased).
    resolve_restore_readable: bool | None = None
    # Why, with both majors ("pg_dump 15 archive of a PostgreSQL 13 server; ...").
    resolve_restore_detail: str | None = None
    fingerprint: str | None = None
    # The primary cluster's system identifier the dump was taken from (pg/identity.py):
    # a backup of another cluster never joins this series unnoticed. None: older manifest.
    system_identifier: str | None = None
    # The last time a skip-unchanged run found the database identical to this backup.
    confirmed_at: datetime | None = None
    uploaded_to: str | None = None
    uploaded_at: datetime | None = None
    # How the off-site copy was checked: "size+sha256", "size+md5", ... or "size only".
    uploaded_verified: str | None = None
    verified: bool | None = None
    verified_at: datetime | None = None
    verify_detail: str | None = None
    # Exact rows per table (rowcounts.table_key) in the dump's own snapshot; recorded only
    # when the restore drill is on (it costs one extra scan of every table).
    row_counts: dict[str, int] | None = None
    # The last restore drill: ok, at, detail, seconds, tables, rows (jobs/drill.py).
    drill: dict[str, Any] | None = None
    laterbased_version: str = __version__
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def path(self) -> Path:
        return self.directory / self.file

    @property
    def manifest_path(self) -> Path:
        return self.directory / manifest_name(self.file)

    @property
    def good(self) -> bool:
        """A backup we would restore from: its file is there and verify did not reject it."""
        return self.verified is not False and self.path.exists()

    @property
    def fresh_as_of(self) -> datetime:
        """Until when this backup is known to match the database (skip-unchanged)."""
        return max(self.finished, self.confirmed_at or self.finished)

    @property
    def is_globals(self) -> bool:
        """The roles and tablespaces of the cluster (``pg_dumpall --globals-only``), not a
        database: told by the format, so globals of older versions are recognised too."""
        return self.format == "globals"

    @property
    def series(self) -> str:
        """The key of the series this backup belongs to: the database's real name, or
        :data:`GLOBALS_KEY`. Retention, state and health group by this, never by the
        name alone (a database may be called ``(globals)``)."""
        return GLOBALS_KEY if self.is_globals else self.database

    def fresh_until(self, now: datetime) -> datetime:
        """:attr:`fresh_as_of` as far as ``now`` can tell: a skip-unchanged confirmation
        dated in the future (made while the clock ran fast) proves nothing, and nothing is
        known to be fresh later than ``now``."""
        confirmed = self.confirmed_at
        if confirmed is not None and confirmed > now + FUTURE_TOLERANCE:
            confirmed = None
        return min(max(self.finished, confirmed or self.finished), now)

    def from_the_future(self, now: datetime) -> bool:
        """Started later than ``now`` (beyond :data:`FUTURE_TOLERANCE`): the clock was
        wrong when it was made, or is wrong now. Never the newest or freshest backup."""
        return self.started > now + FUTURE_TOLERANCE

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": MANIFEST_KIND,
            "manifest_version": MANIFEST_VERSION,
            "database": self.database,
            "file": self.file,
            "format": self.format,
            "size": self.size,
            "sha256": self.sha256,
            "started": _iso(self.started),
            "finished": _iso(self.finished),
            "source": self.source,
            "server_version": self.server_version,
            "pg_dump_version": self.pg_dump_version,
            "resolve_restore_readable": self.resolve_restore_readable,
            "resolve_restore_detail": self.resolve_restore_detail,
            "fingerprint": self.fingerprint,
            "system_identifier": self.system_identifier,
            "confirmed_at": _iso(self.confirmed_at),
            "uploaded_to": self.uploaded_to,
            "uploaded_at": _iso(self.uploaded_at),
            "uploaded_verified": self.uploaded_verified,
            "verified": self.verified,
            "verified_at": _iso(self.verified_at),
            "verify_detail": self.verify_detail,
            "row_counts": self.row_counts,
            "drill": self.drill,
            "laterbased_version": self.laterbased_version,
            **({"extra": self.extra} if self.extra else {}),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any], directory: Path) -> BackupRecord:
        if data.get("kind") != MANIFEST_KIND:
            raise ValueError("not a laterbased manifest")
        started = _parse_iso(data["started"])
        finished = _parse_iso(data["finished"])
        if started is None or finished is None:
            raise ValueError("manifest without started/finished")
        file = str(data["file"])
        if "/" in file or file in {"", ".", ".."}:
            raise ValueError(f"manifest names an unsafe file {file!r}")
        return cls(
            database=str(data["database"]),
            file=file,
            directory=directory,
            format=str(data["format"]),
            size=int(data["size"]),
            sha256=str(data["sha256"]),
            started=started,
            finished=finished,
            source=str(data.get("source") or "primary"),
            server_version=data.get("server_version"),
            pg_dump_version=data.get("pg_dump_version"),
            resolve_restore_readable=data.get("resolve_restore_readable"),
            resolve_restore_detail=data.get("resolve_restore_detail"),
            fingerprint=data.get("fingerprint"),
            system_identifier=_optional_text(data.get("system_identifier")),
            confirmed_at=_parse_iso(data.get("confirmed_at")),
            uploaded_to=data.get("uploaded_to"),
            uploaded_at=_parse_iso(data.get("uploaded_at")),
            uploaded_verified=_optional_text(data.get("uploaded_verified")),
            verified=data.get("verified"),
            verified_at=_parse_iso(data.get("verified_at")),
            verify_detail=data.get("verify_detail"),
            row_counts=_parse_counts(data.get("row_counts")),
            drill=dict(data["drill"]) if isinstance(data.get("drill"), dict) else None,
            laterbased_version=str(data.get("laterbased_version") or "?"),
            extra=dict(data.get("extra") or {}),
        )


def _optional_text(value: Any) -> str | None:
    return None if value is None else str(value)


def _parse_counts(value: Any) -> dict[str, int] | None:
    if not isinstance(value, dict):
        return None
    return {str(key): int(count) for key, count in value.items()}


def manifest_name(file: str) -> str:
    """``db-20261126T130000Z.backup`` (or an older ``.dump``) → ``db-20261126T130000Z.json``."""
    for suffix in sorted((*SUFFIXES.values(), *LEGACY_SUFFIXES), key=len, reverse=True):
        if file.endswith(suffix):
            return file[: -len(suffix)] + MANIFEST_SUFFIX
    return file + MANIFEST_SUFFIX


def fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _make_private_dir(path: Path, *, may_be_link: bool = False) -> None:
    """Create ``path`` (0700) if absent, and make it 0700. Unless ``may_be_link`` (the root
    the operator configured), it must be a real directory: a symbolic link planted there
    would have us chmod, fill and empty someone else's directory (:class:`UnsafePath`)."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    flags = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC | (0 if may_be_link else os.O_NOFOLLOW)
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        if exc.errno not in (errno.ELOOP, errno.ENOTDIR):
            raise
        raise UnsafePath(
            f"{path} is a symbolic link or not a directory; laterbased never follows one "
            f"there (it would write into, empty and chmod its target). Remove it (rm {path}) "
            "and let laterbased create the directory"
        ) from None
    try:
        with contextlib.suppress(PermissionError):
            os.fchmod(fd, 0o700)
    finally:
        os.close(fd)


def _write_file_synced(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)


class Catalogue:
    """The backups under one root directory."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.partial = root / PARTIAL_DIR

    def database_dir(self, database: str, kind: str = "custom") -> Path:
        if kind == "globals":
            return self.root / GLOBALS_DIR
        return self.root / encode_name(database)

    def file_name(self, database: str, kind: str, started: datetime) -> str:
        """``<db>-<UTC stamp>.<ext>``; a second backup within the same second gets ``-2``…"""
        stem = "globals" if kind == "globals" else encode_name(database)
        base = f"{stem}-{utc_stamp(started)}"
        directory = self.database_dir(database, kind)
        name = f"{base}{SUFFIXES[kind]}"
        counter = 1
        while (directory / name).exists() or (directory / manifest_name(name)).exists():
            counter += 1
            name = f"{base}-{counter}{SUFFIXES[kind]}"
        return name

    # --- work in progress -----------------------------------------------------------------

    def prepare(self) -> None:
        """Create the root and ``.partial/`` (mode 0700)."""
        _make_private_dir(self.root, may_be_link=True)
        _make_private_dir(self.partial)

    def new_partial(self, final_name: str) -> Path:
        """A fresh, not yet existing path in ``.partial/`` for a backup being written."""
        self.prepare()
        return self.partial / f"{secrets.token_hex(4)}-{final_name}"

    def open_partial(self, path: Path) -> int:
        """Create ``path`` (0600, must not exist) and return a writable file descriptor."""
        return os.open(
            path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600
        )

    def lock(self) -> CatalogueLock:
        """Take the catalogue for this process (non-blocking ``flock`` on ``<root>/.lock``).

        Only the holder may clean ``.partial/``: another laterbased process (a daemon with
        its HTTP API off, a second ``backup-now``) may be writing there right now. The lock
        dies with the process, even on SIGKILL; its file descriptor is not inherited by
        children, so a leftover pg_dump never holds it. Raises :class:`CatalogueBusy`.
        """
        self.prepare()
        try:
            return take_lock(self.root / LOCK_FILE)
        except LockBusy as exc:
            raise CatalogueBusy(
                f"another laterbased process (pid {exc.holder}) is using the backup directory "
                f"{self.root}; wait for it to finish or stop it"
            ) from None

    def claim(self) -> CatalogueLock:
        """:meth:`lock`, then clean ``.partial/``: what every writer does first."""
        held = self.lock()
        try:
            self.clean_partial()
        except BaseException:
            held.release()
            raise
        return held

    def clean_partial(self) -> int:
        """Remove leftovers of interrupted runs; kill a pg_dump still writing into them.

        A daemon killed with SIGKILL leaves its pg_dump running (it has its own session).
        Killed only when provably ours: the program is pg_dump or pg_dumpall, it runs as
        we do, and its stdout is a file in our (real, never a link) ``.partial/``. Any other
        process with a file open there is named in the log and left alone.
        Returns how many entries were removed.
        """
        if not self.partial.is_dir():
            return 0
        self.prepare()  # refuses a symbolic link before anything is killed or deleted
        for pid in writers_into(self.partial):
            why = _why_not_our_dump(pid, self.partial)
            if why is not None:
                logger.warning(
                    "not killing pid=%s with a file open in %s: %s", pid, self.partial, why
                )
                continue
            logger.warning("killing leftover pg_dump pid=%s writing into %s", pid, self.partial)
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        removed = 0
        for entry in self.partial.iterdir():
            try:
                if entry.is_dir() and not entry.is_symlink():
                    shutil.rmtree(entry)
                else:
                    entry.unlink()
                removed += 1
            except OSError as exc:
                logger.warning("cannot remove leftover %s: %s", entry, exc)
        if removed:
            logger.info("removed %s unfinished backup file(s) from %s", removed, self.partial)
        return removed

    # --- publishing -----------------------------------------------------------------------

    def publish(self, partial: Path, record: BackupRecord) -> BackupRecord:
        """Move a complete, closed ``partial`` file into place with its manifest.

        Order: fsync data → write+fsync manifest in .partial → rename data → rename
        manifest → fsync the database directory. Any failure removes what was placed, so
        a backup without a manifest never stays outside ``.partial/``.
        """
        directory = record.directory
        new_directory = not directory.is_dir()
        _make_private_dir(directory)
        if new_directory:
            # The first backup of a database: its directory's entry in the root must be on
            # disk too, or a power cut can take the whole directory with the backup in it.
            fsync_directory(directory.parent)
        fd = os.open(partial, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
        try:
            os.fchmod(fd, 0o600)  # whatever the umask was when it was created
            os.fsync(fd)
        finally:
            os.close(fd)
        manifest_tmp = self.partial / f"{secrets.token_hex(4)}-{manifest_name(record.file)}"
        final = directory / record.file
        manifest_final = record.manifest_path
        if final.exists() or manifest_final.exists():
            raise FileExistsError(errno.EEXIST, "backup already exists", str(final))
        placed: list[Path] = []
        try:
            _write_file_synced(manifest_tmp, self._manifest_bytes(record))
            os.rename(partial, final)
            placed.append(final)
            os.rename(manifest_tmp, manifest_final)
            placed.append(manifest_final)
            fsync_directory(directory)
        except BaseException:
            for path in reversed(placed):
                with contextlib.suppress(OSError):
                    path.unlink()
            with contextlib.suppress(OSError):
                manifest_tmp.unlink()
            raise
        return record

    def _manifest_bytes(self, record: BackupRecord) -> bytes:
        return (json.dumps(record.to_json(), indent=2, ensure_ascii=False) + "\n").encode()

    def rewrite_manifest(self, record: BackupRecord) -> None:
        """Atomically replace the manifest of an existing backup (upload/verify marks)."""
        temp = record.directory / f".{secrets.token_hex(4)}.manifest.tmp"
        try:
            _write_file_synced(temp, self._manifest_bytes(record))
            os.replace(temp, record.manifest_path)
        except BaseException:
            with contextlib.suppress(OSError):
                temp.unlink()
            raise
        fsync_directory(record.directory)

    def _update_manifest(self, record: BackupRecord, **changes: Any) -> BackupRecord:
        """Change only ``changes`` in the manifest as it is on disk now, not in ``record``:
        the upload, verify and dump jobs each hold a copy read when they started, and a
        rewrite from that copy would undo what another job recorded meanwhile (a verify
        verdict 'damaged' wiped by an upload finishing later)."""
        with _MANIFEST_UPDATES:
            current = self.read_manifest(record.manifest_path)
            base = current if current is not None and current.file == record.file else record
            updated = dataclasses.replace(base, **changes)
            self.rewrite_manifest(updated)
        return updated

    def mark_uploaded(
        self,
        record: BackupRecord,
        destination: str,
        when: datetime | None = None,
        verified: str | None = None,
    ) -> BackupRecord:
        """Record that ``record`` now has a copy at ``destination`` (for the upload step),
        checked as ``verified`` says ("size+md5", ...)."""
        return self._update_manifest(
            record,
            uploaded_to=destination,
            uploaded_at=when or datetime.now(UTC),
            uploaded_verified=verified,
        )

    def mark_verified(
        self,
        record: BackupRecord,
        ok: bool,
        detail: str,
        when: datetime | None = None,
        drill: dict[str, Any] | None = None,
    ) -> BackupRecord:
        changes: dict[str, Any] = {
            "verified": ok,
            "verify_detail": detail,
            "verified_at": when or datetime.now(UTC),
        }
        if drill is not None:
            changes["drill"] = drill
        return self._update_manifest(record, **changes)

    def mark_confirmed(self, record: BackupRecord, when: datetime) -> BackupRecord:
        return self._update_manifest(record, confirmed_at=when)

    # --- reading --------------------------------------------------------------------------

    def database_dirs(self) -> Iterator[Path]:
        if not self.root.is_dir():
            return
        for entry in sorted(self.root.iterdir()):
            if entry.is_dir() and not entry.is_symlink() and not entry.name.startswith("."):
                if entry.name in PITR_DIRS:
                    continue  # the point-in-time archive: no dumps, no manifests of ours
                yield entry

    def list_backups(self, database: str | None = None) -> list[BackupRecord]:
        """Every backup with a readable manifest, oldest first (all databases, or one)."""
        records: list[BackupRecord] = []
        if database is not None:
            candidates = [self.database_dir(database)]
        else:
            candidates = list(self.database_dirs())
        for directory in candidates:
            if not directory.is_dir():
                continue
            for manifest in sorted(directory.glob(f"*{MANIFEST_SUFFIX}")):
                record = self.read_manifest(manifest)
                if record is not None:
                    records.append(record)
        records.sort(key=lambda r: (r.database, r.started))
        return records

    def read_manifest(self, manifest: Path) -> BackupRecord | None:
        try:
            # A FIFO named like a manifest would block the reading job for ever, and JSON
            # nested thousands deep raises RecursionError: neither is a manifest of ours.
            data = json.loads(read_regular_file(manifest)[0])
            if not isinstance(data, dict):
                raise ValueError("not a JSON object")
            return BackupRecord.from_json(data, manifest.parent)
        except (OSError, ValueError, KeyError, TypeError, RecursionError) as exc:
            logger.debug("not a backup manifest %s: %s", manifest, exc)
            return None

    def foreign_files(self) -> list[Path]:
        """Files in database directories that no manifest of ours accounts for."""
        known: set[Path] = set()
        for record in self.list_backups():
            known.add(record.path)
            known.add(record.manifest_path)
        foreign: list[Path] = []
        for directory in self.database_dirs():
            for entry in sorted(directory.iterdir()):
                if entry not in known:
                    foreign.append(entry)
        return foreign

    def delete(self, record: BackupRecord) -> None:
        """Delete a backup: the data file first, then its manifest (a crash in between
        leaves a manifest whose file is missing: not ``good``, and pruned next time)."""
        with contextlib.suppress(FileNotFoundError):
            record.path.unlink()
        with contextlib.suppress(FileNotFoundError):
            record.manifest_path.unlink()
        fsync_directory(record.directory)
        with contextlib.suppress(OSError):
            record.directory.rmdir()  # only succeeds when empty


# Read-modify-write of manifests runs in worker threads (asyncio.to_thread) of one process.
_MANIFEST_UPDATES = threading.Lock()


class CatalogueBusy(JobFailed):
    """Another process holds the catalogue's lock."""


# A held :meth:`Catalogue.lock`; release it (or let the process end).
CatalogueLock = HeldLock


def _why_not_our_dump(pid: int, partial: Path) -> str | None:
    """None when ``pid`` is a pg_dump (or pg_dumpall) we started into ``partial``: run by
    our user, its stdout a file directly in ``partial``; else why it is not."""
    facts = process_facts(pid)
    if facts is None:
        return "its /proc entry cannot be read"
    if facts.program not in ("pg_dump", "pg_dumpall"):
        return f"its program is {facts.exe}, not pg_dump"
    if not facts.uids or any(uid != os.geteuid() for uid in facts.uids):
        return "it runs as another user"
    try:
        stdout = os.readlink(f"/proc/{pid}/fd/1")
    except OSError:
        return "its stdout cannot be read"
    if os.path.dirname(stdout) != os.path.realpath(partial):
        return f"its stdout is {stdout}, not a file in {partial}"
    return None


def writers_into(directory: Path) -> list[int]:
    """PIDs (other than ours) with a file descriptor open on a file below ``directory``."""
    target = os.path.realpath(directory) + os.sep
    found: list[int] = []
    own = os.getpid()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == own:
            continue
        try:
            descriptors = list((entry / "fd").iterdir())
        except OSError:
            continue
        for descriptor in descriptors:
            try:
                link = os.readlink(descriptor)
            except OSError:
                continue
            if link.startswith(target):
                found.append(int(entry.name))
                break
    return found
