"""What each PostgreSQL major offers that laterbased uses, and what it does without it.

Resolve 18-20 ship PostgreSQL 13, Resolve 17 and older ship 9.5: the daemon must say what an
old primary lacks (``check``) and take the fallback, never fail on a missing function. Each
fallback below is chosen by :func:`supports` at the place that needs it.
"""

from __future__ import annotations

from dataclasses import dataclass

from laterbased.pg.binaries import major_key


@dataclass(frozen=True)
class Feature:
    """A server or tool feature, the first major that has it, and laterbased's fallback."""

    name: str
    since: str  # first major with it, e.g. "9.6"
    without: str  # what laterbased does on an older major


BASEBACKUP_SLOT = Feature(
    "pg_basebackup --slot",
    "9.6",
    "the base backup runs without the slot, so WAL written during the copy is kept only by "
    "wal_keep_segments on the primary (set it to 64 or more)",
)
IMMEDIATELY_RESERVE = Feature(
    "pg_create_physical_replication_slot(immediately_reserve)",
    "9.6",
    "the slot keeps WAL only from the standby's first connection",
)
WAL_RECEIVER_VIEW = Feature(
    "pg_stat_wal_receiver",
    "9.6",
    "the standby's receiver is judged from pg_last_xlog_receive_location() alone (no status, "
    "no sender address)",
)
CONTROL_SYSTEM = Feature(
    "pg_control_system()",
    "9.6",
    "the system identifier is read with IDENTIFY_SYSTEM over a replication connection",
)
SLOT_WAL_STATUS = Feature(
    "pg_replication_slots.wal_status / safe_wal_size",
    "13",
    "slot danger is judged from the retained WAL bytes alone",
)
VERIFY_BACKUP = Feature(
    "pg_verifybackup",
    "13",
    "a new standby's base backup is not checked against a backup manifest",
)
SLOT_WAL_CAP = Feature(
    "max_slot_wal_keep_size",
    "13",
    "nothing caps the WAL an abandoned slot retains: watch laterbased's slot alerts",
)

FEATURES: tuple[Feature, ...] = (
    BASEBACKUP_SLOT,
    IMMEDIATELY_RESERVE,
    WAL_RECEIVER_VIEW,
    CONTROL_SYSTEM,
    SLOT_WAL_STATUS,
    VERIFY_BACKUP,
    SLOT_WAL_CAP,
)


def supports(major: str, feature: Feature) -> bool:
    """Whether PostgreSQL ``major`` ("9.5", "13") has ``feature``."""
    return major_key(major) >= major_key(feature.since)


def missing_features(major: str) -> list[Feature]:
    """The features laterbased uses that ``major`` lacks, oldest first."""
    return [feature for feature in FEATURES if not supports(major, feature)]
