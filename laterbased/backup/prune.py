"""Retention: decide which local backups to keep (a pure function), then delete the rest.

A backup is kept when any rule keeps it; :func:`decide` says which rules keep each one, so
``laterbased backups list`` can show it. Rules, per database:

* ``newest``: the newest good backup, always (even with ``max_local_bytes``); when none is
  good, the newest backup whose file exists (the last copy is never deleted). A backup dated
  in the future (more than ``FUTURE_TOLERANCE`` after now: a clock that ran fast) is never
  the newest and counts for no ``min_keep`` or hourly/... place; ``age`` keeps it;
* ``min_keep``: the ``backup.min_keep`` newest good backups, whatever their age;
* ``age``: started less than ``backup.retention_days`` days ago;
* ``hourly`` / ``daily`` / ``weekly`` / ``monthly``: the newest backup of each of the last N
  hours/days/ISO weeks/months that have one (in the schedule's time zone; the hour repeated
  at a DST fall-back counts twice);
* ``not-uploaded``: upload is configured and this backup has no off-site copy yet.

``max_local_bytes`` then removes the oldest kept backups (never a ``newest``) until the total
fits: the only way a not-uploaded backup is deleted, and it is logged as an error.
Only backups with our manifest are considered; other files are never touched.
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta, tzinfo
from pathlib import Path

from laterbased.config import BackupConfig
from laterbased.core.state import State
from laterbased.records.catalogue import BackupRecord, Catalogue

logger = logging.getLogger(__name__)

# Rules in the order ``backups list`` shows them.
RULES = ("newest", "min_keep", "age", "hourly", "daily", "weekly", "monthly", "not-uploaded")


@dataclass(frozen=True)
class RetentionPolicy:
    retention_days: int = 7
    min_keep: int = 3
    keep_hourly: int = 0
    keep_daily: int = 0
    keep_weekly: int = 0
    keep_monthly: int = 0
    max_local_bytes: int | None = None
    upload_enabled: bool = False

    @classmethod
    def from_config(cls, backup: BackupConfig, upload_enabled: bool) -> RetentionPolicy:
        return cls(
            retention_days=backup.retention_days,
            min_keep=backup.min_keep,
            keep_hourly=backup.keep_hourly,
            keep_daily=backup.keep_daily,
            keep_weekly=backup.keep_weekly,
            keep_monthly=backup.keep_monthly,
            max_local_bytes=backup.max_local_bytes,
            upload_enabled=upload_enabled,
        )


@dataclass
class Decision:
    record: BackupRecord
    rules: list[str] = field(default_factory=list)
    forced: bool = False  # deleted by max_local_bytes although a rule wanted to keep it

    @property
    def keep(self) -> bool:
        return bool(self.rules) and not self.forced

    def describe(self) -> str:
        if self.forced:
            return "delete (max_local_bytes; was kept by " + ",".join(self.rules) + ")"
        return ",".join(self.rules) if self.rules else "delete"


def _buckets(
    newest_first: Sequence[Decision],
    count: int,
    key: Callable[[datetime], Hashable],
    rule: str,
    zone: tzinfo,
) -> None:
    if count <= 0:
        return
    seen: set[Hashable] = set()
    for decision in newest_first:
        if not decision.record.good:
            continue
        bucket = key(decision.record.started.astimezone(zone))
        if bucket in seen:
            continue
        seen.add(bucket)
        decision.rules.append(rule)
        if len(seen) >= count:
            return


def decide(
    records: Sequence[BackupRecord], policy: RetentionPolicy, now: datetime, zone: tzinfo
) -> list[Decision]:
    """Keep/delete for every record, with the rules that keep each. Pure: no I/O besides
    ``record.good`` (a file-exists check). Result is in the order of ``records``."""
    decisions = {id(record): Decision(record) for record in records}
    # By series, not by name: the globals are not the database called "(globals)".
    by_series: dict[str, list[Decision]] = defaultdict(list)
    for record in records:
        by_series[record.series].append(decisions[id(record)])
    cutoff = now - timedelta(days=policy.retention_days)
    for group in by_series.values():
        newest_first = sorted(group, key=lambda d: d.record.started, reverse=True)
        # A backup dated after now (a clock that ran fast) stays (``age`` keeps it) but is
        # never the newest and takes no min_keep or hourly/daily/... place: else it would
        # push the newest real backup out.
        trusted = [d for d in newest_first if not d.record.from_the_future(now)]
        good = [d for d in trusted if d.record.good]
        if good:
            good[0].rules.append("newest")
        else:
            # None is good (verify rejected them all, or could not run): the newest file
            # that exists stays anyway; the last copy of a database is never deleted.
            present = [d for d in trusted if d.record.path.exists()] or [
                d for d in newest_first if d.record.path.exists()
            ]
            if present:
                present[0].rules.append("newest")
        for decision in good[: policy.min_keep]:
            decision.rules.append("min_keep")
        for decision in newest_first:
            if decision.record.started >= cutoff and decision.record.path.exists():
                decision.rules.append("age")
        _buckets(
            trusted,
            policy.keep_hourly,
            # The UTC offset too: at a DST fall-back the same wall-clock hour comes twice,
            # and those are two hours.
            lambda t: (t.year, t.month, t.day, t.hour, t.utcoffset()),
            "hourly",
            zone,
        )
        _buckets(trusted, policy.keep_daily, lambda t: t.date(), "daily", zone)
        _buckets(trusted, policy.keep_weekly, lambda t: t.isocalendar()[:2], "weekly", zone)
        _buckets(trusted, policy.keep_monthly, lambda t: (t.year, t.month), "monthly", zone)
        if policy.upload_enabled:
            for decision in newest_first:
                if decision.record.uploaded_at is None and decision.record.path.exists():
                    decision.rules.append("not-uploaded")
    if policy.max_local_bytes is not None:
        kept = [d for d in decisions.values() if d.keep]
        total = sum(d.record.size for d in kept)
        for decision in sorted(kept, key=lambda d: d.record.started):
            if total <= policy.max_local_bytes:
                break
            if "newest" in decision.rules:
                continue
            decision.forced = True
            total -= decision.record.size
    return [decisions[id(record)] for record in records]


@dataclass
class PruneOutcome:
    deleted: list[BackupRecord] = field(default_factory=list)
    kept: int = 0
    errors: list[str] = field(default_factory=list)

    @property
    def result(self) -> str:
        return "failed" if self.errors else "success"

    def to_json(self) -> dict[str, object]:
        return {
            "step": "prune",
            "result": self.result,
            "deleted": [str(record.path) for record in self.deleted],
            "kept": self.kept,
            "detail": "; ".join(self.errors),
        }


async def prune(
    catalogue: Catalogue,
    policy: RetentionPolicy,
    now: datetime,
    zone: tzinfo,
    run_id: str,
    *,
    state: State | None = None,
    foreign_seen: set[Path] | None = None,
) -> PruneOutcome:
    """Apply :func:`decide` to the catalogue: delete what no rule keeps."""
    records = await asyncio.to_thread(catalogue.list_backups)
    foreign = await asyncio.to_thread(catalogue.foreign_files)
    seen = foreign_seen if foreign_seen is not None else set()
    for path in foreign:
        if path not in seen:
            seen.add(path)
            logger.info("prune: leaving alone a file laterbased did not create: %s", path)
    outcome = PruneOutcome()
    for decision in decide(records, policy, now, zone):
        record = decision.record
        if decision.keep:
            outcome.kept += 1
            continue
        if decision.forced:
            not_uploaded = policy.upload_enabled and record.uploaded_at is None
            logger.error(
                "prune: max_local_bytes=%s forces deleting run=%s database=%r file=%s%s",
                policy.max_local_bytes,
                run_id,
                record.database,
                record.file,
                " which was NEVER UPLOADED" if not_uploaded else "",
            )
            if state is not None:
                state.record_event(
                    "error",
                    f"max_local_bytes forced deleting {record.file}"
                    + (" (never uploaded)" if not_uploaded else ""),
                )
        try:
            await asyncio.to_thread(catalogue.delete, record)
        except OSError as exc:
            message = f"cannot delete {record.path}: {exc.strerror or exc}"
            logger.error("prune: %s run=%s", message, run_id)
            outcome.errors.append(message)
            continue
        outcome.deleted.append(record)
        logger.info(
            "prune: deleted run=%s database=%r file=%s started=%s",
            run_id,
            record.database,
            record.file,
            record.started.isoformat(),
        )
    if state is not None:
        state.retention_deleted += len(outcome.deleted)
    return outcome
