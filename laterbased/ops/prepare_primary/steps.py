"""Preparing the Resolve primary for a standby: role, slot, settings, pg_hba, proof.

Every step is idempotent and reports what it found or did as a :class:`Step`; with
``dry_run`` nothing on the server changes (no role, no slot, no ALTER SYSTEM, no reload).
The last step opens a real replication connection, so "ready" means a standby can connect.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from laterbased.config import Config
from laterbased.errors import RefuseToRun
from laterbased.pg import sql
from laterbased.pg.binaries import major_from_version_num
from laterbased.pg.connect import PgUnavailable, connect_primary
from laterbased.pg.replication_probe import ReplicationProbe, probe_replication
from laterbased.pg.role_password import password_verifier
from laterbased.pg.slot import ensure_physical_slot

logger = logging.getLogger(__name__)

StepStatus = Literal["ok", "changed", "would-change", "warn", "missing"]

RESTART_HINT = (
    "then restart PostgreSQL (on a Resolve server: quit Resolve on every client, then restart "
    "the PostgreSQL service, or reboot the server)"
)
# pg_hba is re-read by the postmaster asynchronously after pg_reload_conf().
HBA_RELOAD_WAIT = 3.0
# A replication slot plus a concurrent pg_basebackup (which streams WAL over a second
# walsender) need two WAL senders of their own.
WAL_SENDERS_NEEDED = 2
DEFAULT_MAX_SLOT_WAL_KEEP_SIZE = "10GB"


@dataclass(frozen=True)
class Step:
    """One line of the checklist."""

    name: str
    status: StepStatus
    message: str
    hint: str = ""


@dataclass(frozen=True)
class SetupOptions:
    admin_user: str
    admin_password: str | None
    role: str
    role_password: str | None
    separate_role: bool = False
    reset_password: bool = False
    apply: bool = False
    dry_run: bool = False
    max_slot_wal_keep_size: str = DEFAULT_MAX_SLOT_WAL_KEEP_SIZE
    # Bound the WAL the slot may hold (max_slot_wal_keep_size, 13+) when it is unlimited:
    # an abandoned slot would otherwise fill the Resolve server's disk. --no-wal-cap: False.
    wal_cap: bool = True
    psql: Path | None = None


@dataclass
class SetupReport:
    server: str
    steps: list[Step] = field(default_factory=list)
    hba_line: str | None = None
    hba_file: str | None = None

    @property
    def missing(self) -> list[Step]:
        return [step for step in self.steps if step.status == "missing"]

    @property
    def ready(self) -> bool:
        return not self.missing

    def add(self, name: str, status: StepStatus, message: str, hint: str = "") -> None:
        step = Step(name, status, message, hint)
        self.steps.append(step)
        # The checklist is the command's output; the log keeps what changed on the server.
        level = logging.INFO if status == "changed" else logging.DEBUG
        logger.log(level, "prepare-primary step=%s status=%s %s", name, status, message)

    def as_dict(self) -> dict[str, Any]:
        return {
            "server": self.server,
            "ready": self.ready,
            "missing": [step.name for step in self.missing],
            "pg_hba_line": self.hba_line,
            "hba_file": self.hba_file,
            "steps": [asdict(step) for step in self.steps],
        }


def quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def quote_literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def hba_auth_method(password_encryption: str) -> str:
    """The pg_hba method that matches how passwords are stored: scram-sha-256 when the
    server stores SCRAM verifiers, else md5 (which also accepts SCRAM-stored passwords)."""
    return "scram-sha-256" if password_encryption.lower() == "scram-sha-256" else "md5"


def hba_line_for(role: str, client_addr: str | None, method: str) -> str:
    """The pg_hba.conf line admitting physical replication for ``role`` from our address."""
    user = role if role.replace("_", "").isalnum() and role.islower() else quote_ident(role)
    if client_addr is None:
        return f"local   replication   {user}   {method}"
    address = ipaddress.ip_address(client_addr)
    prefix = 32 if address.version == 4 else 128
    return f"host    replication    {user}    {address}/{prefix}    {method}"


async def prepare_primary(config: Config, options: SetupOptions) -> SetupReport:
    """Run every step against the primary in ``config``; never raises for a missing piece,
    it becomes a ``missing`` step."""
    primary = config.primary
    host = primary.host or "localhost"
    report = SetupReport(server=f"{host}:{primary.port}")
    try:
        conn = await connect_primary(
            primary,
            application_name="laterbased-prepare-primary",
            user=options.admin_user,
            password=options.admin_password,
        )
    except PgUnavailable as exc:
        hint = (
            "give the admin password with --password-file, PGPASSWORD, or type it when asked"
            if exc.reason == "auth"
            else "is the server running and listening on this address (listen_addresses)?"
        )
        report.add("connect", "missing", str(exc), hint)
        return report
    try:
        await _run_steps(conn, config, options, report)
    finally:
        await conn.close()
    await _test_replication(config, options, report)
    return report


async def _run_steps(conn: Any, config: Config, options: SetupOptions, report: SetupReport) -> None:
    version_num = int(await conn.fetchval(sql.SERVER_VERSION_NUM))
    major = major_from_version_num(version_num)
    is_super = bool(
        await conn.fetchval("SELECT rolsuper FROM pg_roles WHERE rolname = current_user")
    )
    report.add(
        "connect",
        "ok" if is_super else "warn",
        f"connected as {options.admin_user} to PostgreSQL {major}"
        + ("" if is_super else " (not a superuser: some steps may be refused)"),
        "" if is_super else "run as the 'postgres' superuser (--admin-user postgres)",
    )
    settings = await _settings(conn)
    await _ensure_role(conn, options, settings, report)
    await _ensure_read_access(conn, config, options, version_num, report)
    _check_restart_settings(settings, report, await _slot_usage(conn, config))
    # The cap first, so the slot is bounded from the moment it exists.
    await _keep_size(conn, options, version_num, settings, report)
    await _ensure_slot(conn, config, options, settings, report)
    await _hba(conn, options, settings, report)
    if options.dry_run:
        report.add("reload", "would-change", "would run pg_reload_conf()")
    else:
        await conn.fetchval("SELECT pg_reload_conf()")
        report.add("reload", "ok", "pg_reload_conf(): the server re-read its configuration")


async def _settings(conn: Any) -> dict[str, Any]:
    rows = await conn.fetch(
        "SELECT name, setting, unit, pending_restart FROM pg_settings WHERE name = ANY($1)",
        [
            "wal_level",
            "max_wal_senders",
            "max_replication_slots",
            "hot_standby",
            "max_slot_wal_keep_size",
            "password_encryption",
            "hba_file",
        ],
    )
    return {row["name"]: row for row in rows}


async def _ensure_role(
    conn: Any, options: SetupOptions, settings: dict[str, Any], report: SetupReport
) -> None:
    role = options.role
    row = await conn.fetchrow(
        "SELECT rolcanlogin, rolreplication, rolsuper FROM pg_roles WHERE rolname = $1", role
    )
    encryption = (
        str(settings["password_encryption"]["setting"])
        if "password_encryption" in settings
        else "md5"
    )
    if row is None:
        if options.role_password is None:
            report.add(
                "role",
                "missing",
                f"role {role} does not exist and no password was given for it",
                "give its password with --role-password-file (or type it when asked)",
            )
            return
        if options.dry_run:
            report.add("role", "would-change", f"would create role {role} WITH LOGIN REPLICATION")
            return
        verifier = password_verifier(options.role_password, role, encryption)
        try:
            await conn.execute(
                f"CREATE ROLE {quote_ident(role)} WITH LOGIN REPLICATION "
                f"PASSWORD {quote_literal(verifier)}"
            )
        except Exception as exc:  # noqa: BLE001 - any refusal is reported, not raised
            report.add(
                "role",
                "missing",
                f"cannot create role {role}: {exc}",
                "run prepare-primary as a superuser",
            )
            return
        report.add("role", "changed", f"created role {role} WITH LOGIN REPLICATION")
        return
    needed = [
        attr
        for attr, have in (("LOGIN", row["rolcanlogin"]), ("REPLICATION", row["rolreplication"]))
        if not have
    ]
    set_password = options.reset_password and options.role_password is not None
    if not needed and not set_password:
        report.add("role", "ok", f"role {role} exists with LOGIN and REPLICATION")
        return
    what = " ".join(needed) + (" and a new password" if set_password else "")
    if options.dry_run:
        report.add("role", "would-change", f"would give role {role} {what.strip()}")
        return
    clause = " ".join(needed)
    if set_password:
        assert options.role_password is not None  # noqa: S101 - checked above
        verifier = password_verifier(options.role_password, role, encryption)
        clause += f" PASSWORD {quote_literal(verifier)}"
    try:
        await conn.execute(f"ALTER ROLE {quote_ident(role)} WITH {clause}")
    except Exception as exc:  # noqa: BLE001
        report.add(
            "role",
            "missing",
            f"cannot alter role {role}: {exc}",
            "run prepare-primary as a superuser",
        )
        return
    report.add("role", "changed", f"gave role {role} {what.strip()}")


async def _ensure_read_access(
    conn: Any, config: Config, options: SetupOptions, version_num: int, report: SetupReport
) -> None:
    """pg_dump as a non-superuser role needs to read every table of the Resolve databases."""
    row = await conn.fetchrow("SELECT rolsuper FROM pg_roles WHERE rolname = $1", options.role)
    if row is None or row["rolsuper"]:
        return
    if version_num < 140000:
        await _grant_read_per_database(conn, config, options, report)
        return
    member = await conn.fetchval(
        "SELECT pg_has_role($1, 'pg_read_all_data', 'MEMBER')", options.role
    )
    if member:
        report.add("backup access", "ok", f"{options.role} can read all data (pg_read_all_data)")
    elif options.dry_run:
        report.add(
            "backup access",
            "would-change",
            f"would GRANT pg_read_all_data TO {options.role} (for pg_dump)",
        )
    else:
        await conn.execute(f"GRANT pg_read_all_data TO {quote_ident(options.role)}")
        report.add(
            "backup access", "changed", f"granted pg_read_all_data to {options.role} (for pg_dump)"
        )
    # pg_read_all_data does not cover large objects: pg_dump would stop at the first one.
    await _grant_read_per_database(conn, config, options, report, tables=False)


# What pg_dump as a non-superuser needs in each schema of a library, before PostgreSQL 14
# (no pg_read_all_data): USAGE on the schema, SELECT on every table and sequence, and the same
# by default on what the tables' owners create later (Resolve adds tables on upgrades).
# Columns: schema, owner roles of its tables/sequences, and what the role still lacks.
MISSING_READ_ACCESS = """
SELECT n.nspname AS schema,
       NOT has_schema_privilege($1, n.oid, 'USAGE') AS lacks_usage,
       count(c.oid) FILTER (
           WHERE c.relkind IN ('r', 'p', 'v', 'm', 'f')
             AND NOT has_table_privilege($1, c.oid, 'SELECT')) AS tables_unreadable,
       count(c.oid) FILTER (
           WHERE c.relkind = 'S' AND NOT has_sequence_privilege($1, c.oid, 'SELECT'))
           AS sequences_unreadable,
       array_remove(array_agg(DISTINCT pg_get_userbyid(c.relowner)), NULL) AS owners
FROM pg_namespace n
LEFT JOIN pg_class c ON c.relnamespace = n.oid AND c.relkind IN ('r', 'p', 'v', 'm', 'f', 'S')
WHERE n.nspname NOT LIKE 'pg\\_%' AND n.nspname <> 'information_schema'
GROUP BY n.oid, n.nspname
ORDER BY n.nspname
"""
# Default privileges already given to $1 for tables created by $2 in schema $3.
HAS_DEFAULT_READ = """
SELECT EXISTS (
    SELECT 1 FROM pg_default_acl d
    JOIN pg_namespace n ON n.oid = d.defaclnamespace
    CROSS JOIN LATERAL aclexplode(d.defaclacl) a
    WHERE d.defaclrole = (SELECT oid FROM pg_roles WHERE rolname = $2)
      AND n.nspname = $3 AND d.defaclobjtype = 'r'
      AND a.grantee = (SELECT oid FROM pg_roles WHERE rolname = $1)
      AND a.privilege_type = 'SELECT')
"""
# has_largeobject_privilege() is PostgreSQL 17+: read the ACLs (superusers were ruled out).
UNREADABLE_LARGE_OBJECTS = """
SELECT count(*) FROM pg_largeobject_metadata m
WHERE m.lomowner <> (SELECT oid FROM pg_roles WHERE rolname = $1)
  AND NOT EXISTS (
      SELECT 1 FROM aclexplode(m.lomacl) a
      WHERE a.grantee IN ((SELECT oid FROM pg_roles WHERE rolname = $1), 0)
        AND a.privilege_type = 'SELECT')
"""


async def _libraries(conn: Any, config: Config, options: SetupOptions) -> list[str]:
    """The configured databases, else every database with Resolve's SM_Project table."""
    if config.backup.databases:
        return list(config.backup.databases)
    names = [row["datname"] for row in await conn.fetch(sql.CONNECTABLE_DATABASES)]
    found = []
    for name in names:
        try:
            other = await _connect_admin(config, options, name)
        except PgUnavailable:
            continue
        try:
            if await other.fetchval(sql.IS_RESOLVE_DATABASE):
                found.append(name)
        finally:
            await other.close()
    return found


async def _connect_admin(config: Config, options: SetupOptions, database: str) -> Any:
    return await connect_primary(
        config.primary,
        application_name="laterbased-prepare-primary",
        user=options.admin_user,
        password=options.admin_password,
        database=database,
    )


async def _grant_read_per_database(
    conn: Any, config: Config, options: SetupOptions, report: SetupReport, *, tables: bool = True
) -> None:
    """Give the role read access inside each Resolve library: on PostgreSQL < 14 (``tables``)
    schema USAGE, SELECT on tables and sequences, default privileges for what their owners
    add later; on every major SELECT on the large objects, which no predefined role and no
    default privilege covers (step "large objects" when ``tables`` is off)."""
    role = quote_ident(options.role)
    step = "backup access" if tables else "large objects"
    libraries = await _libraries(conn, config, options)
    if not libraries and not tables:
        return
    if not libraries:
        report.add(
            "backup access",
            "warn",
            f"{options.role} is not a superuser and PostgreSQL < 14 has no pg_read_all_data; "
            "no Resolve library was found to grant it read access in",
            "run prepare-primary again once the libraries exist, or keep primary.user = postgres",
        )
        return
    changed: list[str] = []
    problems: list[str] = []
    for library in libraries:
        try:
            db = await _connect_admin(config, options, library)
        except PgUnavailable as exc:
            problems.append(f"{library}: {exc}")
            continue
        try:
            statements: list[str] = []
            for row in await db.fetch(MISSING_READ_ACCESS, options.role) if tables else []:
                schema = quote_ident(row["schema"])
                if row["lacks_usage"]:
                    statements.append(f"GRANT USAGE ON SCHEMA {schema} TO {role}")
                if row["tables_unreadable"]:
                    statements.append(f"GRANT SELECT ON ALL TABLES IN SCHEMA {schema} TO {role}")
                if row["sequences_unreadable"]:
                    statements.append(
                        f"GRANT SELECT ON ALL SEQUENCES IN SCHEMA {schema} TO {role}"
                    )
                for owner in row["owners"]:
                    if owner == options.role or await db.fetchval(
                        HAS_DEFAULT_READ, options.role, owner, row["schema"]
                    ):
                        continue
                    for kind in ("TABLES", "SEQUENCES"):
                        statements.append(
                            f"ALTER DEFAULT PRIVILEGES FOR ROLE {quote_ident(owner)} IN SCHEMA "
                            f"{schema} GRANT SELECT ON {kind} TO {role}"
                        )
            large_objects = int(await db.fetchval(UNREADABLE_LARGE_OBJECTS, options.role))
            if large_objects:
                # The role is quoted by quote_ident, then as a literal for format().
                statements.append(
                    "DO $$DECLARE o oid; BEGIN FOR o IN SELECT oid FROM pg_largeobject_metadata "  # noqa: S608
                    f"LOOP EXECUTE format('GRANT SELECT ON LARGE OBJECT %s TO %s', o, "
                    f"{quote_literal(role)}); END LOOP; END$$"
                )
            if statements and not options.dry_run:
                async with db.transaction():
                    for statement in statements:
                        await db.execute(statement)
            if statements:
                changed.append(library)
        except Exception as exc:  # noqa: BLE001 - permission denied etc.: reported, not fatal
            problems.append(f"{library}: {exc}")
        finally:
            await db.close()
    what = "read access" if tables else "read access to large objects"
    if problems:
        report.add(
            step,
            "warn",
            f"cannot give {options.role} {what} in: " + "; ".join(problems),
            "run prepare-primary as the 'postgres' superuser, or keep primary.user = postgres",
        )
    elif changed:
        verb = "would grant" if options.dry_run else "granted"
        why = (
            "PostgreSQL < 14 has no pg_read_all_data"
            if tables
            else "pg_read_all_data does not cover them"
        )
        report.add(
            step,
            "would-change" if options.dry_run else "changed",
            f"{verb} {options.role} {what} ({why}) in "
            + ", ".join(repr(name) for name in changed)
            + "; large objects created later need prepare-primary again (no default "
            "privilege exists for them)",
        )
    else:
        report.add(
            step,
            "ok",
            f"{options.role} can read every "
            + ("table" if tables else "large object")
            + " of "
            + ", ".join(repr(name) for name in libraries),
        )


async def _slot_usage(conn: Any, config: Config) -> tuple[int, bool]:
    """(number of slots other than ours, whether ours exists)."""
    rows = await conn.fetch("SELECT slot_name FROM pg_replication_slots")
    names = [row["slot_name"] for row in rows]
    ours = config.standby.slot_name in names
    return len(names) - (1 if ours else 0), ours


def _check_restart_settings(
    settings: dict[str, Any], report: SetupReport, slot_usage: tuple[int, bool]
) -> None:
    other_slots, _ours = slot_usage

    def pending(name: str) -> str:
        row = settings.get(name)
        return (
            " (a new value is set but waits for a restart)"
            if row and row["pending_restart"]
            else ""
        )

    wal_level = str(settings["wal_level"]["setting"])
    if wal_level in ("replica", "logical", "hot_standby"):
        report.add("wal_level", "ok", f"wal_level = {wal_level}")
    else:
        report.add(
            "wal_level",
            "missing",
            f"wal_level = {wal_level}{pending('wal_level')}: the server does not write enough "
            "WAL for a standby",
            f"ALTER SYSTEM SET wal_level = 'replica'; {RESTART_HINT}",
        )
    senders = int(settings["max_wal_senders"]["setting"])
    if senders >= WAL_SENDERS_NEEDED:
        report.add("max_wal_senders", "ok", f"max_wal_senders = {senders}")
    else:
        report.add(
            "max_wal_senders",
            "missing",
            f"max_wal_senders = {senders}{pending('max_wal_senders')}: the standby and its "
            f"base backup need {WAL_SENDERS_NEEDED}",
            f"ALTER SYSTEM SET max_wal_senders = 10; {RESTART_HINT}",
        )
    slots = int(settings["max_replication_slots"]["setting"])
    needed = other_slots + 1
    if slots >= needed:
        report.add("max_replication_slots", "ok", f"max_replication_slots = {slots}")
    else:
        report.add(
            "max_replication_slots",
            "missing",
            f"max_replication_slots = {slots}{pending('max_replication_slots')}: "
            f"{other_slots} other slot(s) exist and laterbased needs one more",
            f"ALTER SYSTEM SET max_replication_slots = {max(10, needed)}; {RESTART_HINT}",
        )
    hot_standby = str(settings.get("hot_standby", {"setting": "on"})["setting"])
    if hot_standby == "on":
        report.add("hot_standby", "ok", "hot_standby = on (copied to the standby)")
    else:
        report.add(
            "hot_standby",
            "warn",
            "hot_standby = off: pg_basebackup copies this into the standby, which then "
            "accepts no read-only queries (status, pgAdmin, dumps from the standby)",
            "ALTER SYSTEM SET hot_standby = on (ignored by a primary; takes effect on the standby)",
        )


async def _ensure_slot(
    conn: Any,
    config: Config,
    options: SetupOptions,
    settings: dict[str, Any],
    report: SetupReport,
) -> None:
    name = config.standby.slot_name
    exists = await conn.fetchval(sql.REPLICATION_SLOT_KIND, name) is not None
    if options.dry_run:
        if exists:
            report.add("slot", "ok", f"physical replication slot {name} exists")
        else:
            report.add(
                "slot",
                "would-change",
                f"would create physical replication slot {name} (WAL reserved now)",
            )
        return
    if int(settings["max_replication_slots"]["setting"]) == 0 and not exists:
        report.add(
            "slot",
            "missing",
            f"cannot create slot {name}: max_replication_slots = 0",
            "see max_replication_slots above",
        )
        return
    try:
        created = await ensure_physical_slot(conn, name)
    except RefuseToRun as exc:
        report.add("slot", "missing", str(exc))
        return
    except Exception as exc:  # noqa: BLE001 - e.g. wal_level minimal, no free slot
        report.add(
            "slot",
            "missing",
            f"cannot create slot {name}: {exc}",
            "fix the settings above, restart, and run prepare-primary again",
        )
        return
    if created:
        report.add("slot", "changed", f"created physical replication slot {name} (WAL reserved)")
    else:
        report.add("slot", "ok", f"physical replication slot {name} exists")


async def _keep_size(
    conn: Any,
    options: SetupOptions,
    version_num: int,
    settings: dict[str, Any],
    report: SetupReport,
) -> None:
    if version_num < 130000:
        report.add(
            "max_slot_wal_keep_size",
            "warn",
            "PostgreSQL < 13 cannot cap the WAL a slot keeps: an abandoned standby slot "
            "can fill the server's disk",
            "watch laterbased_replication_slot_retained_wal_bytes, or drop the slot when "
            "the standby is retired",
        )
        return
    row = settings["max_slot_wal_keep_size"]
    current = int(row["setting"])
    wanted = options.max_slot_wal_keep_size
    if current >= 0:
        report.add(
            "max_slot_wal_keep_size",
            "ok",
            f"max_slot_wal_keep_size = {current}MB: the slot holds at most that much WAL",
        )
        return
    if not options.wal_cap:
        report.add(
            "max_slot_wal_keep_size",
            "warn",
            "max_slot_wal_keep_size = -1 (unlimited, --no-wal-cap): an abandoned slot can "
            "fill the server's disk",
            f"run prepare-primary without --no-wal-cap to set it to '{wanted}'",
        )
        return
    if options.dry_run:
        report.add(
            "max_slot_wal_keep_size",
            "would-change",
            f"would ALTER SYSTEM SET max_slot_wal_keep_size = '{wanted}' and reload: the slot "
            "would hold at most that much WAL (--no-wal-cap leaves it unlimited)",
        )
        return
    await conn.execute(f"ALTER SYSTEM SET max_slot_wal_keep_size = {quote_literal(wanted)}")
    # A sighup-level setting: in effect after the reload, before the slot is created.
    await conn.fetchval("SELECT pg_reload_conf()")
    report.add(
        "max_slot_wal_keep_size",
        "changed",
        f"ALTER SYSTEM SET max_slot_wal_keep_size = '{wanted}' (in effect now): the slot "
        "holds at most that much WAL, so an abandoned standby cannot fill this server's "
        "disk; a standby further behind is re-cloned (--no-wal-cap leaves it unlimited)",
    )


async def _hba(
    conn: Any, options: SetupOptions, settings: dict[str, Any], report: SetupReport
) -> None:
    client_addr = await conn.fetchval("SELECT host(inet_client_addr())")
    encryption = str(settings.get("password_encryption", {"setting": "md5"})["setting"])
    method = hba_auth_method(encryption)
    report.hba_line = hba_line_for(options.role, client_addr, method)
    hba_row = settings.get("hba_file")
    report.hba_file = str(hba_row["setting"]) if hba_row else None
    # Whether the line is there is known only from a real replication connection: the
    # pg_hba.conf step is added with its result (_test_replication), never "ok" unproven.


def _report_hba(report: SetupReport, probe: ReplicationProbe | None, role: str) -> None:
    """The pg_hba.conf step, judged by the replication connection's answer."""
    if report.hba_line is None:
        return
    where = f" in {report.hba_file}" if report.hba_file else ""
    needed = f"a standby on this host needs: {report.hba_line}{where}"
    if probe is None:
        report.add("pg_hba.conf", "warn", f"not verified (no password known for {role}); {needed}")
    elif probe.ok or probe.reason in ("auth", "privilege"):
        # The server got as far as the password or the role: a line admitted us.
        report.add(
            "pg_hba.conf", "ok", f"a line{where} admits replication for {role} from this host"
        )
    elif probe.reason == "hba":
        report.add(
            "pg_hba.conf",
            "missing",
            f"no line{where} admits replication for {role} from this host",
            f"add this line above any 'reject' line, then run prepare-primary again: "
            f"{report.hba_line}",
        )
    else:
        report.add("pg_hba.conf", "warn", f"not verified ({probe.message}); {needed}")


async def _test_replication(config: Config, options: SetupOptions, report: SetupReport) -> None:
    if report.missing and any(step.name == "connect" for step in report.missing):
        return
    if options.role_password is None:
        _report_hba(report, None, options.role)
        report.add(
            "replication connection",
            "warn",
            f"not tested: no password known for {options.role}",
            "set primary.password (REPL_PASSWORD) or give --role-password-file",
        )
        return
    probe = await _probe(config, options)
    if not probe.ok and probe.reason == "hba" and not options.dry_run:
        # The postmaster reloads pg_hba a moment after pg_reload_conf(); try again briefly.
        loop = asyncio.get_running_loop()
        deadline = loop.time() + HBA_RELOAD_WAIT
        while not probe.ok and probe.reason == "hba" and loop.time() < deadline:
            await asyncio.sleep(0.3)
            probe = await _probe(config, options)
    _report_hba(report, probe, options.role)
    if probe.ok:
        report.add("replication connection", "ok", probe.message)
        return
    hints = {
        "hba": f"add this line to pg_hba.conf ({report.hba_file or 'SHOW hba_file'}) above any "
        f"'reject' line, then run prepare-primary again: {report.hba_line}",
        "auth": f"the password for {options.role} is wrong: fix primary.password "
        "(REPL_PASSWORD) or rerun with --reset-password",
        "privilege": f"role {options.role} lacks REPLICATION",
        "unreachable": "check host, port, firewall and listen_addresses",
        "no-psql": "apt-get install postgresql-client",
    }
    report.add("replication connection", "missing", probe.message, hints.get(probe.reason, ""))


async def _probe(config: Config, options: SetupOptions) -> ReplicationProbe:
    primary = config.primary
    return await probe_replication(
        host=primary.host or "localhost",
        port=primary.port,
        user=options.role,
        password=options.role_password,
        sslmode=primary.sslmode,
        timeout=primary.connect_timeout,
        psql=options.psql,
    )
