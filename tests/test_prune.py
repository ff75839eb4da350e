"""Retention decisions (pure) and the deleting step, table-driven."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from laterbased.backups import BackupRecord, Catalogue
from laterbased.jobs.prune import RetentionPolicy, decide, prune

NOW = datetime(2026, 11, 26, 13, 0, tzinfo=UTC)


def make_backups(
    root: Path, hours_ago: list[float], *, database: str = "Proj 1", uploaded: bool = True,
    size: int = 10,
) -> list[BackupRecord]:
    catalogue = Catalogue(root)
    catalogue.prepare()
    records = []
    for age in hours_ago:
        started = NOW - timedelta(hours=age)
        name = catalogue.file_name(database, "custom", started)
        partial = catalogue.new_partial(name)
        partial.write_bytes(b"x" * size)
        record = BackupRecord(
            database=database,
            file=name,
            directory=catalogue.database_dir(database),
            format="custom",
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
