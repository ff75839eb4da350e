"""pg_restore --verbose at the log level it deserves: its steps at DEBUG with a progress line
now and then, its errors and the failing SQL loud. Real pg_restore."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest
from backup_files import publish_real_backup
from pgserver import PgServer

from laterbased.config import load_config
from laterbased.ops.restore import steps as restore_module
from laterbased.ops.restore.steps import RestoreProgress, RestoreRequest, restore
from laterbased.records.catalogue import Catalogue


@pytest.mark.slow
async def test_pg_restore_steps_are_debug_with_a_progress_line_now_and_then(
    primary: PgServer,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    suffix = os.urandom(3).hex()
    source, target = f"h15_many_{suffix}", f"h15_restored_{suffix}"
    primary.create_database(source)
    tables = 120
    primary.sql(
        "".join(f"CREATE TABLE t{i} (id int PRIMARY KEY, v text);" for i in range(tables)),
        database=source,
    )
    env = {
        "PRIMARY_HOST": primary.host,
        "PRIMARY_PORT": str(primary.port),
        "PRIMARY_USER": primary.superuser,
        "REPL_PASSWORD": primary.superuser_password,
        "LOCAL_BACKUP_PATH": str(tmp_path / "backups"),
        "LATERBASED_STATE_DIR": str(tmp_path / "state"),
    }
    config = load_config(None, env)
    publish_real_backup(primary, Catalogue(config.backup_directory), source)
    monkeypatch.setattr(restore_module, "PROGRESS_EVERY_STEPS", 100)
    monkeypatch.setattr(restore_module, "PROGRESS_EVERY_SECONDS", 1e9)
    caplog.set_level(logging.DEBUG, logger="laterbased")
    try:
        result = await restore(config, RestoreRequest(target_db=target, database=source, jobs=2))
        assert result.tables == tables
    finally:
        for name in (source, target):
            primary.sql(f'DROP DATABASE IF EXISTS "{name}"')
    ours = [r for r in caplog.records if r.name == "laterbased.ops.restore.steps"]
    steps = [r for r in ours if r.levelno == logging.DEBUG]
    assert len(steps) > 3 * tables, "pg_restore --verbose says several lines per table"
    # Its parallel workers' lines come interleaved ("pg_restore:pg_restore: finished ...");
    # those are progress too, not warnings.
    assert not [r.getMessage() for r in ours if r.levelno >= logging.WARNING]
    exited = next(r.getMessage() for r in ours if "pg_restore exited status=0" in r.getMessage())
    counted = int(exited.split("steps=")[1].split()[0])
    assert counted == len(steps)
    progress = [r.getMessage() for r in ours if "pg_restore progress" in r.getMessage()]
    assert len(progress) == counted // 100, progress
    assert all(f"steps={n * 100} " in m for n, m in enumerate(progress, 1)), progress
    # Besides the progress lines, INFO says each phase once: sha256 verified, work database
    # created, which major's pg_restore reads the backup (Resolve's own restore question),
    # restored and renamed into place. Never pg_restore's own step lines.
    phases = [
        r.getMessage() for r in ours
        if r.levelno >= logging.INFO and "pg_restore progress" not in r.getMessage()
    ]
    assert len(phases) <= 5, phases
    assert not [m for m in phases if m.startswith("pg_restore:")], phases


def test_pg_restore_errors_and_the_failing_sql_stay_loud(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="laterbased.ops.restore.steps")
    progress = RestoreProgress("work")
    error = 'pg_restore: error: could not execute query: ERROR:  relation "a" already exists'
    # What pg_restore 15 --exit-on-error printed for a table that already existed.
    for line in [
        "pg_restore: connecting to database for restore",
        'pg_restore: creating TABLE "public.a"',
        "pg_restore: while PROCESSING TOC:",
        "pg_restore: from TOC entry 214; 1259 16385 TABLE a postgres",
        error,
        "Command was: CREATE TABLE public.a (",
        "    id integer NOT NULL",
        ");",
        "",
    ]:
        progress(line)
    levels = [(r.levelname, r.getMessage()) for r in caplog.records]
    assert levels == [
        ("DEBUG", "pg_restore: connecting to database for restore"),
        ("DEBUG", 'pg_restore: creating TABLE "public.a"'),
        ("WARNING", "pg_restore: while PROCESSING TOC:"),
        ("WARNING", "pg_restore: from TOC entry 214; 1259 16385 TABLE a postgres"),
        ("ERROR", error),
        ("WARNING", "Command was: CREATE TABLE public.a ("),
        ("WARNING", "    id integer NOT NULL"),
        ("WARNING", ");"),
    ]
    assert progress.steps == 2
