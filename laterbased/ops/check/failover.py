"""``laterbased check``: the failover plan, verified while the primary is still healthy, and
the checks of a server that was promoted (it is the primary now: no slot advice).

The plan: ``standby.failover_address`` exists on this host, ``standby.failover_port`` is
free (or our promoted server's), the standby's pg_hba.conf — inherited from the primary
when it lives in the primary's data directory, as on Resolve's Windows and macOS installs —
admits the workstations with the primary's users and methods; plus a firewall reminder.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Callable
from pathlib import Path

import asyncpg

import laterbased.ops.check.checks as checks
from laterbased.backup.dump import discover_databases, primary_server
from laterbased.config import Config
from laterbased.ops.check.checks import CheckResult, fail, ok, warn
from laterbased.pg import sql
from laterbased.pg.connect import PgUnavailable, connect_primary
from laterbased.standby import configure, failover, safety
from laterbased.standby.promote import local_host, old_primary_still_up

# What a promoted server is judged by: the checks of a primary that still make sense once
# nothing replicates from it (no replication privilege, pg_hba replication line, wal_level,
# slot, WAL cap or "is the standby a clone" question).
PROMOTED_CHECKS: tuple[checks.Check, ...] = (
    checks.check_primary_reachable,
    checks.check_auth,
    checks.check_primary_identity,
    checks.check_binaries,
    checks.check_collation,
    checks.check_backup_dir,
    checks.check_newest_backup,
    checks.check_rclone,
    checks.check_http_port,
)


def promoted_data_dir(config: Config) -> bool:
    """The standby's data directory holds a promoted server (blocking: file checks)."""
    data_dir = config.standby_data_dir
    try:
        major = (data_dir / "PG_VERSION").read_text("utf-8").strip()
    except (OSError, UnicodeDecodeError):
        return False
    return configure.is_promoted(data_dir, major)


def running_port(data_dir: Path) -> int | None:
    """The port of the postgres running on ``data_dir`` (postmaster.pid line 4), if any."""
    if safety.live_postmaster(data_dir) is None:
        return None
    try:
        lines = (data_dir / "postmaster.pid").read_text("utf-8").splitlines()
        return int(lines[3])
    except (OSError, UnicodeDecodeError, IndexError, ValueError):
        return None


async def run_all_checks(config: Config) -> list[CheckResult]:
    """``laterbased check``: the usual checks and the failover plan, or, once the standby
    was promoted, the checks of a primary run against the promoted server."""
    if not config.standby.enabled:
        return await checks.run_checks(config)
    if await asyncio.to_thread(promoted_data_dir, config):
        return await run_promoted_checks(config)
    results = await checks.run_checks(config)
    results += await check_failover_plan(config)
    return results


async def run_promoted_checks(config: Config) -> list[CheckResult]:
    port = await asyncio.to_thread(running_port, config.standby_data_dir)
    port = port or config.standby.promoted_port
    where = f"{config.primary.host}:{config.primary.port}"
    results = [ok("configuration", "valid")]
    still_up = await old_primary_still_up(config)
    if still_up is None:
        results.append(ok("role", f"promoted: this server is the primary; {where} gone "
                                  "(promoted away)"))
    else:
        results.append(
            warn(
                "role",
                f"promoted, but {still_up}",
                "keep Resolve away from the old primary (its writes never reach this server): "
                "stop its PostgreSQL, or make it a standby of this server",
            )
        )
    # The promoted server is the primary now: reached where laterbased reaches it.
    promoted = dataclasses.replace(
        config,
        primary=dataclasses.replace(
            config.primary, host=local_host(config), port=port, sslmode="prefer"
        ),
    )
    facts = checks.Facts(config=promoted)
    try:
        for check in PROMOTED_CHECKS:
            if check is not checks.check_primary_reachable and not facts.reachable and check in (
                checks.check_auth,
                checks.check_collation,
            ):
                continue
            try:
                outcome = await check(facts)
            except PgUnavailable as exc:
                outcome = fail(checks._check_name(check), str(exc))
            except (OSError, ValueError, asyncpg.PostgresError) as exc:
                outcome = fail(checks._check_name(check), f"check failed: {exc}")
            if outcome is not None:
                results.extend(outcome if isinstance(outcome, list) else [outcome])
    finally:
        if facts.conn is not None:
            await facts.conn.close()
    results += await check_failover_plan(promoted, running_on=port)
    return results


async def check_failover_plan(config: Config, running_on: int | None = None) -> list[CheckResult]:
    """The failover lines: address, port, pg_hba.conf, firewall. ``config.primary`` is
    where the libraries are listed (the promoted server after a failover); ``running_on``
    the port our promoted server listens on (its sockets are not "in use")."""
    standby = config.standby
    if not standby.failover_address:
        return [
            warn(
                "failover plan",
                f"none: once promoted the server would listen on {standby.listen_addresses} "
                f"port {standby.port} only, which no Resolve workstation reaches",
                "set standby.failover_address to this host's LAN address (and "
                "standby.failover_port, default 5432: Resolve connects on no other port)",
            )
        ]
    port = standby.failover_port
    results: list[CheckResult] = []
    for address in standby.failover_address:
        results.append(await asyncio.to_thread(_endpoint_line, address, port, running_on))
    results.append(await _hba_line(config))
    results.append(
        ok(
            "failover firewall",
            f"not checked here: this host's firewall must admit TCP port {port} from the "
            f"workstations (e.g. ufw allow {port}/tcp, or firewall-cmd --permanent "
            f"--add-port={port}/tcp)",
        )
    )
    if port != 5432:
        results.append(
            warn(
                "failover port",
                f"{port}: Resolve's Add Project Library dialog takes no port and connects "
                "on 5432",
                "set standby.failover_port: 5432 unless the workstations reach this host "
                "on 5432 some other way",
            )
        )
    return results


def _endpoint_line(address: str, port: int, running_on: int | None) -> CheckResult:
    name = f"failover {address}"
    if running_on == port:
        # Our promoted server listens on the port: it is ours, not "in use".
        probe = failover.bind_problem(address, 0)
        if probe is not None:
            return fail(name, probe, "fix standby.failover_address")
        return ok(name, f"{address}:{port}: the promoted server listens there")
    problem = failover.bind_problem(address, port)
    if problem is None:
        return ok(name, f"{address}:{port} is an address of this host and the port is free")
    if "in use" in problem:
        return fail(
            name,
            problem,
            "a promoted server could not listen there: stop that program, or choose "
            "another standby.failover_port",
        )
    return fail(
        name,
        problem,
        "standby.failover_address must be an address of this host that the workstations "
        "reach (ip -brief address shows them)",
    )


async def _methods_unlike_the_primary(
    config: Config, verdict: failover.HbaVerdict, libraries: list[str], user: str, address: str
) -> list[str]:
    """Libraries for which the primary's own pg_hba.conf (read with pg_read_file, which
    needs a superuser such as Resolve's postgres; skipped otherwise) admits the
    workstations with another method than the standby's copy."""
    try:
        conn = await connect_primary(config.primary, application_name="laterbased-check")
    except (PgUnavailable, OSError):
        return []
    try:
        text = await conn.fetchval("SELECT pg_read_file(current_setting('hba_file'))")
    except asyncpg.PostgresError:
        return []  # not a superuser: the methods cannot be compared from here
    finally:
        await conn.close()
    theirs = failover.judge_hba(failover.parse_hba(str(text or "")), libraries, user, address)
    return [
        f"{library}: {method} here, {theirs.methods[library]} on the primary"
        for library, method in sorted(verdict.methods.items())
        if library in theirs.methods and theirs.methods[library] != method
    ]


async def _library_owners(config: Config, libraries: list[str]) -> dict[str, str]:
    """library -> the login role that owns it, where ``config.primary`` answers (else
    nothing: the configured user is still judged)."""
    if not libraries:
        return {}
    try:
        conn = await connect_primary(config.primary, application_name="laterbased-check")
    except (PgUnavailable, OSError):
        return {}
    try:
        rows = await conn.fetch(sql.LOGIN_OWNERS, libraries)
    except asyncpg.PostgresError:
        return {}
    finally:
        await conn.close()
    return {str(row["datname"]): str(row["rolname"]) for row in rows}


async def failover_roles(config: Config, libraries: list[str]) -> dict[str, list[str]]:
    """Every role a failover needs, with the libraries it must open: ``primary.user`` (what
    laterbased and the printed workstation steps use) into each library, and each library's
    owner into its library: the login Resolve created it with, which is what the
    workstations use, and not laterbased's role when that is a separate replication role."""
    roles: dict[str, list[str]] = {config.primary.user: list(libraries)}
    for library, owner in sorted((await _library_owners(config, libraries)).items()):
        if owner != config.primary.user:
            roles.setdefault(owner, []).append(library)
    return roles


async def _hba_line(config: Config) -> CheckResult:
    """Does the standby's pg_hba.conf admit the workstations (first matching line, as
    postgres reads it) for every role the failover needs into its libraries?"""
    name = "failover pg_hba"
    data_dir = config.standby_data_dir
    path = failover.hba_path(data_dir)
    if not await asyncio.to_thread((data_dir / "PG_VERSION").is_file):
        return ok(name, f"{data_dir} not cloned yet: checked once the standby is cloned")
    try:
        text = await asyncio.to_thread(path.read_text, "utf-8")
    except FileNotFoundError:
        return fail(name, f"{path} is missing", "copy the primary's pg_hba.conf there")
    except OSError as exc:
        return warn(name, f"cannot read {path}: {exc.strerror or exc}",
                    "run laterbased check as root or the run-as user")
    libraries = list(config.backup.databases)
    if not libraries:
        try:
            libraries = await discover_databases(primary_server(config))
        except (PgUnavailable, asyncpg.PostgresError, OSError):
            libraries = []
    address = config.standby.failover_address[0]
    rules = failover.parse_hba(text)
    roles = await failover_roles(config, libraries)
    several = len(roles) > 1
    verdicts = {
        role: failover.judge_hba(rules, role_libraries, role, address)
        for role, role_libraries in roles.items()
    }

    def told(pick: Callable[[failover.HbaVerdict], list[str]]) -> list[str]:
        # With several roles each finding says whose login it is about.
        return [
            f"user {role}, {entry}" if several else entry
            for role, verdict in verdicts.items()
            for entry in pick(verdict)
        ]

    refused_roles = [role for role, verdict in verdicts.items() if verdict.refused]
    users = " and ".join(roles)
    if refused_roles:
        line = (
            f"host all {','.join(refused_roles)} <workstations' network> "
            "<the primary's method, e.g. md5>"
        )
        return fail(
            name,
            f"{path} refuses the workstations (user {users}, network of {address}): "
            + "; ".join(told(lambda v: v.refused)),
            f"add a line such as '{line}' above it to {path} (a copy of the primary's "
            "taken at the clone: add it on the primary too, so a re-clone keeps it); the "
            "promoted server reads it when it starts on the failover endpoint",
        )
    uncertain = told(lambda v: v.uncertain)
    if uncertain:
        return warn(
            name,
            "cannot tell from here whether these lines admit the workstations: "
            + "; ".join(uncertain),
            "a group (+name), an @file or a host name decides per client; test a "
            "workstation login once promoted, or use an explicit network",
        )
    trust = told(lambda v: v.trust)
    if trust:
        return warn(
            name,
            "admits the workstations without a password (trust): " + "; ".join(trust),
            "use the primary's password method (md5 or scram-sha-256)",
        )
    differ: list[str] = []
    for role, verdict in verdicts.items():
        unlike = await _methods_unlike_the_primary(config, verdict, roles[role], role, address)
        differ += [f"user {role}, {entry}" if several else entry for entry in unlike]
    if differ:
        return warn(
            name,
            f"{path} admits the workstations with another method than the primary does: "
            + "; ".join(differ),
            "an old copy? Use the primary's lines: a method the stored passwords do not "
            "fit (scram-sha-256 with md5 passwords) refuses every workstation",
        )
    return ok(
        name,
        f"{path} admits {users} from the network of {address}: "
        + "; ".join(told(lambda v: v.admitted)),
    )
