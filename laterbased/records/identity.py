"""Which cluster answers at the primary's address: checked by its system identifier.

``initdb`` gives every cluster a random 64-bit system identifier. A failover to a standby of
the same cluster keeps it (only the timeline changes); a fresh ``initdb`` or another server
at the same host:port has another one. laterbased keeps the identifier it accepted for its
primary in ``<state_dir>/primary-identity.json`` (so a restart still knows it) and writes the
one it dumped from into every backup manifest. On first contact it accepts the identifier of
the newest backup manifest, else of the standby data directory, else the primary's own: what
we already hold copies of decides, not whoever answers now.

A server with another identifier is a stranger: no dump of it goes into the existing series,
no replication slot is created on it, the standby is not cloned from it, and health is
critical naming both identifiers, until the operator runs ``laterbased accept-primary``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import secrets
import threading
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg

from laterbased.config import Config
from laterbased.errors import RefuseToRun
from laterbased.pg import control_file, sql
from laterbased.pg.connect import PgUnavailable
from laterbased.pg.replication_probe import probe_replication
from laterbased.records.catalogue import Catalogue

logger = logging.getLogger(__name__)

IDENTITY_FILE = "primary-identity.json"
ACCEPT_COMMAND = "laterbased accept-primary --system-identifier"
# The monitor and a dump run may meet a primary for the first time at the same moment.
_settling = threading.Lock()


@dataclass(frozen=True)
class AcceptedIdentity:
    """The primary cluster laterbased backs up and replicates, and since when / why."""

    system_identifier: str
    accepted_at: datetime
    how: str  # "first contact with the primary", "accept-primary", ...


@dataclass(frozen=True)
class IdentityVerdict:
    """What a server reported (None: it could not be read) against what we accepted."""

    observed: str | None
    accepted: AcceptedIdentity | None

    @property
    def mismatch(self) -> bool:
        return (
            self.observed is not None
            and self.accepted is not None
            and self.observed != self.accepted.system_identifier
        )


def mismatch_message(where: str, observed: str, accepted: str, how: str, what: str) -> str:
    """Both identifiers, what laterbased withholds, and the command that accepts the new one."""
    return (
        f"a different PostgreSQL cluster answers at {what} {where}: system identifier "
        f"{observed}, but laterbased accepted {accepted} ({how}). "
        "No backup of it goes into the existing series and no replication slot is created "
        f"there. If it is the new primary, accept it: {ACCEPT_COMMAND} {observed}"
    )


class StrangerPrimary(PgUnavailable):
    """The server answers, but it is another cluster than the one we accepted."""

    def __init__(
        self,
        where: str,
        observed: str,
        accepted: AcceptedIdentity,
        what: str = "the primary's address",
    ) -> None:
        super().__init__(
            mismatch_message(where, observed, accepted.system_identifier, accepted.how, what),
            reason="identity",
        )
        self.observed = observed
        self.accepted = accepted


# --- the accepted identifier on disk --------------------------------------------------------


def identity_file(state_dir: Path) -> Path:
    return state_dir / IDENTITY_FILE


def load_accepted(state_dir: Path) -> AcceptedIdentity | None:
    """The accepted identifier, or None before first contact. Blocking (small file)."""
    path = identity_file(state_dir)
    try:
        # Never follow a link planted under the state directory.
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise RefuseToRun(f"cannot read {path}: {exc.strerror or exc}") from exc
    with os.fdopen(fd, encoding="utf-8") as handle:
        text = handle.read()
    try:
        data = json.loads(text)
        identifier = str(data["system_identifier"])
        if not identifier.isdigit():
            raise ValueError(f"system_identifier {identifier!r} is not a number")
        accepted_at = datetime.fromisoformat(str(data["accepted_at"]))
        return AcceptedIdentity(identifier, accepted_at, str(data.get("how") or "?"))
    except (ValueError, KeyError, TypeError) as exc:
        raise RefuseToRun(
            f"{path} is damaged ({exc}); it records which PostgreSQL cluster is our primary. "
            f"Run '{ACCEPT_COMMAND} <id>' to write it again"
        ) from exc


def save_accepted(state_dir: Path, identifier: str, how: str) -> AcceptedIdentity:
    """Write the accepted identifier atomically (temporary file, fsync, rename, fsync)."""
    accepted = AcceptedIdentity(identifier, datetime.now(UTC), how)
    body: dict[str, Any] = {
        "system_identifier": identifier,
        "accepted_at": accepted.accepted_at.isoformat(),
        "how": how,
    }
    state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    path = identity_file(state_dir)
    temporary = state_dir / f".{IDENTITY_FILE}.{secrets.token_hex(4)}"
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    fd = os.open(temporary, flags, 0o644)  # not a secret: readable by a daemon user
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(json.dumps(body, indent=2) + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
    directory = os.open(state_dir, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)
    return accepted


def first_contact_baseline(config: Config) -> tuple[str, str] | None:
    """(identifier, where it came from) of what we already hold: the newest backup manifest
    that names one, else the standby data directory; None when we hold nothing yet."""
    catalogue = Catalogue(config.backup_directory)
    if config.backup_directory.is_dir():
        named = [r for r in catalogue.list_backups() if r.system_identifier]
        if named:
            newest = max(named, key=lambda record: record.finished)
            assert newest.system_identifier is not None  # noqa: S101 - filtered above
            return newest.system_identifier, f"from the newest backup {newest.manifest_path}"
    data_dir = config.standby_data_dir
    identifier = control_file.system_identifier(data_dir)
    if identifier is not None:
        return identifier, f"from the standby data directory {data_dir}"
    return None


def settle(config: Config, observed: str | None) -> IdentityVerdict:
    """``observed`` against the accepted identifier; on first contact (no file yet) accept
    the baseline (:func:`first_contact_baseline`) or else ``observed``. Blocking."""
    with _settling:
        accepted = load_accepted(config.state_dir)
        if accepted is None and observed is not None:
            baseline = first_contact_baseline(config)
            identifier, how = baseline or (observed, "first contact with the primary")
            accepted = save_accepted(config.state_dir, identifier, how)
            logger.info(
                "primary cluster accepted system_identifier=%s how=%s file=%s",
                identifier,
                how,
                identity_file(config.state_dir),
            )
    return IdentityVerdict(observed, accepted)


async def check_identity(
    config: Config, observed: str | None, where: str, what: str = "the primary's address"
) -> IdentityVerdict:
    """:func:`settle` off the event loop; raises :class:`StrangerPrimary` on a mismatch."""
    verdict = await asyncio.to_thread(settle, config, observed)
    if verdict.mismatch:
        assert observed is not None and verdict.accepted is not None  # noqa: S101
        raise StrangerPrimary(where, observed, verdict.accepted, what)
    return verdict


# --- asking a server --------------------------------------------------------------------------


async def read_system_identifier(
    conn: Any,
    *,
    version_num: int,
    host: str,
    port: int,
    user: str,
    password: str | None,
    sslmode: str,
    timeout: float,  # noqa: ASYNC109 - per query / per replication probe
) -> str | None:
    """The system identifier of the server behind ``conn``: ``pg_control_system()`` (9.6+),
    else (9.5, or the function refused) ``IDENTIFY_SYSTEM`` over a replication connection
    to the same server as the same user. None, with a warning, when neither answers."""
    if version_num >= 90600:
        try:
            value = await conn.fetchval(sql.SYSTEM_IDENTIFIER, timeout=timeout)
        except asyncpg.InsufficientPrivilegeError:
            value = None
        if value is not None:
            return str(value)
    return await identify_over_replication(
        host=host, port=port, user=user, password=password, sslmode=sslmode, timeout=timeout
    )


async def identify_over_replication(
    *,
    host: str,
    port: int,
    user: str,
    password: str | None,
    sslmode: str,
    timeout: float,  # noqa: ASYNC109 - for the replication probe
) -> str | None:
    """``IDENTIFY_SYSTEM`` on a replication connection (what 9.5 offers instead of
    ``pg_control_system()``); None, with a warning, when it fails."""
    probe = await probe_replication(
        host=host, port=port, user=user, password=password, sslmode=sslmode, timeout=timeout
    )
    if probe.ok and probe.system_identifier:
        return probe.system_identifier
    logger.warning(
        "cannot read the system identifier of %s:%s (no pg_control_system() before 9.6 or "
        "not allowed, and IDENTIFY_SYSTEM on a replication connection failed: %s); which "
        "cluster answers there is not checked",
        host,
        port,
        probe.message,
    )
    return None


async def read_primary_identifier(
    conn: Any, config: Config, version_num: int, timeout: float  # noqa: ASYNC109
) -> str | None:
    """:func:`read_system_identifier` for ``conn`` to the configured primary."""
    primary = config.primary
    assert primary.host is not None  # noqa: S101 - only called with a primary configured
    return await read_system_identifier(
        conn,
        version_num=version_num,
        host=primary.host,
        port=primary.port,
        user=primary.user,
        password=primary.password.reveal() if primary.password else None,
        sslmode=primary.sslmode,
        timeout=timeout,
    )


async def primary_over_replication(config: Config, timeout: float) -> str | None:  # noqa: ASYNC109
    """:func:`identify_over_replication` against the configured primary."""
    primary = config.primary
    assert primary.host is not None  # noqa: S101 - only called with a primary configured
    return await identify_over_replication(
        host=primary.host,
        port=primary.port,
        user=primary.user,
        password=primary.password.reveal() if primary.password else None,
        sslmode=primary.sslmode,
        timeout=timeout,
    )


def primary_address(config: Config) -> str:
    return f"{config.primary.host}:{config.primary.port}"
