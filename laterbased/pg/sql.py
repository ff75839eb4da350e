"""SQL the daemon runs, as named constants (asyncpg ``$n`` parameters).

Unless marked otherwise these need PostgreSQL 10+ (``wal``/``lsn`` names). For 9.x
primaries (Resolve's bundled 9.5) the monitor builds version-specific queries in
:mod:`laterbased.monitor.queries`.
"""

from __future__ import annotations

SERVER_VERSION_NUM = "SELECT current_setting('server_version_num')::int"

# PostgreSQL 9.6+. On 9.5 use IDENTIFY_SYSTEM on a replication connection or pg_controldata.
SYSTEM_IDENTIFIER = "SELECT system_identifier FROM pg_control_system()"

IS_IN_RECOVERY = "SELECT pg_is_in_recovery()"

# $1 = slot name. wal_status / safe_wal_size exist from PostgreSQL 13 on.
REPLICATION_SLOT = """
SELECT slot_name, slot_type, temporary, active, active_pid, restart_lsn,
       wal_status, safe_wal_size,
       CASE WHEN restart_lsn IS NULL THEN NULL
            WHEN pg_is_in_recovery() THEN pg_wal_lsn_diff(pg_last_wal_replay_lsn(), restart_lsn)
            ELSE pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn)
       END AS retained_wal_bytes
FROM pg_replication_slots
WHERE slot_name = $1
"""

# Before PostgreSQL 13: no wal_status / safe_wal_size.
REPLICATION_SLOT_PRE13 = """
SELECT slot_name, slot_type, temporary, active, active_pid, restart_lsn,
       NULL::text AS wal_status, NULL::bigint AS safe_wal_size,
       CASE WHEN restart_lsn IS NULL THEN NULL
            ELSE pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn)
       END AS retained_wal_bytes
FROM pg_replication_slots
WHERE slot_name = $1
"""

# $1 = slot name; reserve WAL now so nothing is lost before the base backup starts.
CREATE_PHYSICAL_SLOT = (
    "SELECT slot_name FROM pg_create_physical_replication_slot($1, immediately_reserve => true)"
)

# $1 = slot name; what ensure_physical_slot needs to decide whether to reuse a slot.
REPLICATION_SLOT_KIND = "SELECT slot_type, temporary FROM pg_replication_slots WHERE slot_name = $1"
# PostgreSQL 9.x has no temporary slots.
REPLICATION_SLOT_KIND_PRE10 = (
    "SELECT slot_type, false AS temporary FROM pg_replication_slots WHERE slot_name = $1"
)
# PostgreSQL 9.5 cannot reserve WAL at creation; the first standby connection does.
CREATE_PHYSICAL_SLOT_PRE96 = "SELECT slot_name FROM pg_create_physical_replication_slot($1)"

DROP_SLOT = "SELECT pg_drop_replication_slot($1)"

CURRENT_WAL_LSN = "SELECT pg_current_wal_lsn()"

# $1 = application_name of the standby's WAL receiver.
STAT_REPLICATION = """
SELECT pid, usename, application_name, client_addr::text AS client_addr, state,
       sent_lsn, write_lsn, flush_lsn, replay_lsn,
       pg_wal_lsn_diff(pg_current_wal_lsn(), replay_lsn) AS replay_lag_bytes,
       EXTRACT(EPOCH FROM replay_lag)::float8 AS replay_lag_seconds,
       sync_state, reply_time
FROM pg_stat_replication
WHERE application_name = $1
ORDER BY backend_start DESC
LIMIT 1
"""

STANDBY_STATUS = """
SELECT pg_is_in_recovery() AS in_recovery,
       pg_last_wal_receive_lsn() AS receive_lsn,
       pg_last_wal_replay_lsn() AS replay_lsn,
       pg_last_xact_replay_timestamp() AS last_replay_timestamp
"""

LAST_WAL_RECEIVE_LSN = "SELECT pg_last_wal_receive_lsn()"
LAST_WAL_REPLAY_LSN = "SELECT pg_last_wal_replay_lsn()"
LAST_XACT_REPLAY_TIMESTAMP = "SELECT pg_last_xact_replay_timestamp()"

STAT_WAL_RECEIVER = """
SELECT pid, status, receive_start_lsn, written_lsn, flushed_lsn, received_tli,
       last_msg_send_time, last_msg_receipt_time, latest_end_lsn, latest_end_time,
       slot_name, sender_host, sender_port
FROM pg_stat_wal_receiver
"""

# Databases one can connect to, templates excluded, ordered by name.
CONNECTABLE_DATABASES = """
SELECT datname FROM pg_database
WHERE datallowconn AND NOT datistemplate
ORDER BY datname
"""

# A database laterbased restored carries a comment starting with this (COMMENT ON DATABASE,
# seen in pgAdmin and psql's \l+): automatic discovery leaves it out of the backups.
RESTORED_MARK = "laterbased: restored"
# Databases so marked ($1: RESTORED_MARK; no starts_with() before PostgreSQL 11).
RESTORED_DATABASES = """
SELECT datname FROM pg_database
WHERE left(coalesce(shobj_description(oid, 'pg_database'), ''), length($1)) = $1
"""

# Run inside each candidate database: is it a DaVinci Resolve project library?
# The login role that owns each of the given databases: Resolve creates a library as the
# user its workstations log in with.
LOGIN_OWNERS = """
SELECT d.datname, r.rolname FROM pg_database d JOIN pg_roles r ON r.oid = d.datdba
WHERE d.datname = ANY($1::text[]) AND r.rolcanlogin
"""

IS_RESOLVE_DATABASE = """SELECT to_regclass('public."SM_Project"') IS NOT NULL"""

DATABASE_ENCODING = "SELECT pg_encoding_to_char(encoding) FROM pg_database WHERE datname = $1"
