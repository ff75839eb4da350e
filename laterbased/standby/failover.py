"""The failover plan (``standby.failover_address`` / ``failover_port``): can this host listen
there, does the standby's pg_hba.conf admit the workstations, and do the libraries open.

``laterbased check`` asks these questions while the primary is still healthy; the
supervisor asks the first one again right before it moves a promoted server there.
"""

from __future__ import annotations

import errno
import ipaddress
import logging
import socket
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg

from laterbased.pg import sql
from laterbased.pg.connect import PgUnavailable, connect

logger = logging.getLogger(__name__)


def bind_problem(address: str, port: int) -> str | None:
    """Why a server could not listen on ``address:port`` right now, or None.

    A real bind: "not an address of this host" (EADDRNOTAVAIL) and "in use" (EADDRINUSE)
    are what postgres would meet at its start, said before it fails.
    """
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        # As postgres does: a port in TIME_WAIT after our own restart is not "in use".
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((address, port))
        except OSError as exc:
            if exc.errno == errno.EADDRNOTAVAIL:
                return f"{address} is not an address of this host"
            if exc.errno == errno.EADDRINUSE:
                return f"port {port} on {address} is in use by another program"
            return f"cannot listen on {address}:{port}: {exc.strerror or exc}"
    return None


# --- pg_hba.conf ---------------------------------------------------------------------------

_CONNECTION_TYPES = {"host", "hostssl", "hostnossl", "hostgssenc", "hostnogssenc"}


@dataclass(frozen=True)
class HbaRule:
    line: int
    type: str
    databases: tuple[str, ...]
    users: tuple[str, ...]
    address: str
    method: str
    text: str


def _tokens(line: str) -> list[str]:
    """pg_hba.conf fields: whitespace-separated, double quotes keep spaces and commas."""
    fields: list[str] = []
    current = ""
    quoted = False
    started = False
    for char in line:
        if char == '"':
            quoted = not quoted
            started = True
            continue
        if char == "#" and not quoted:
            break
        if char.isspace() and not quoted:
            if started:
                fields.append(current)
                current, started = "", False
            continue
        current += char
        started = True
    if started:
        fields.append(current)
    return fields


def parse_hba(text: str) -> list[HbaRule]:
    """The TCP rules of a pg_hba.conf (``local`` lines cannot admit a workstation)."""
    rules: list[HbaRule] = []
    for number, raw in enumerate(text.splitlines(), start=1):
        fields = _tokens(raw)
        if len(fields) < 4 or fields[0] not in _CONNECTION_TYPES:
            continue
        address, rest = fields[3], fields[4:]
        if "/" not in address and rest and _looks_like_mask(rest[0]):
            # The older "address mask" form: 192.168.1.0 255.255.255.0.
            try:
                prefix = ipaddress.ip_network(f"0.0.0.0/{rest[0]}").prefixlen
            except ValueError:
                prefix = 32
            address, rest = f"{address}/{prefix}", rest[1:]
        if not rest:
            continue
        rules.append(
            HbaRule(
                line=number,
                type=fields[0],
                databases=tuple(fields[1].split(",")),
                users=tuple(fields[2].split(",")),
                address=address,
                method=rest[0],
                text=raw.strip(),
            )
        )
    return rules


def _looks_like_mask(token: str) -> bool:
    return token.count(".") == 3 and all(p.isdigit() for p in token.split("."))


def _matches_name(patterns: Sequence[str], name: str, *, database: bool) -> bool | None:
    """True / False, or None when the rule names a group or file we cannot resolve here."""
    unknown = False
    for pattern in patterns:
        if pattern == "all" or pattern == name:
            return True
        if database and pattern in {"sameuser", "samerole", "samegroup"}:
            unknown = True
        elif pattern.startswith(("+", "@")):
            unknown = True
        elif pattern == "replication" and database:
            continue
    return None if unknown else False


def _covers_workstations(address: str, failover: str) -> bool | None:
    """Does the rule's address admit machines on the failover address's network?
    ``samehost`` (this host only) and a single-host rule do not; a host name: unknown."""
    if address in {"all", "samenet"}:
        return True
    if address == "samehost":
        return False
    try:
        network = ipaddress.ip_network(address, strict=False)
        target = ipaddress.ip_address(failover)
    except ValueError:
        return None  # a host name or a domain suffix: resolved by postgres per client
    if network.version != target.version or network.num_addresses == 1:
        return False
    return target in network


@dataclass
class HbaVerdict:
    """For each library: the first rule a workstation's login meets (or why none)."""

    admitted: list[str] = field(default_factory=list)  # "library: line N (method)"
    refused: list[str] = field(default_factory=list)
    uncertain: list[str] = field(default_factory=list)
    trust: list[str] = field(default_factory=list)
    methods: dict[str, str] = field(default_factory=dict)  # library -> method that admits


def judge_hba(
    rules: Sequence[HbaRule], libraries: Sequence[str], user: str, failover: str
) -> HbaVerdict:
    """Walk the rules in order, as postgres does, for a workstation on the failover
    address's network logging in as ``user`` to each library."""
    verdict = HbaVerdict()
    for library in libraries or ["postgres"]:
        for rule in rules:
            covers = _covers_workstations(rule.address, failover)
            database = _matches_name(rule.databases, library, database=True)
            role = _matches_name(rule.users, user, database=False)
            if covers is False or database is False or role is False:
                continue
            where = f"{library}: line {rule.line} ({rule.text})"
            if covers is None or database is None or role is None:
                verdict.uncertain.append(where)
                break
            if rule.method == "reject":
                verdict.refused.append(where)
            elif rule.method == "trust":
                verdict.trust.append(where)
                verdict.admitted.append(where)
                verdict.methods[library] = rule.method
            else:
                verdict.admitted.append(where)
                verdict.methods[library] = rule.method
            break
        else:
            verdict.refused.append(f"{library}: no line matches")
    return verdict


def hba_path(data_dir: Path) -> Path:
    """The pg_hba.conf the standby (and the promoted server) reads: the one in its data
    directory (laterbased overrides a primary's hba_file that points elsewhere)."""
    return data_dir / "pg_hba.conf"


# --- the libraries ----------------------------------------------------------------------------


@dataclass
class LibraryProof:
    """Each Resolve library on a server: opened, ``SM_Project`` read, a write accepted."""

    opened: dict[str, int] = field(default_factory=dict)  # library -> projects
    failed: dict[str, str] = field(default_factory=dict)
    # library -> the login role owning it: what Resolve created it with, so what the
    # workstations log in as (not laterbased's own role when that is a replication role).
    owners: dict[str, str] = field(default_factory=dict)


async def resolve_libraries(conn: Any) -> list[str]:
    """Every connectable database of the server behind ``conn`` (filtered by the caller)."""
    return [row["datname"] for row in await conn.fetch(sql.CONNECTABLE_DATABASES)]


async def prove_libraries(
    *,
    host: str,
    port: int,
    user: str,
    password: str | None,
    maintenance_db: str,
    connect_timeout: float,
    write: bool,
) -> LibraryProof:
    """Open every Resolve library (a database with ``public."SM_Project"``), count its
    projects and, with ``write``, commit a write (create, fill and drop a table)."""
    proof = LibraryProof()

    async def open_db(database: str) -> Any:
        return await connect(
            host=host,
            port=port,
            user=user,
            password=password,
            database=database,
            timeout=connect_timeout,
            application_name="laterbased-failover",
        )

    conn = await open_db(maintenance_db)
    try:
        names = await resolve_libraries(conn)
        rows = await conn.fetch(sql.LOGIN_OWNERS, names)
        owners = {str(row["datname"]): str(row["rolname"]) for row in rows}
    finally:
        await conn.close()
    for name in names:
        try:
            conn = await open_db(name)
        except PgUnavailable as exc:
            proof.failed[name] = str(exc)
            continue
        try:
            if not await conn.fetchval(sql.IS_RESOLVE_DATABASE):
                continue
            projects = int(await conn.fetchval('SELECT count(*) FROM public."SM_Project"'))
            if write:
                async with conn.transaction():
                    await conn.execute(
                        "CREATE TABLE laterbased_failover_write_test (at timestamptz)"
                    )
                    await conn.execute(
                        "INSERT INTO laterbased_failover_write_test VALUES (now())"
                    )
                    await conn.execute("DROP TABLE laterbased_failover_write_test")
            proof.opened[name] = projects
        except asyncpg.PostgresError as exc:
            proof.failed[name] = f"{type(exc).__name__}: {exc}"
        finally:
            await conn.close()
    proof.owners = {name: owner for name, owner in owners.items() if name in proof.opened}
    return proof
