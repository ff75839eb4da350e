"""What an old primary lacks (Resolve 17 and older ship PostgreSQL 9.5), and each fallback.

No 9.5 binaries can be had on these machines: each fallback is specified here as the pure
choice the daemon makes from the server's version, and the real 13/15 paths run in the
server tests."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest

from laterbased.config import load_config
from laterbased.monitor import queries
from laterbased.ops.check.checks import Facts, check_server_features
from laterbased.pg import sql
from laterbased.pg.features import (
    BASEBACKUP_SLOT,
    CONTROL_SYSTEM,
    FEATURES,
    IMMEDIATELY_RESERVE,
    SLOT_WAL_CAP,
    SLOT_WAL_STATUS,
    VERIFY_BACKUP,
    WAL_RECEIVER_VIEW,
    missing_features,
    supports,
)
from laterbased.pg.slot import create_slot_query
from laterbased.standby import configure
from laterbased.standby.bootstrap import BootstrapPlan, basebackup_argv, verify

PG95 = 90524
PG13 = 130023


@pytest.mark.parametrize(
    ("major", "missing"),
    [
        ("9.5", set(FEATURES)),
        ("9.6", {SLOT_WAL_STATUS, VERIFY_BACKUP, SLOT_WAL_CAP}),
        ("12", {SLOT_WAL_STATUS, VERIFY_BACKUP, SLOT_WAL_CAP}),
        ("13", set()),
        ("15", set()),
    ],
)
def test_each_major_lacks_exactly_the_features_added_after_it(
    major: str, missing: set[object]
) -> None:
    assert set(missing_features(major)) == missing
    for feature in FEATURES:
        assert supports(major, feature) == (feature not in missing)


def plan(major: str, bindir: Path) -> BootstrapPlan:
    link = configure.PrimaryLink(
        host="resolve.local",
        port=5432,
        user="postgres",
        passfile=Path("/var/lib/laterbased/standby-run/primary.pgpass"),
        slot_name="laterbase_standby_slot",
        application_name="laterbased",
    )
    return BootstrapPlan(
        bindir=bindir, major=major, data_dir=Path("/data"), link=link, checkpoint="fast",
        run_as=None,
    )


def test_a_95_base_backup_runs_without_the_slot_option_it_does_not_have() -> None:
    old = basebackup_argv(plan("9.5", Path("/usr/lib/postgresql/9.5/bin")), Path("/staging"))
    new = basebackup_argv(plan("13", Path("/usr/lib/postgresql/13/bin")), Path("/staging"))
    assert "-S" not in old and "laterbase_standby_slot" not in old
    assert ["-S", "laterbase_standby_slot"] == new[new.index("-S") : new.index("-S") + 2]
    assert ["-X", "stream"] == old[old.index("-X") : old.index("-X") + 2], "WAL still streamed"


async def test_a_95_base_backup_is_not_verified_with_a_tool_that_cannot_read_it() -> None:
    """The real pg_verifybackup (13+) is there, but a 9.5 backup has no manifest: running it
    would fail the bootstrap; it must be skipped."""
    bindir = next(
        (p for p in sorted(Path("/usr/lib/postgresql").glob("*/bin"))
         if (p / "pg_verifybackup").exists()),
        None,
    )
    assert bindir is not None, "no pg_verifybackup installed (run scripts/setup)"
    staging = Path(tempfile.mkdtemp(prefix="laterbased-verify-95-"))
    try:
        await verify(plan("9.5", bindir), staging)  # would raise JobFailed if it ran
    finally:
        staging.rmdir()


def test_a_95_slot_is_created_without_immediately_reserve() -> None:
    assert create_slot_query(PG95) == sql.CREATE_PHYSICAL_SLOT_PRE96
    assert "immediately_reserve" not in create_slot_query(PG95)
    assert "immediately_reserve => true" in create_slot_query(PG13)


def test_a_95_standby_has_no_wal_receiver_view_to_ask() -> None:
    assert queries.wal_receiver(PG95) is None
    query = queries.wal_receiver(PG13)
    assert query is not None and "pg_stat_wal_receiver" in query


def test_slot_danger_before_13_reads_no_wal_status_or_safe_wal_size() -> None:
    old = queries.replication_slot(PG95)
    assert "NULL::text AS wal_status" in old and "NULL::bigint AS safe_wal_size" in old
    assert "pg_xlog_location_diff" in old or "pg_current_xlog" in old, "9.5 has no *_wal_* names"
    new = queries.replication_slot(PG13)
    assert "NULL::text AS wal_status" not in new


async def test_check_names_every_feature_a_95_primary_lacks_and_the_fallback() -> None:
    config = load_config(None, {"PRIMARY_HOST": "127.0.0.1"})
    result = await check_server_features(Facts(config=config, version_num=PG95))
    assert result is not None and result.status == "WARN"
    for feature in (BASEBACKUP_SLOT, IMMEDIATELY_RESERVE, WAL_RECEIVER_VIEW, CONTROL_SYSTEM,
                    SLOT_WAL_STATUS, VERIFY_BACKUP, SLOT_WAL_CAP):
        assert feature.name in result.message
        assert feature.without in result.message
    assert "Resolve 17 and older" in result.hint
    fine = await check_server_features(Facts(config=config, version_num=PG13))
    assert fine is not None and fine.status == "OK"

