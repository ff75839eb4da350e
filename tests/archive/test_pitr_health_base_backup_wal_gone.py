"""/healthz pitr when the archive's base backups are there but the WAL they start from is
gone (the oldest segments deleted by hand): critical and saying so, not 'no base backup
yet (the first one is under way)'. A stand-in archive; no server needed."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from wal_files import base_backup, segment

from laterbased.archive.receiver import refresh_coverage
from laterbased.config import load_config
from laterbased.core.context import WorkerContext
from laterbased.core.state import State
from laterbased.health.verdicts import check_pitr


async def test_base_backups_whose_wal_is_gone_are_critical_not_under_way(
    tmp_path: Path,
) -> None:
    config = load_config(
        None,
        {
            "PRIMARY_HOST": "127.0.0.1",
            "LOCAL_BACKUP_PATH": str(tmp_path / "backups"),
            "LATERBASED_STATE_DIR": str(tmp_path / "state"),
            "LATERBASED_PITR_ENABLED": "true",
        },
    )
    root = config.backup_directory
    now = datetime.now(UTC)
    base_backup(root, 1, now - timedelta(minutes=50))
    for number, minutes_ago in ((2, 40), (3, 30)):  # segment 1, its start, is gone
        segment(root, number, now - timedelta(minutes=minutes_ago))
    state = State(config=config)
    state.archive.phase = "streaming"
    await refresh_coverage(WorkerContext(state, asyncio.Event()), root)

    verdict = check_pitr(state, time.time())
    assert verdict.severity == "critical", verdict
    assert "1 base backup(s) but nothing restorable: the WAL they start from is missing" \
        in verdict.reason, verdict
