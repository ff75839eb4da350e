"""Our replication slot vanished from the primary while the standby runs: put it back.

Someone dropped it (a DBA freeing disk, a cleanup script, a restored primary). Without it the
primary's WAL sender refuses our standby ("replication slot ... does not exist") and nothing
keeps the WAL the standby still needs. The supervisor calls :meth:`SlotGuard.check` at every
liveness check; it reads what the monitor last saw on the primary and, when the slot is gone,
creates it again (WAL reserved at once) and says so. The standby's WAL receiver reconnects by
itself within ``wal_retrieve_retry_interval`` (5 s by default).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

import asyncpg

from laterbased.config import Config
from laterbased.core.state import State
from laterbased.errors import RefuseToRun
from laterbased.pg import sql
from laterbased.pg.connect import PgUnavailable, connect_primary
from laterbased.pg.slot import ensure_physical_slot
from laterbased.records import identity

logger = logging.getLogger(__name__)

# After a failed attempt (no privilege, no free slot, ...), wait this many monitor intervals.
RETRY_AFTER_INTERVALS = 5


class SlotGuard:
    """Remembers what it did, so one missing-slot observation leads to one repair."""

    def __init__(self) -> None:
        self._acted_at = 0.0
        self._failed = False

    def slot_missing(self, state: State, config: Config) -> bool:
        """True when the monitor's newest look at the primary found our slot absent."""
        primary = state.primary
        slot = primary.slot
        if not primary.reachable or primary.in_recovery or slot is None or slot.exists:
            return False
        if state.primary_is_stranger:
            return False  # another cluster at the primary's address: not ours to touch
        if slot.name != config.standby.slot_name:
            return False  # facts from before a reload that renamed the slot
        # Facts gathered before our last attempt cannot tell whether it worked.
        return primary.last_ok is not None and primary.last_ok > self._acted_at

    async def check(self, state: State, config: Config) -> bool:
        """Recreate the slot when the primary lost it; True when this call created it."""
        if not self.slot_missing(state, config):
            return False
        retry_after = RETRY_AFTER_INTERVALS * config.monitor.interval
        if self._failed and time.time() - self._acted_at < retry_after:
            return False
        self._acted_at = time.time()
        name = config.standby.slot_name
        where = f"{config.primary.host}:{config.primary.port}"
        try:
            created = await _create_slot(config)
        except (PgUnavailable, RefuseToRun, OSError, TimeoutError, asyncpg.PostgresError) as exc:
            self._failed = True
            message = (
                f"replication slot {name} vanished from the primary {where} while the standby "
                f"ran, and recreating it failed: {exc}. Create it on the primary: SELECT "
                f"pg_create_physical_replication_slot('{name}', true); if the standby then "
                "logs 'requested WAL segment ... has already been removed', re-clone it"
            )
            logger.error("%s", message)
            state.record_event("error", message)
            return False
        self._failed = False
        if not created:
            return False  # back already (someone else recreated it)
        message = (
            f"replication slot {name} vanished from the primary {where} while the standby ran "
            "(dropped by someone?); recreated it. The standby reconnects by itself; if it "
            "reports WAL already removed, it needs a re-clone"
        )
        logger.warning("%s", message)
        state.record_event("warning", message)
        return True


async def _create_slot(config: Config) -> bool:
    primary = config.primary
    conn = await connect_primary(
        primary, application_name=f"{config.standby.application_name}_supervisor"
    )
    try:
        async with asyncio.timeout(primary.connect_timeout + 2 * config.monitor.query_timeout):
            # This connection may reach another server than the monitor's last poll did.
            version_num = int(await conn.fetchval(sql.SERVER_VERSION_NUM))
            observed = await identity.read_primary_identifier(
                conn, config, version_num, config.monitor.query_timeout
            )
            await identity.check_identity(config, observed, identity.primary_address(config))
            return await ensure_physical_slot(conn, config.standby.slot_name)
    except TimeoutError:
        conn.terminate()  # close() would wait for the answer that never comes
        raise
    finally:
        with contextlib.suppress(TimeoutError):  # on timeout close() terminates it
            await asyncio.shield(conn.close(timeout=config.monitor.query_timeout))
