"""``laterbased check``: will this setup work? Each check is one small function that
returns OK / WARN / FAIL with a hint, like pgBackRest's ``check`` or a Nagios plugin.

Checks run in order and share what earlier ones learned (:class:`Facts`), so a primary
that cannot be reached yields one FAIL instead of a cascade of confusing ones.
"""

from __future__ import annotations

import asyncio
import errno
import os
import re
import shutil
import socket
import tempfile
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import aiohttp
import asyncpg

from laterbased import proc
from laterbased.config import Config
from laterbased.errors import RefuseToRun, ToolMissing
from laterbased.pg import sql
from laterbased.pg.binaries import (
    DUMP_TOOLS,
    SERVER_TOOLS,
    find_bindir,
    major_from_version_num,
    major_key,
    newer_pg_dump_fix,
    newest_bindir_at_least,
    probe_bindir,
)
from laterbased.pg.connect import PgUnavailable, connect_primary
from laterbased.pg.features import (
    BASEBACKUP_SLOT,
    IMMEDIATELY_RESERVE,
    missing_features,
    supports,
)
from laterbased.pg.replication_probe import ReplicationProbe, find_psql, probe_replication
from laterbased.records import identity
from laterbased.records.catalogue import Catalogue
from laterbased.schedule.cron import period_of
from laterbased.units import format_duration, format_size

Status = Literal["OK", "WARN", "FAIL"]
EXIT_BY_STATUS = {"OK": 0, "WARN": 1, "FAIL": 2}

# Below this much free space in the backup directory (or 3 newest backups) we warn.
MIN_FREE_BYTES = 1024**3
_C_COLLATIONS = {"c", "posix", "c.utf-8", "c.utf8", "ucs_basic"}


@dataclass(frozen=True)
class CheckResult:
    name: str
    status: Status
    message: str
    hint: str = ""


@dataclass
class Facts:
    """What the checks learned so far."""

    config: Config
    reachable: bool = False
    conn: Any | None = None
    version_num: int | None = None
    system_identifier: str | None = None
    probe: ReplicationProbe | None = None
    standby_bindir: Path | None = None
    settings: dict[str, str] = field(default_factory=dict)

    @property
    def major(self) -> str | None:
        return major_from_version_num(self.version_num) if self.version_num else None


def ok(name: str, message: str) -> CheckResult:
    return CheckResult(name, "OK", message)


def warn(name: str, message: str, hint: str = "") -> CheckResult:
    return CheckResult(name, "WARN", message, hint)


def fail(name: str, message: str, hint: str = "") -> CheckResult:
    return CheckResult(name, "FAIL", message, hint)


def exit_code(results: list[CheckResult]) -> int:
    return max((EXIT_BY_STATUS[r.status] for r in results), default=0)


def as_json(results: list[CheckResult]) -> dict[str, Any]:
    worst = max(results, key=lambda r: EXIT_BY_STATUS[r.status]).status if results else "OK"
    return {"status": worst, "checks": [asdict(r) for r in results]}


# --- the primary ---------------------------------------------------------------------------


async def check_primary_reachable(facts: Facts) -> CheckResult:
    primary = facts.config.primary
    where = f"{primary.host}:{primary.port}"
    try:
        async with asyncio.timeout(primary.connect_timeout):
            _reader, writer = await asyncio.open_connection(primary.host, primary.port)
    except TimeoutError:
        return fail(
            "primary reachable",
            f"{where}: no answer in {primary.connect_timeout:g}s",
            "check the address, the network and the server's firewall",
        )
    except OSError as exc:
        reason = os.strerror(exc.errno) if exc.errno else str(exc)
        return fail(
            "primary reachable",
            f"{where}: {reason}",
            "is PostgreSQL running there and listening on the network "
            "(listen_addresses = '*' in postgresql.conf)?",
        )
    writer.close()
    await writer.wait_closed()
    facts.reachable = True
    return ok("primary reachable", f"{where} accepts TCP connections")


async def check_auth(facts: Facts) -> CheckResult:
    primary = facts.config.primary
    try:
        facts.conn = await connect_primary(primary, application_name="laterbased-check")
    except PgUnavailable as exc:
        hint = (
            "fix primary.password (REPL_PASSWORD) or primary.user; a missing pg_hba line for "
            "ordinary connections shows up here too"
            if exc.reason == "auth"
            else "see the message; laterbased prepare-primary sets the server up"
        )
        return fail("authentication", str(exc), hint)
    conn = facts.conn
    facts.version_num = int(await conn.fetchval(sql.SERVER_VERSION_NUM))
    if facts.version_num >= 90600:
        facts.system_identifier = str(await conn.fetchval(sql.SYSTEM_IDENTIFIER))
    rows = await conn.fetch("SELECT name, setting FROM pg_settings")
    facts.settings = {row["name"]: row["setting"] for row in rows}
    return ok("authentication", f"logged in as {primary.user} (PostgreSQL {facts.major})")


async def check_server_features(facts: Facts) -> CheckResult | None:
    """Name what an old primary (Resolve 17 and older ship 9.5) lacks, and the fallback."""
    major = facts.major
    if major is None:
        return None
    missing = missing_features(major)
    if not missing:
        return ok("server features", f"PostgreSQL {major} has every feature laterbased uses")
    lines = "; ".join(f"no {feature.name}: {feature.without}" for feature in missing)
    if any(not supports(major, feature) for feature in (BASEBACKUP_SLOT, IMMEDIATELY_RESERVE)):
        return warn(
            "server features",
            f"PostgreSQL {major} lacks what laterbased uses from 9.6 and 13 on: {lines}",
            "see docs/setup.md 'Resolve 17 and older'; upgrading to Resolve 18 or newer "
            "(PostgreSQL 13) removes every one of these limits",
        )
    return ok("server features", f"PostgreSQL {major}: {lines}")


async def check_replication_privilege(facts: Facts) -> CheckResult | None:
    if facts.conn is None:
        return None
    row = await facts.conn.fetchrow(
        "SELECT rolreplication, rolsuper FROM pg_roles WHERE rolname = current_user"
    )
    user = facts.config.primary.user
    if row["rolreplication"] or row["rolsuper"]:
        return ok("replication privilege", f"{user} may replicate")
    return fail(
        "replication privilege",
        f"{user} lacks the REPLICATION attribute",
        f"ALTER ROLE {user} WITH REPLICATION; (or run laterbased prepare-primary)",
    )


async def check_pg_hba_replication(facts: Facts) -> CheckResult | None:
    if not facts.reachable:
        return None
    primary = facts.config.primary
    psql = find_psql([facts.config.standby.bin_dir, facts.config.backup.bin_dir])
    facts.probe = probe = await probe_replication(
        host=primary.host or "localhost",
        port=primary.port,
        user=primary.user,
        password=primary.password.reveal() if primary.password else None,
        sslmode=primary.sslmode,
        timeout=primary.connect_timeout,
        psql=psql,
    )
    if probe.ok:
        if facts.system_identifier is None:
            facts.system_identifier = probe.system_identifier
        return ok("pg_hba replication", probe.message)
    hints = {
        "hba": "pg_hba.conf has no 'replication' line for this host and user: run "
        "laterbased prepare-primary, which prints the exact line",
        "auth": "the server rejected the password for the replication connection",
        "privilege": "the user lacks REPLICATION",
        "no-psql": "apt-get install postgresql-client",
    }
    status: Status = "WARN" if probe.reason == "no-psql" else "FAIL"
    return CheckResult("pg_hba replication", status, probe.message, hints.get(probe.reason, ""))


async def check_wal_level(facts: Facts) -> CheckResult | None:
    if not facts.settings:
        return None
    level = facts.settings.get("wal_level", "?")
    senders = int(facts.settings.get("max_wal_senders", "0"))
    if level not in ("replica", "logical", "hot_standby"):
        return fail(
            "wal_level",
            f"wal_level = {level}: too little WAL for a standby",
            "ALTER SYSTEM SET wal_level = 'replica'; then restart PostgreSQL",
        )
    if senders < 2:
        return fail(
            "wal_level",
            f"max_wal_senders = {senders}: a standby and its base backup need 2",
            "ALTER SYSTEM SET max_wal_senders = 10; then restart PostgreSQL",
        )
    return ok("wal_level", f"wal_level = {level}, max_wal_senders = {senders}")


async def check_slot(facts: Facts) -> CheckResult | None:
    config = facts.config
    if facts.conn is None or not config.standby.enabled:
        return None
    name = config.standby.slot_name
    query = (
        sql.REPLICATION_SLOT if (facts.version_num or 0) >= 130000 else sql.REPLICATION_SLOT_PRE13
    )
    row = await facts.conn.fetchrow(query, name)
    label = f"slot {name}"
    if row is None:
        if (config.standby_data_dir / "PG_VERSION").exists():
            return fail(
                label,
                "missing on the primary, but the standby is already cloned: it "
                "cannot stream, and WAL it needs may be gone",
                "run laterbased prepare-primary to recreate it; if the standby then "
                "reports missing WAL, re-clone it",
            )
        return warn(
            label,
            "missing on the primary; the standby bootstrap creates it",
            "laterbased prepare-primary creates it now (WAL reserved immediately)",
        )
    if row["slot_type"] != "physical":
        return fail(
            label, f"is a {row['slot_type']} slot, not physical", "choose another standby.slot_name"
        )
    retained = row["retained_wal_bytes"]
    held = f"retains {format_size(int(retained))} of WAL" if retained is not None else "no WAL"
    wal_status = row["wal_status"]
    if wal_status == "lost":
        return fail(
            label,
            f"wal_status = lost: the WAL the standby needs is gone ({held})",
            "the standby must be re-cloned (standby.reclone_on_mismatch or remove its "
            "data directory)",
        )
    if not row["active"]:
        limit = config.monitor.slot_retained_warn_bytes
        big = retained is not None and int(retained) >= limit
        return warn(
            label,
            f"inactive: no standby is streaming from it; {held}"
            + (f" (over {format_size(limit)})" if big else ""),
            "start laterbased (the standby); an abandoned slot keeps WAL until the "
            "primary's disk fills: drop it with SELECT pg_drop_replication_slot("
            f"'{name}') if the standby is retired",
        )
    if wal_status == "unreserved":
        return warn(
            label,
            f"active but wal_status = unreserved ({held}): the standby is about "
            "to lose WAL it needs",
            "check the standby's lag and the network",
        )
    status_text = f", wal_status = {wal_status}" if wal_status else ""
    return ok(label, f"active{status_text}, {held}")


async def check_wal_cap(facts: Facts) -> CheckResult | None:
    """Whether the WAL the standby's slot may keep on the primary is bounded (13+)."""
    if not facts.settings or not facts.config.standby.enabled:
        return None
    if (facts.version_num or 0) < 130000:
        return None  # nothing to set: check_server_features names what 9.5-12 lack
    setting = facts.settings.get("max_slot_wal_keep_size", "-1")
    if int(setting) < 0:
        return warn(
            "max_slot_wal_keep_size",
            "-1 (unlimited): a standby that stays away keeps WAL on the primary until its "
            "disk is full",
            "laterbased prepare-primary sets it (10GB), or on the primary: ALTER SYSTEM SET "
            "max_slot_wal_keep_size = '10GB'; SELECT pg_reload_conf();",
        )
    return ok(
        "max_slot_wal_keep_size",
        f"{format_size(int(setting) * 1024 * 1024)}: the slot keeps at most that much WAL",
    )


async def check_binaries(facts: Facts) -> list[CheckResult]:
    major = facts.major
    config = facts.config
    if major is None:
        return []
    results: list[CheckResult] = []
    if config.standby.enabled:
        try:
            facts.standby_bindir = await asyncio.to_thread(
                find_bindir, major, config.standby.bin_dir, tools=SERVER_TOOLS
            )
            results.append(ok("standby binaries", f"PostgreSQL {major} in {facts.standby_bindir}"))
        except ToolMissing as exc:
            results.append(fail("standby binaries", str(exc)))
    if config.backup.enabled:
        try:
            bindir = await asyncio.to_thread(
                find_bindir,
                major,
                config.backup.bin_dir,
                tools=DUMP_TOOLS,
                config_key="backup.bin_dir",
            )
            results.append(ok("pg_dump", f"pg_dump {major} in {bindir}"))
        except ToolMissing as exact:
            configured = config.backup.bin_dir
            try:
                if configured is not None:
                    # A configured newer pg_dump is used (dump_bindir), an older one refused.
                    found = await asyncio.to_thread(probe_bindir, configured, DUMP_TOOLS)
                    if found is None or major_key(found) < major_key(major):
                        raise exact
                    bindir = configured
                else:
                    bindir, found = await asyncio.to_thread(newest_bindir_at_least, major)
            except ToolMissing as exc:
                results.append(fail("pg_dump", str(exc)))
            else:
                results.append(
                    warn(
                        "pg_dump",
                        f"no pg_dump {major} {'set' if configured else 'installed'}; "
                        f"pg_dump {found} from {bindir} will be used: its backups are not "
                        f"readable by Resolve's own restore (pg_restore {major})",
                        newer_pg_dump_fix(major),
                    )
                )
    return results


async def check_primary_identity(facts: Facts) -> CheckResult | None:
    """The primary against the cluster laterbased accepted (read only: a check records
    nothing; the daemon does at first contact)."""
    if facts.system_identifier is None:
        return None
    try:
        accepted = await asyncio.to_thread(identity.load_accepted, facts.config.state_dir)
    except RefuseToRun as exc:
        return fail("primary identity", str(exc))
    observed = facts.system_identifier
    if accepted is None:
        return ok(
            "primary identity",
            f"system identifier {observed}; not recorded yet (laterbased records the cluster "
            "it meets first)",
        )
    if accepted.system_identifier != observed:
        return fail(
            "primary identity",
            f"another cluster answers at {identity.primary_address(facts.config)}: system "
            f"identifier {observed}, accepted {accepted.system_identifier} ({accepted.how}); "
            "no backups of it and no slot on it",
            f"if it is the new primary: {identity.ACCEPT_COMMAND} {observed}",
        )
    return ok("primary identity", f"the accepted cluster ({observed})")


async def check_standby_identity(facts: Facts) -> CheckResult | None:
    config = facts.config
    if not config.standby.enabled:
        return None
    data_dir = config.standby_data_dir
    if not (data_dir / "global" / "pg_control").exists():
        return ok("standby identity", f"{data_dir} not cloned yet; the first start clones it")
    controldata = None
    for bindir in (facts.standby_bindir, config.standby.bin_dir):
        if bindir is not None and os.access(bindir / "pg_controldata", os.X_OK):
            controldata = bindir / "pg_controldata"
            break
    if controldata is None:
        found = shutil.which("pg_controldata")
        controldata = Path(found) if found else None
    if controldata is None:
        return warn(
            "standby identity",
            "cannot read the standby's system identifier: no pg_controldata",
            "install the standby's PostgreSQL server package",
        )
    result = await proc.run(
        [str(controldata), str(data_dir)],
        env=proc.child_environment({"LC_ALL": "C"}),
        capture_stdout=True,
        log_name="pg_controldata",
        timeout=30,
    )
    text = result.stdout.decode("utf-8", errors="replace")
    match = re.search(r"Database system identifier:\s+(\d+)", text)
    if result.returncode != 0 or match is None:
        return warn(
            "standby identity",
            f"pg_controldata {data_dir} failed: {' '.join(result.stderr_tail)[:300]}",
        )
    local = match.group(1)
    if facts.system_identifier is None:
        return warn(
            "standby identity",
            f"standby system identifier {local}; the primary's is unknown (not connected)",
        )
    if local != facts.system_identifier:
        return fail(
            "standby identity",
            f"{data_dir} belongs to another cluster (system "
            f"identifier {local}, primary {facts.system_identifier})",
            "laterbased refuses to start it; move it aside or set "
            "standby.reclone_on_mismatch: true",
        )
    return ok("standby identity", f"{data_dir} is a clone of this primary ({local})")


def _platform(version: str) -> str:
    lowered = version.lower()
    if "apple" in lowered or "darwin" in lowered:
        return "macOS"
    if "windows" in lowered or "visual c++" in lowered or "mingw" in lowered:
        return "Windows"
    if "linux" in lowered:
        return "Linux"
    return "unknown"


async def check_collation(facts: Facts) -> CheckResult | None:
    conn = facts.conn
    if conn is None:
        return None
    version = str(await conn.fetchval("SELECT version()"))
    platform = _platform(version)
    newer = (facts.version_num or 0) >= 150000
    provider = "datlocprovider" if newer else "'c'::\"char\""
    collversion = "datcollversion" if newer else "NULL::text"
    rows = await conn.fetch(
        f"SELECT datname, datcollate, {provider} AS provider, {collversion} AS collversion "  # noqa: S608
        "FROM pg_database WHERE datallowconn AND NOT datistemplate"
    )
    collations = sorted({str(r["datcollate"]) for r in rows})
    providers = sorted({"icu" if str(r["provider"]) == "i" else "libc" for r in rows})
    described = f"{platform} primary, collation {', '.join(collations)} ({'/'.join(providers)})"
    text_sensitive = [c for c in collations if c.lower() not in _C_COLLATIONS]
    if not text_sensitive or providers == ["icu"]:
        return ok("collation", described)
    if platform != "Linux":
        return warn(
            "collation",
            f"{described}: this Linux standby's C library sorts text differently, so "
            "indexes on text columns built on the primary can give wrong answers on the "
            "standby and after a promote",
            "after promoting, REINDEX DATABASE each Resolve database before use; pg_dump "
            "backups are not affected (restore rebuilds indexes)",
        )
    local = os.confstr("CS_GNU_LIBC_VERSION") if hasattr(os, "confstr") else None
    local_version = (local or "").split()[-1] if local else None
    versions = sorted({str(r["collversion"]) for r in rows if r["collversion"]})
    if local_version and versions and versions != [local_version]:
        return warn(
            "collation",
            f"{described}: the primary's collation version {', '.join(versions)} differs from "
            f"this machine's glibc {local_version}; text sort order may differ",
            "after promoting, REINDEX DATABASE each Resolve database",
        )
    return ok("collation", described)


async def check_linux_settings(facts: Facts) -> CheckResult | None:
    """Settings a clone copies from the primary's postgresql.conf that would stop it here."""
    if not facts.settings or not facts.config.standby.enabled:
        return None
    problems: list[str] = []
    notes: list[str] = []
    settings = facts.settings
    dsm = settings.get("dynamic_shared_memory_type", "posix")
    if dsm != "posix":
        notes.append(f"dynamic_shared_memory_type={dsm} (the standby runs with posix)")
    if settings.get("huge_pages") == "on":
        problems.append(
            "huge_pages = on: PostgreSQL will not start here unless huge pages "
            "are configured (set huge_pages = try on the primary)"
        )
    libraries = [
        lib.strip().strip('"')
        for lib in settings.get("shared_preload_libraries", "").split(",")
        if lib.strip()
    ]
    if libraries and facts.standby_bindir is not None:
        libdir = facts.standby_bindir.parent / "lib"
        missing = [
            lib for lib in libraries if not (libdir / f"{lib.removeprefix('$libdir/')}.so").exists()
        ]
        if missing:
            problems.append(
                f"shared_preload_libraries {', '.join(missing)} not installed in "
                f"{libdir}: the standby will not start"
            )
    if problems:
        return fail(
            "settings for Linux",
            "; ".join(problems),
            "install the extension packages here, or change the primary's setting",
        )
    detail = "; ".join(notes) if notes else "nothing that stops a Linux standby"
    return ok("settings for Linux", detail)


# --- this machine --------------------------------------------------------------------------


def _probe_writable(directory: Path) -> str | None:
    """None when a file can be created in ``directory`` (or its nearest existing parent)."""
    target = directory
    while not target.exists():
        if target.parent == target:
            return f"no existing parent of {directory}"
        target = target.parent
    if not target.is_dir():
        return f"{target} is not a directory"
    try:
        with tempfile.NamedTemporaryFile(dir=target, prefix=".laterbased-check-"):
            pass
    except OSError as exc:
        return f"cannot create a file in {target}: {exc.strerror or exc}"
    return None


async def check_backup_dir(facts: Facts) -> CheckResult | None:
    config = facts.config
    if not config.backup.enabled:
        return None
    directory = config.backup_directory
    problem = await asyncio.to_thread(_probe_writable, directory)
    if problem is not None:
        return fail(
            "backup directory",
            problem,
            "fix backup.directory (LOCAL_BACKUP_PATH) or its permissions/mount",
        )
    existing = directory if directory.exists() else None
    probe_at = existing or next(p for p in directory.parents if p.exists())
    usage = await asyncio.to_thread(shutil.disk_usage, probe_at)
    catalogue = Catalogue(directory)
    records = await asyncio.to_thread(catalogue.list_backups) if existing else []
    newest_sizes = sorted((r.size for r in records), reverse=True)[:3]
    wanted = max(MIN_FREE_BYTES, sum(newest_sizes))
    where = f"{directory}" + ("" if existing else " (will be created)")
    if usage.free < wanted:
        return warn(
            "backup directory",
            f"{where}: only {format_size(usage.free)} free",
            f"keep at least {format_size(wanted)} free; lower retention or add space",
        )
    return ok("backup directory", f"{where} writable, {format_size(usage.free)} free")


async def check_newest_backup(facts: Facts) -> CheckResult | None:
    config = facts.config
    if not config.backup.enabled or not config.backup_directory.is_dir():
        return (
            None
            if not config.backup.enabled
            else warn("newest backup", "no backups yet", "laterbased backup-now makes one")
        )
    records = await asyncio.to_thread(Catalogue(config.backup_directory).list_backups)
    now = datetime.now(UTC)
    # A backup dated in the future (a clock that ran fast) is not a fresh one.
    good = [r for r in records if r.good and not r.is_globals and not r.from_the_future(now)]
    if not good:
        return warn("newest backup", "no backups yet", "laterbased backup-now makes one")
    newest: dict[str, datetime] = {}
    for record in good:
        newest[record.database] = max(
            newest.get(record.database, record.fresh_until(now)), record.fresh_until(now)
        )
    limit = config.backup.stale_after
    if limit is None:
        limit = 2 * period_of(config.backup.schedule, config.zone, now).total_seconds()
    stale = {db: when for db, when in newest.items() if (now - when).total_seconds() > limit}
    oldest_db = min(newest, key=lambda db: newest[db])
    age = format_duration((now - newest[oldest_db]).total_seconds())
    if stale:
        names = ", ".join(sorted(stale))
        return warn(
            "newest backup",
            f"stale for {names}: newest is {age} old (limit {format_duration(limit)})",
            "see the daemon's log and /status for failed backup runs",
        )
    return ok("newest backup", f"{len(newest)} database(s), oldest newest backup {age} old")


async def check_rclone(facts: Facts) -> CheckResult | None:
    if not facts.config.upload.enabled:
        return None
    # Imported here: only a configured upload needs the rclone layer.
    from laterbased.offsite.rclone import probe_remote

    reachable, message = await probe_remote(facts.config)
    if reachable:
        return ok("rclone remote", message)
    return fail(
        "rclone remote",
        message,
        "check the remote's definition (rclone config / RCLONE_REMOTE_<N>_*), "
        "credentials and network",
    )


async def _laterbased_uptime(host: str, port: int) -> float | None:
    """Uptime reported by a laterbased answering ``/liveness`` there, else None."""
    if host in {"", "0.0.0.0", "*"}:  # noqa: S104 - we connect, not bind
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    url = f"http://[{host}]:{port}/liveness" if ":" in host else f"http://{host}:{port}/liveness"
    timeout = aiohttp.ClientTimeout(total=3)
    try:
        async with (
            aiohttp.ClientSession(timeout=timeout) as session,
            session.get(url) as response,
        ):
            body = await response.json(content_type=None)
    except (aiohttp.ClientError, TimeoutError, ValueError):
        return None
    if response.status != 200 or not isinstance(body, dict) or body.get("status") != "alive":
        return None
    uptime = body.get("uptime_seconds")
    return float(uptime) if isinstance(uptime, int | float) else None


async def check_http_port(facts: Facts) -> CheckResult | None:
    http = facts.config.http
    if not http.enabled:
        return None
    where = f"{http.host}:{http.port}"
    family = socket.AF_INET6 if ":" in http.host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((http.host, http.port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                uptime = await _laterbased_uptime(http.host, http.port)
                if uptime is not None:
                    # The daemon we are checking: a cron/Nagios run of `check` next to a
                    # healthy daemon must not warn forever.
                    return ok(
                        "http port",
                        f"{where} is served by a running laterbased "
                        f"(up {format_duration(uptime)})",
                    )
                return warn(
                    "http port",
                    f"{where} is in use by another program (not a laterbased)",
                    "stop the other program or change http.port",
                )
            return fail(
                "http port",
                f"cannot listen on {where}: {exc.strerror or exc}",
                "fix http.host / http.port",
            )
    return ok("http port", f"{where} is free")


Check = Callable[[Facts], Awaitable[CheckResult | list[CheckResult] | None]]

CHECKS: tuple[Check, ...] = (
    check_primary_reachable,
    check_auth,
    check_server_features,
    check_replication_privilege,
    check_pg_hba_replication,
    check_primary_identity,
    check_wal_level,
    check_slot,
    check_wal_cap,
    check_binaries,
    check_standby_identity,
    check_collation,
    check_linux_settings,
    check_backup_dir,
    check_newest_backup,
    check_rclone,
    check_http_port,
)


async def run_checks(config: Config) -> list[CheckResult]:
    """Every check, in order; a check that cannot apply (disabled part, no connection)
    is left out. An unexpected error in one check becomes its FAIL line."""
    facts = Facts(config=config)
    results: list[CheckResult] = [ok("configuration", "valid")]
    try:
        for check in CHECKS:
            if (
                check is not check_primary_reachable
                and not facts.reachable
                and check
                in (
                    check_auth,
                    check_replication_privilege,
                    check_wal_level,
                    check_slot,
                    check_collation,
                    check_linux_settings,
                )
            ):
                continue
            try:
                outcome = await check(facts)
            except PgUnavailable as exc:
                outcome = fail(_check_name(check), str(exc))
            except (OSError, ValueError, ToolMissing, asyncpg.PostgresError) as exc:
                outcome = fail(_check_name(check), f"check failed: {exc}")
            if outcome is None:
                continue
            results.extend(outcome if isinstance(outcome, list) else [outcome])
    finally:
        if facts.conn is not None:
            await facts.conn.close()
    return results


def _check_name(check: Check) -> str:
    return getattr(check, "__name__", "check").removeprefix("check_").replace("_", " ")
