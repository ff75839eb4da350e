"""Retention decisions (pure) and the deleting step, table-driven."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, tzinfo
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from backup_files import publish_real_backup
from pgserver import PgServer

from laterbased.backup.prune import RetentionPolicy, decide, prune
from laterbased.records.catalogue import GLOBALS_NAME, BackupRecord, Catalogue

NOW = datetime(2026, 11, 26, 13, 0, tzinfo=UTC)


def make_backups(
    root: Path, hours_ago: list[float], *, database: str = "Proj 1", uploaded: bool = True,
    size: int = 10, now: datetime = NOW, fmt: str = "custom",
) -> list[BackupRecord]:
    catalogue = Catalogue(root)
    catalogue.prepare()
    records = []
    for age in hours_ago:
        started = now - timedelta(hours=age)
        name = catalogue.file_name(database, fmt, started)
        partial = catalogue.new_partial(name)
        partial.write_bytes(b"x" * size)
        record = BackupRecord(
            database=database,
            file=name,
            directory=catalogue.database_dir(database, fmt),
            format=fmt,
            size=size,
            sha256="0" * 64,
            started=started,
            finished=started + timedelta(minutes=1),
            source="primary",
            uploaded_to="remote:x" if uploaded else None,
            uploaded_at=started + timedelta(minutes=2) if uploaded else None,
        )
        records.append(catalogue.publish(partial, record))
    return records


def kept_ages(decisions: list, now: datetime = NOW) -> list[float]:
    return sorted(
        round((now - d.record.started).total_seconds() / 3600, 1) for d in decisions if d.keep
    )


DAY = 24.0


@pytest.mark.parametrize(
    ("case", "hours_ago", "policy", "expected_kept"),
    [
        (
            "all old: min_keep keeps the 3 newest",
            [DAY * d for d in (10, 11, 12, 13, 14)],
            RetentionPolicy(retention_days=7, min_keep=3),
            [240.0, 264.0, 288.0],
        ),
        (
            "dumps failing for 10 days: the last good backups survive",
            [DAY * 10 + h for h in range(0, 48, 1)],
            RetentionPolicy(retention_days=7, min_keep=1),
            [240.0],
        ),
        (
            "fresh ones kept by age, old ones beyond min_keep deleted",
            [1, 2, 3, DAY * 8, DAY * 9],
            RetentionPolicy(retention_days=7, min_keep=2),
            [1.0, 2.0, 3.0],
        ),
        (
            "retention_days 0 still keeps min_keep",
            [1, 2, 3, 4],
            RetentionPolicy(retention_days=0, min_keep=2),
            [1.0, 2.0],
        ),
        (
            "daily tier keeps the newest of each of the last 3 days",
            [DAY * 8 + h for h in (0, 5)] + [DAY * 9 + h for h in (0, 5)]
            + [DAY * 10 + 1, DAY * 11 + 1],
            RetentionPolicy(retention_days=7, min_keep=1, keep_daily=3),
            [192.0, 216.0, 241.0],
        ),
        (
            "max_local_bytes deletes oldest but never the newest",
            [1, 2, 3, 4],
            RetentionPolicy(retention_days=7, min_keep=4, max_local_bytes=15),
            [1.0],
        ),
        (
            "max_local_bytes smaller than the newest backup alone still keeps the newest",
            [1, 2, 3],
            RetentionPolicy(retention_days=7, min_keep=3, max_local_bytes=5),
            [1.0],
        ),
        (
            "a backup dated 2 days ahead (clock ran fast) does not push out the newest real one",
            [-48, DAY * 10, DAY * 11],
            RetentionPolicy(retention_days=7, min_keep=1),
            [-48.0, 240.0],
        ),
        (
            "a backup dated ahead takes no hourly place",
            [-48, 1, 2, 3],
            RetentionPolicy(retention_days=0, min_keep=0, keep_hourly=2),
            [-48.0, 1.0, 2.0],
        ),
    ],
)
def test_retention_table(
    tmp_path: Path,
    case: str,
    hours_ago: list[float],
    policy: RetentionPolicy,
    expected_kept: list[float],
) -> None:
    records = make_backups(tmp_path, hours_ago)
    decisions = decide(records, policy, NOW, UTC)
    assert kept_ages(decisions) == expected_kept, case
    newest = max(records, key=lambda r: r.started)
    assert next(d for d in decisions if d.record is newest).keep, "newest always kept"


BERLIN = ZoneInfo("Europe/Berlin")
NEW_YORK = ZoneInfo("America/New_York")


@pytest.mark.parametrize(
    ("case", "zone", "now", "hours_ago", "keep_hourly", "expected_kept"),
    [
        (
            # 2026-10-25 03:00 CEST -> 02:00 CET: 00:30Z is 02:30 CEST, 01:30Z is 02:30 CET.
            "Berlin fall-back: 02:30 summer time and 02:30 winter time are two hours",
            BERLIN,
            datetime(2026, 10, 25, 3, 0, tzinfo=UTC),
            [0.5, 1.5, 2.5],
            3,
            [0.5, 1.5, 2.5],
        ),
        (
            # 2026-11-01 02:00 EDT -> 01:00 EST: 05:30Z is 01:30 EDT, 06:30Z is 01:30 EST.
            "New York fall-back: the repeated 01:xx hour keeps one backup each time",
            NEW_YORK,
            datetime(2026, 11, 1, 7, 0, tzinfo=UTC),
            [0.5, 1.5, 2.5, 3.5],
            3,
            [0.5, 1.5, 2.5],
        ),
        (
            # 2026-03-29 02:00 CET -> 03:00 CEST: 00:30Z is 01:30 CET, 01:30Z is 03:30 CEST.
            "Berlin spring-forward: the hours either side of the gap stay two",
            BERLIN,
            datetime(2026, 3, 29, 2, 0, tzinfo=UTC),
            [0.5, 1.5],
            2,
            [0.5, 1.5],
        ),
        (
            "two backups in one ordinary hour count as one hour",
            UTC,
            datetime(2026, 11, 26, 13, 0, tzinfo=UTC),
            [0.2, 0.7, 1.5, 2.5],
            2,
            [0.2, 1.5],
        ),
    ],
)
def test_hourly_tier_table(
    tmp_path: Path,
    case: str,
    zone: tzinfo,
    now: datetime,
    hours_ago: list[float],
    keep_hourly: int,
    expected_kept: list[float],
) -> None:
    records = make_backups(tmp_path, hours_ago, now=now)
    policy = RetentionPolicy(retention_days=0, min_keep=0, keep_hourly=keep_hourly)
    decisions = decide(records, policy, now, zone)
    assert kept_ages(decisions, now) == expected_kept, case


def test_the_globals_and_a_database_called_globals_each_keep_their_newest(
    tmp_path: Path,
) -> None:
    database = make_backups(tmp_path, [DAY * 10, DAY * 11], database=GLOBALS_NAME)
    globals_ = make_backups(tmp_path, [DAY * 9, DAY * 12], database=GLOBALS_NAME, fmt="globals")
    decisions = decide(
        database + globals_, RetentionPolicy(retention_days=7, min_keep=1), NOW, UTC
    )
    kept = {(d.record.format, d.record.file) for d in decisions if d.keep}
    assert kept == {("custom", database[0].file), ("globals", globals_[0].file)}


def test_not_uploaded_backups_are_kept_when_upload_is_configured(tmp_path: Path) -> None:
    records = make_backups(tmp_path, [DAY * 20, DAY * 21, DAY * 22, DAY * 23], uploaded=False)
    policy = RetentionPolicy(retention_days=7, min_keep=1, upload_enabled=True)
    decisions = decide(records, policy, NOW, UTC)
    assert all(d.keep for d in decisions)
    assert all("not-uploaded" in d.rules for d in decisions)
    no_upload = decide(records, RetentionPolicy(retention_days=7, min_keep=1), NOW, UTC)
    assert sum(d.keep for d in no_upload) == 1


def test_each_database_keeps_its_own_newest(tmp_path: Path) -> None:
    records = make_backups(tmp_path, [DAY * 30], database="a") + make_backups(
        tmp_path, [1, 2, 3, 4], database="b"
    )
    decisions = decide(records, RetentionPolicy(retention_days=7, min_keep=1), NOW, UTC)
    assert [d.rules for d in decisions if d.record.database == "a"] == [["newest", "min_keep"]]


def test_backup_whose_file_vanished_is_not_the_newest_good_one(tmp_path: Path) -> None:
    records = make_backups(tmp_path, [DAY * 20, DAY * 21])
    records[0].path.unlink()  # newest's data file gone
    decisions = decide(records, RetentionPolicy(retention_days=7, min_keep=1), NOW, UTC)
    assert [d.keep for d in decisions] == [False, True]


async def test_prune_deletes_only_our_backups_and_leaves_foreign_files(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    records = make_backups(tmp_path, [1, DAY * 10, DAY * 11, DAY * 12])
    foreign = records[0].directory / "resolve-export.drp"
    foreign.write_bytes(b"user's own file")
    old_foreign = tmp_path / "Proj%201" / "old.dump"
    old_foreign.write_bytes(b"no manifest")
    seen: set[Path] = set()
    policy = RetentionPolicy(retention_days=7, min_keep=2)
    outcome = await prune(Catalogue(tmp_path), policy, NOW, UTC, "prune-t", foreign_seen=seen)
    assert outcome.result == "success"
    assert len(outcome.deleted) == 2
    remaining = Catalogue(tmp_path).list_backups()
    assert [r.file for r in remaining] == [records[1].file, records[0].file]
    assert foreign.exists() and old_foreign.exists()
    assert foreign in seen and old_foreign in seen
    caplog.clear()
    await prune(Catalogue(tmp_path), policy, NOW, UTC, "prune-t2", foreign_seen=seen)
    assert "did not create" not in caplog.text, "foreign files are logged once"
    for record in outcome.deleted:
        assert not record.path.exists() and not record.manifest_path.exists()


@pytest.fixture
def work() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="laterbased-test-") as base:
        yield Path(base)


@pytest.mark.slow
async def test_retention_never_deletes_the_last_backup_of_a_database(
    primary: PgServer, work: Path
) -> None:
    """Every backup of a database judged damaged by verify (a damaged disk, or a verify that
    could not run: pg_restore missing, a timeout) and older than retention_days, while the
    dumps fail (primary down for a week): prune used to delete them all, leaving nothing to
    try. The newest one that exists stays."""
    catalogue = Catalogue(work / "backups")
    now = datetime.now(UTC)
    for days in (10, 9, 8):
        started = now - timedelta(days=days)
        record = publish_real_backup(primary, catalogue, "postgres", started=started)
        catalogue.mark_verified(record, False, "pg_restore --list timed out")
    policy = RetentionPolicy(retention_days=7, min_keep=3)
    outcome = await prune(catalogue, policy, now, UTC, "review-prune")
    left = catalogue.list_backups("postgres")
    assert [r.path.exists() for r in left] == [True], f"deleted: {outcome.deleted}"
    assert max(r.started for r in outcome.deleted) < left[0].started
