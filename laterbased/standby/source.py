"""What the standby needs to know about its primary: version, identity, slot, password."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass
from pathlib import Path

import asyncpg

from laterbased.config import Config
from laterbased.pg import sql
from laterbased.pg.binaries import major_from_version_num
from laterbased.pg.connect import PgUnavailable, connect_primary
from laterbased.pg.passfile import passfile_line, write_passfile
from laterbased.pg.slot import ensure_physical_slot
from laterbased.proc import RunAs
from laterbased.records import identity
from laterbased.standby.configure import PrimaryLink

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class PrimaryFacts:
    version_num: int
    major: str
    system_identifier: str | None  # None before 9.6 (no pg_control_system())


async def inspect_primary(config: Config, *, ensure_slot: bool) -> PrimaryFacts:
    """Connect to the primary, read version and system identifier, check that it is the
    accepted cluster (pg/identity.py), and (first of all replication business) make sure our
    physical slot exists. Raises PgUnavailable when the primary cannot be reached,
    StrangerPrimary (a PgUnavailable) when another cluster answers there (no slot created),
    RefuseToRun when the slot name is taken by another kind.
    """
    primary = config.primary
    conn = await connect_primary(
        primary, application_name=f"{config.standby.application_name}_supervisor"
    )
    # A primary that took our login and then went silent (a link dead without a reset)
    # must not hold up the standby: a few queries get what one query may take, each.
    budget = 4 * config.monitor.query_timeout
    try:
        async with asyncio.timeout(budget):
            version_num = int(await conn.fetchval(sql.SERVER_VERSION_NUM))
            sysid: str | None = None
            if version_num >= 90600:
                try:
                    sysid = str(await conn.fetchval(sql.SYSTEM_IDENTIFIER))
                except asyncpg.InsufficientPrivilegeError:
                    logger.warning(
                        "user %s may not call pg_control_system() on the primary; asking "
                        "IDENTIFY_SYSTEM instead",
                        primary.user,
                    )
            if sysid is None:  # 9.5 has no pg_control_system()
                sysid = await identity.primary_over_replication(
                    config, config.monitor.query_timeout
                )
            # Before any slot: never reserve WAL on (or clone) a stranger.
            await identity.check_identity(config, sysid, identity.primary_address(config))
            if ensure_slot:
                await ensure_physical_slot(conn, config.standby.slot_name)
    except TimeoutError:
        conn.terminate()  # close() would wait for the answer that never comes
        raise PgUnavailable(
            f"the primary {primary.host}:{primary.port} accepted our login but did not "
            f"answer within {budget:g}s",
            reason="timeout",
        ) from None
    finally:
        with contextlib.suppress(TimeoutError):  # on timeout close() terminates it
            await asyncio.shield(conn.close(timeout=config.monitor.query_timeout))
    return PrimaryFacts(version_num, major_from_version_num(version_num), sysid)


def primary_link(config: Config, passfile: Path) -> PrimaryLink:
    primary = config.primary
    assert primary.host is not None  # noqa: S101 - required by config validation when enabled
    return PrimaryLink(
        host=primary.host,
        port=primary.port,
        user=primary.user,
        passfile=passfile,
        slot_name=config.standby.slot_name,
        application_name=config.standby.application_name,
        sslmode=primary.sslmode,
        connect_timeout=max(1, int(primary.connect_timeout)),
    )


async def write_primary_passfile(config: Config, passfile: Path, run_as: RunAs | None) -> None:
    """The passfile the standby's WAL receiver (and pg_basebackup) read the password from,
    owned by the run-as user, 0600."""
    primary = config.primary
    assert primary.host is not None  # noqa: S101 - required by config validation when enabled
    lines = []
    if primary.password:
        lines.append(
            passfile_line(primary.host, primary.port, "*", primary.user, primary.password.reveal())
        )
    await write_passfile(passfile, lines, run_as)
