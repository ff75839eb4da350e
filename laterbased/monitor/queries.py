"""The monitor's SQL, per PostgreSQL version.

PostgreSQL 10 renamed every ``xlog``/``location`` function and column to ``wal``/``lsn``;
Resolve ≤ 17 ships 9.5, so each query is built for the server's ``server_version_num``.
LSNs are returned as text (``X/Y``) and parsed in :mod:`laterbased.monitor.lsn`.
"""

# Queries are assembled only from the constant fragments below, never from input: S608 is
# a false alarm here. Values (slot name, application name) always travel as $n parameters.
# ruff: noqa: S608

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class WalNames:
    current_lsn: str
    receive_lsn: str
    replay_lsn: str
    lsn_diff: str
    column_suffix: str  # pg_stat_replication: sent_lsn (10+) or sent_location (9.x)


def wal_names(version_num: int) -> WalNames:
    if version_num >= 100000:
        return WalNames(
            "pg_current_wal_lsn()",
            "pg_last_wal_receive_lsn()",
            "pg_last_wal_replay_lsn()",
            "pg_wal_lsn_diff",
            "lsn",
        )
    return WalNames(
        "pg_current_xlog_location()",
        "pg_last_xlog_receive_location()",
        "pg_last_xlog_replay_location()",
        "pg_xlog_location_diff",
        "location",
    )


VERSION_NUM = "SELECT current_setting('server_version_num')::int"

# pg_control_system() exists from 9.6 on; callers treat a failure as "unknown".
SYSTEM_IDENTIFIER = "SELECT system_identifier::text FROM pg_control_system()"


def position(version_num: int) -> str:
    """Where this server's WAL is: current insert position on a primary, replay position
    on a standby; and whether it is in recovery."""
    names = wal_names(version_num)
    return f"""
SELECT pg_is_in_recovery() AS in_recovery,
       (CASE WHEN pg_is_in_recovery() THEN {names.replay_lsn}
             ELSE {names.current_lsn} END)::text AS lsn
"""


def replication_slot(version_num: int) -> str:
    """$1 = slot name: our slot as the primary sees it, with the WAL it holds back."""
    names = wal_names(version_num)
    wal_status = "wal_status" if version_num >= 130000 else "NULL::text AS wal_status"
    safe_size = "safe_wal_size" if version_num >= 130000 else "NULL::bigint AS safe_wal_size"
    here = (
        f"CASE WHEN pg_is_in_recovery() THEN {names.replay_lsn} ELSE {names.current_lsn} END"
    )
    return f"""
SELECT slot_type, active, restart_lsn::text AS restart_lsn, {wal_status}, {safe_size},
       CASE WHEN restart_lsn IS NULL THEN NULL
            ELSE {names.lsn_diff}({here}, restart_lsn)::bigint END AS retained_bytes
FROM pg_replication_slots
WHERE slot_name = $1
"""


def stat_replication(version_num: int) -> str:
    """$1 = application_name: the newest pg_stat_replication row of our standby."""
    suffix = wal_names(version_num).column_suffix
    if version_num >= 100000:
        lags = """EXTRACT(EPOCH FROM write_lag)::float8 AS write_lag,
       EXTRACT(EPOCH FROM flush_lag)::float8 AS flush_lag,
       EXTRACT(EPOCH FROM replay_lag)::float8 AS replay_lag"""
    else:
        lags = "NULL::float8 AS write_lag, NULL::float8 AS flush_lag, NULL::float8 AS replay_lag"
    return f"""
SELECT state,
       sent_{suffix}::text AS sent_lsn, write_{suffix}::text AS write_lsn,
       flush_{suffix}::text AS flush_lsn, replay_{suffix}::text AS replay_lsn,
       {lags}
FROM pg_stat_replication
WHERE application_name = $1
ORDER BY backend_start DESC
LIMIT 1
"""


def standby_status(version_num: int) -> str:
    """Our local server: recovery, received and replayed WAL, last replayed commit time."""
    names = wal_names(version_num)
    # Asked only in recovery: outside it the function raises "recovery is not in progress".
    paused = "pg_is_wal_replay_paused()" if version_num >= 100000 else "pg_is_xlog_replay_paused()"
    return f"""
SELECT pg_is_in_recovery() AS in_recovery,
       (CASE WHEN pg_is_in_recovery() THEN {paused} END) AS replay_paused,
       {names.receive_lsn}::text AS receive_lsn,
       {names.replay_lsn}::text AS replay_lsn,
       EXTRACT(EPOCH FROM pg_last_xact_replay_timestamp())::float8 AS last_replay_timestamp,
       (CASE WHEN pg_is_in_recovery() THEN NULL ELSE {names.current_lsn} END)::text
           AS current_lsn
"""


def wal_receiver(version_num: int) -> str | None:
    """pg_stat_wal_receiver (9.6+; sender_host 11+). Without pg_read_all_stats (pg_monitor)
    only ``pid`` is visible; the other columns read NULL."""
    if version_num < 90600:
        return None
    sender = "sender_host" if version_num >= 110000 else "NULL::text AS sender_host"
    return f"SELECT pid, status, {sender} FROM pg_stat_wal_receiver"
