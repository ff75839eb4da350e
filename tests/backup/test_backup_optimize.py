"""The optimize job (VACUUM (ANALYZE) + REINDEX DATABASE) on a real primary."""

from __future__ import annotations

import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from backup_support import make_config
from pgserver import PgServer
from waiting import wait_for

from laterbased.backup.runner import run_optimize_job
from laterbased.core.state import State

pytestmark = pytest.mark.slow
DB = "optimize proj å"


@pytest.fixture(scope="module")
def bloated_db(primary: PgServer) -> str:
    primary.create_database(DB)
    primary.sql(
        'CREATE TABLE "SM_Project" (id int PRIMARY KEY, note text); '
        "INSERT INTO \"SM_Project\" SELECT i, repeat('x', 100) FROM generate_series(1, 5000) i; "
        'DELETE FROM "SM_Project" WHERE id % 2 = 0',
        DB,
    )
    return DB


@pytest.fixture
def backup_dir() -> Iterator[Path]:
    base = Path(tempfile.mkdtemp(prefix="laterbased-optimize-test-"))
    try:
        yield base / "backups"
    finally:
        subprocess.run(["rm", "-rf", str(base)], check=False)


def index_file(primary: PgServer) -> str:
    return primary.sql("SELECT relfilenode FROM pg_class WHERE relname = 'SM_Project_pkey'", DB)


def vacuumed(primary: PgServer) -> str:
    return primary.sql(
        "SELECT (last_vacuum IS NOT NULL)::text || ' ' || (last_analyze IS NOT NULL)::text "
        "|| ' ' || n_dead_tup FROM pg_stat_user_tables WHERE relname = 'SM_Project'",
        DB,
    )


async def test_optimize_vacuums_analyzes_and_reindexes_the_configured_databases(
    primary: PgServer, bloated_db: str, backup_dir: Path
) -> None:
    before = index_file(primary)
    state = State(config=make_config(primary, backup_dir, databases=(bloated_db,)))
    outcome = await run_optimize_job(state)
    assert outcome["result"] == "success", outcome
    # pg_stat_user_tables is late on PostgreSQL 13 (a collector process gets the counts after
    # the job's session ends, and readers see a file it rewrites every half second): wait.
    await wait_for(
        lambda: vacuumed(primary) == "true true 0",
        "VACUUM (ANALYZE) seen in pg_stat_user_tables with no dead rows left",
        15,
        log=lambda: vacuumed(primary),
    )
    assert index_file(primary) != before, "REINDEX DATABASE rebuilt the index"
    job = state.job("optimize")
    assert job.runs["success"] == 1 and job.last_success is not None and job.running is None


async def test_optimize_reports_a_database_it_cannot_reach_as_a_failed_job(
    primary: PgServer, bloated_db: str, backup_dir: Path
) -> None:
    before = index_file(primary)
    state = State(
        config=make_config(primary, backup_dir, databases=("no such project", bloated_db))
    )
    outcome = await run_optimize_job(state)
    assert outcome["result"] == "failed"
    job = state.job("optimize")
    assert job.runs["failed"] == 1 and job.last_success is None
    assert job.last_run is not None and "no such project" in (job.last_run.detail or "")
    assert "does not exist" in (job.last_run.detail or "")
    assert any("optimize" in e.message and "failed" in e.message for e in state.events)
    assert index_file(primary) != before, "the reachable database was still optimized"
