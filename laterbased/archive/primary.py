"""What the archive needs from the primary: its major and identity, our slot, a passfile."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from dataclasses import dataclass
from pathlib import Path

from laterbased.config import Config, PrimaryConfig
from laterbased.core.state import StandbyState
from laterbased.pg import sql
from laterbased.pg.binaries import major_from_version_num
from laterbased.pg.connect import PgUnavailable, connect_primary
from laterbased.pg.conninfo import build_conninfo
from laterbased.pg.passfile import passfile_line, write_passfile
from laterbased.pg.slot import ensure_physical_slot
from laterbased.records import identity

APPLICATION_NAME = "laterbased_archive"


@dataclass(frozen=True)
class PrimaryFacts:
    version_num: int
    major: str
    server_version: str
    system_identifier: str | None
    segment_size: int
    # The archive's slot was missing and this call created it (dropped on the primary?).
    slot_created: bool = False


def archive_server(config: Config, standby: StandbyState) -> PrimaryConfig:
    """The server the archive streams from: the configured primary, or our own standby
    once promoted (after a failover it is the primary of the new world, and the archive
    follows it onto its new timeline). The promoted server is reached where laterbased
    reaches it (loopback, the port it runs on now) with the primary's login: it holds the
    primary's roles and passwords (the dump job does the same, backup/runner.py)."""
    if not config.standby.enabled or standby.role != "primary":
        return config.primary
    return dataclasses.replace(
        config.primary,
        host=config.standby.connect_host,
        port=standby.port or config.standby.promoted_port,
        sslmode="prefer",
    )


async def inspect_primary(
    config: Config, *, ensure_slot: bool, server: PrimaryConfig | None = None
) -> PrimaryFacts:
    """Version, identity (never archive a stranger: records/identity.py), segment size, and
    (``ensure_slot``) the archive's physical slot, created with WAL reserved at once.
    ``server``: the one to ask (default the configured primary)."""
    primary = server or config.primary
    conn = await connect_primary(primary, application_name=APPLICATION_NAME)
    budget = 4 * config.monitor.query_timeout
    try:
        async with asyncio.timeout(budget):
            version_num = int(await conn.fetchval(sql.SERVER_VERSION_NUM))
            server_version = str(await conn.fetchval("SELECT current_setting('server_version')"))
            segment_size = int(
                await conn.fetchval(
                    "SELECT setting::bigint * CASE unit WHEN 'B' THEN 1 WHEN '8kB' THEN 8192 "
                    "WHEN 'MB' THEN 1048576 ELSE 1 END FROM pg_settings "
                    "WHERE name = 'wal_segment_size'"
                )
            )
            sysid = str(await conn.fetchval(sql.SYSTEM_IDENTIFIER))
            await identity.check_identity(config, sysid, f"{primary.host}:{primary.port}")
            slot_created = False
            if ensure_slot:
                slot_created = await ensure_physical_slot(conn, config.pitr.slot_name)
    except TimeoutError:
        conn.terminate()
        raise PgUnavailable(
            f"the primary {primary.host}:{primary.port} accepted our login but did not "
            f"answer within {budget:g}s",
            reason="timeout",
        ) from None
    finally:
        with contextlib.suppress(TimeoutError):
            await asyncio.shield(conn.close(timeout=config.monitor.query_timeout))
    return PrimaryFacts(
        version_num,
        major_from_version_num(version_num),
        server_version,
        sysid,
        segment_size,
        slot_created,
    )


async def renew_slot(config: Config, server: PrimaryConfig, release_wait: float = 10.0) -> None:
    """Drop the archive's slot on ``server`` and create it again, WAL reserved from the
    server's current position. For when the WAL the slot points at is gone: pg_receivewal
    reports the position it asks to start from as received, which moves a physical slot
    back there, and a fresh pg_receivewal (15 and later start at the slot's position) would
    ask for the lost WAL again. Waits up to ``release_wait`` seconds for the walsender of
    the pg_receivewal that just failed to let go of the slot."""
    conn = await connect_primary(server, application_name=APPLICATION_NAME)
    name = config.pitr.slot_name
    try:
        async with asyncio.timeout(release_wait + 4 * config.monitor.query_timeout):
            deadline = asyncio.get_running_loop().time() + release_wait
            while await conn.fetchval(
                "SELECT active FROM pg_replication_slots WHERE slot_name = $1", name
            ):
                if asyncio.get_running_loop().time() > deadline:
                    break
                await asyncio.sleep(0.2)
            await conn.execute(
                "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots "
                "WHERE slot_name = $1",
                name,
            )
            await ensure_physical_slot(conn, name)
    finally:
        with contextlib.suppress(TimeoutError):
            await asyncio.shield(conn.close(timeout=config.monitor.query_timeout))


async def write_primary_passfile(
    config: Config, path: Path, server: PrimaryConfig | None = None
) -> None:
    """A 0600 passfile for pg_receivewal / pg_basebackup: the password never goes in argv."""
    primary = server or config.primary
    lines = []
    if primary.password and primary.host:
        lines.append(
            passfile_line(primary.host, primary.port, "*", primary.user, primary.password.reveal())
        )
    await write_passfile(path, lines, None)


def primary_conninfo(
    config: Config, passfile: Path, suffix: str, server: PrimaryConfig | None = None
) -> str:
    primary = server or config.primary
    return build_conninfo(
        host=primary.host,
        port=primary.port,
        user=primary.user,
        passfile=str(passfile),
        sslmode=primary.sslmode,
        connect_timeout=max(1, int(primary.connect_timeout)),
        application_name=f"{APPLICATION_NAME}_{suffix}",
    )
