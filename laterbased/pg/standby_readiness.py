"""Can the local standby be read instead of the primary (a dump, a base backup)?

Reading the standby spares the Resolve server the load; it is worth it only while the standby
is a faithful copy: the same cluster, in recovery, its WAL receiver streaming, replay running
and at most ``max_lag_bytes`` behind what the primary has flushed. :func:`why_not_ready`
answers with the reason it is not, or None; the callers fall back to the primary and say why.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from laterbased.units import format_size

# pg_stat_wal_receiver is 9.6+, pg_is_wal_replay_paused()/pg_last_wal_replay_lsn() are 10+.
MIN_VERSION_NUM = 100000
STANDBY_FACTS = """
SELECT pg_is_in_recovery() AS in_recovery,
       (SELECT status FROM pg_stat_wal_receiver LIMIT 1) AS receiver,
       (SELECT pid FROM pg_stat_wal_receiver LIMIT 1) AS receiver_pid,
       pg_is_wal_replay_paused() AS paused
"""
# Where the primary has *inserted* WAL, not where it flushed it: with synchronous_commit off
# a commit is visible on the primary before its WAL is flushed (and sent to standbys), so a
# standby caught up with the flush position could still miss it. The WAL writer flushes it
# within a few wal_writer_delay; the catch-up below waits for that.
PRIMARY_WAL_LSN = "SELECT pg_current_wal_insert_lsn()::text"
# $1 = an LSN of the primary: how many bytes of WAL up to it the standby has not replayed.
REPLAY_BEHIND = (
    "SELECT greatest(pg_wal_lsn_diff($1::text::pg_lsn, pg_last_wal_replay_lsn()), 0)::bigint"
)
CATCH_UP_POLL = 0.1


async def why_not_ready(
    standby: Any,
    primary: Any,
    *,
    standby_identifier: str | None,
    primary_identifier: str | None,
    max_lag_bytes: int,
    catch_up: float = 0.0,
) -> str | None:
    """None when the standby behind the connection ``standby`` can be read instead of the
    primary behind ``primary``; else why not, for the log. With ``catch_up`` > 0 it must
    also replay, within that many seconds, all the WAL the primary had written when asked
    (also commits not flushed yet): a read then sees every transaction committed before
    it, as on the primary."""
    version_num = int(await standby.fetchval("SELECT current_setting('server_version_num')"))
    if version_num < MIN_VERSION_NUM:
        return f"it runs PostgreSQL {version_num}; reading a standby needs 10 or newer"
    if standby_identifier is None or primary_identifier is None:
        return "its system identifier or the primary's cannot be read"
    if standby_identifier != primary_identifier:
        return (
            f"it is another cluster (system identifier {standby_identifier}, the primary's "
            f"{primary_identifier})"
        )
    facts = await standby.fetchrow(STANDBY_FACTS)
    if not facts["in_recovery"]:
        return "it is not in recovery (not a standby)"
    # Without pg_read_all_stats (a REPLICATION role that is not a superuser) the view shows
    # the receiver's pid but not its status: then the lag below is the proof it streams.
    hidden = facts["receiver"] is None and facts["receiver_pid"] is not None
    if facts["receiver"] != "streaming" and not hidden:
        return f"it is not streaming from the primary (wal receiver: {facts['receiver'] or 'none'})"
    target = str(await primary.fetchval(PRIMARY_WAL_LSN))
    behind = int(await standby.fetchval(REPLAY_BEHIND, target))
    if behind > max_lag_bytes:
        return (
            f"it is {format_size(behind)} behind the primary (limit monitor.max_lag_bytes "
            f"{format_size(max_lag_bytes)})"
        )
    if facts["paused"]:
        return "WAL replay is paused on it (someone ran pg_wal_replay_pause())"
    deadline = time.monotonic() + catch_up
    while catch_up > 0 and behind > 0:
        if time.monotonic() >= deadline:
            return (
                f"it did not replay the primary's WAL up to {target} within {catch_up:.0f}s "
                f"({format_size(behind)} to go)"
            )
        await asyncio.sleep(CATCH_UP_POLL)
        behind = int(await standby.fetchval(REPLAY_BEHIND, target))
    return None
