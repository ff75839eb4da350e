"""One look at the primary and one at our local server, turned into fresh state objects.

A probe never writes the shared state itself: it returns a new :class:`PrimaryState` or
:class:`LocalServerState` that the worker swaps in whole, so a reader never sees half a poll.
Every query has its own timeout; the caller owns the connection.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import asyncpg

from laterbased.config import Config
from laterbased.core.state import LocalServerState, PrimaryState, SlotState
from laterbased.monitor import queries

logger = logging.getLogger(__name__)


async def server_version_num(conn: Any, timeout: float) -> int:  # noqa: ASYNC109
    return int(await conn.fetchval(queries.VERSION_NUM, timeout=timeout))


async def probe_primary(
    conn: Any,
    config: Config,
    version_num: int,
    timeout: float,  # noqa: ASYNC109 - per-query timeout handed to asyncpg
) -> PrimaryState:
    """Reachability, version, system identifier, WAL position, our slot and our standby's
    pg_stat_replication row. Raises on connection trouble; missing privileges only blank
    the affected facts."""
    facts = PrimaryState(reachable=True, last_ok=time.time(), server_version_num=version_num)
    position = await conn.fetchrow(queries.position(version_num), timeout=timeout)
    facts.in_recovery = bool(position["in_recovery"])
    facts.current_lsn = position["lsn"]
    facts.system_identifier = await _system_identifier(conn, version_num, timeout)

    slot = SlotState(name=config.standby.slot_name)
    row = await conn.fetchrow(
        queries.replication_slot(version_num), config.standby.slot_name, timeout=timeout
    )
    if row is not None:
        slot.exists = True
        slot.active = bool(row["active"])
        slot.restart_lsn = row["restart_lsn"]
        slot.retained_bytes = None if row["retained_bytes"] is None else int(row["retained_bytes"])
        slot.wal_status = row["wal_status"]
        slot.safe_wal_size = None if row["safe_wal_size"] is None else int(row["safe_wal_size"])
    facts.slot = slot

    replication = await conn.fetchrow(
        queries.stat_replication(version_num), config.standby.application_name, timeout=timeout
    )
    if replication is not None:
        # Without pg_read_all_stats (pg_monitor) the row is visible but its state is NULL.
        facts.replication_state = replication["state"] or "unknown"
        facts.sent_lsn = replication["sent_lsn"]
        facts.replay_lsn = replication["replay_lsn"]
        facts.write_lag_seconds = replication["write_lag"]
        facts.flush_lag_seconds = replication["flush_lag"]
        facts.replay_lag_seconds = replication["replay_lag"]
    return facts


async def _system_identifier(
    conn: Any, version_num: int, timeout: float  # noqa: ASYNC109
) -> str | None:
    if version_num < 90600:
        return None
    try:
        value = await conn.fetchval(queries.SYSTEM_IDENTIFIER, timeout=timeout)
    except asyncpg.InsufficientPrivilegeError:
        return None
    return None if value is None else str(value)


async def probe_local(
    conn: Any, version_num: int, timeout: float  # noqa: ASYNC109
) -> LocalServerState:
    """Recovery state, WAL receiver, received/replayed positions of our own server."""
    facts = LocalServerState(reachable=True, last_ok=time.time())
    row = await conn.fetchrow(queries.standby_status(version_num), timeout=timeout)
    facts.in_recovery = bool(row["in_recovery"])
    facts.replay_paused = row["replay_paused"]
    facts.receive_lsn = row["receive_lsn"]
    facts.replay_lsn = row["replay_lsn"]
    facts.last_replay_timestamp = row["last_replay_timestamp"]
    facts.current_lsn = row["current_lsn"]
    receiver_query = queries.wal_receiver(version_num)
    if facts.in_recovery and receiver_query is not None:
        receiver = await conn.fetchrow(receiver_query, timeout=timeout)
        if receiver is None:
            # No WAL receiver process: the standby is not connected to any primary.
            facts.receiver_status = "stopped"
        elif receiver["status"] is None:
            # The row exists but our role may not read it (needs pg_monitor).
            facts.receiver_status = "unknown"
        else:
            facts.receiver_status = receiver["status"]
            facts.sender_host = receiver["sender_host"]
    return facts
