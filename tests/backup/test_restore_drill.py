"""The restore drill (backup.restore_drill) against a real primary and real temporary
clusters: exact row counts in the dump's snapshot, damaged backups caught, health told,
and no cluster, process or directory left behind (also when cancelled mid-drill)."""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import pytest_asyncio
from backup_support import make_config
from pgserver import PgServer

from laterbased.backup.drill import DRILL_PREFIX
from laterbased.backup.rowcounts import LARGE_OBJECTS
from laterbased.backup.runner import run_backup_chain, run_verify_job
from laterbased.core.state import State
from laterbased.health import verdicts as health
from laterbased.ops.demo.sample_library import create_sample_library
from laterbased.proc import pids_with_cwd_under
from laterbased.records.catalogue import Catalogue

pytestmark = pytest.mark.slow
DB = "Drill Bibliothek ü"


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def library(primary: PgServer) -> AsyncIterator[str]:
    primary.create_database(DB)
    conn = await primary.connect(DB)
    try:
        await create_sample_library(conn, timelines_per_project=2, blob_bytes=16 * 1024)
        await conn.execute('CREATE TABLE "Busy Log" (id bigserial PRIMARY KEY, note text)')
    finally:
        await conn.close()
    yield DB


@pytest.fixture
def state_dir() -> Iterator[Path]:
    base = Path(tempfile.mkdtemp(prefix="laterbased-drill-test-"))
    try:
        yield base
    finally:
        subprocess.run(["rm", "-rf", str(base)], check=False)


def drill_state(primary: PgServer, state_dir: Path, **backup: object) -> State:
    backup.setdefault("databases", (DB,))
    backup.setdefault("restore_drill", True)
    backup.setdefault("skip_unchanged", False)
    return State(config=make_config(primary, state_dir / "backups", **backup))


def assert_no_drill_left(state_dir: Path) -> None:
    assert list(state_dir.glob(f"{DRILL_PREFIX}*")) == [], "temporary cluster directory left"
    assert pids_with_cwd_under(state_dir) == [], "a drill process is still running"


def verify_check(state: State) -> health.Check:
    return next(c for c in health.evaluate(state, time.time()) if c.name == "verify")


async def write_while(primary: PgServer, running: asyncio.Event) -> int:
    """Insert rows one transaction at a time until ``running`` is cleared."""
    conn = await primary.connect(DB)
    written = 0
    try:
        while running.is_set():
            await conn.execute('INSERT INTO "Busy Log" (note) VALUES ($1)', f"edit {written}")
            written += 1
    finally:
        await conn.close()
    return written


async def test_drill_passes_with_counts_exact_even_while_the_library_is_written(
    primary: PgServer, library: str, state_dir: Path
) -> None:
    state = drill_state(primary, state_dir)
    running = asyncio.Event()
    running.set()
    writer = asyncio.create_task(write_while(primary, running))
    try:
        chain = await run_backup_chain(state)
    finally:
        running.clear()
        written = await writer
    assert chain.result == "success", chain.to_json()
    assert written > 0
    [record] = Catalogue(state_dir / "backups").list_backups(DB)
    counts = record.row_counts
    assert counts is not None, "row counts are recorded at dump time when the drill is on"
    assert counts['"public"."SM_Project"'] == 4
    assert counts['"public"."SM_Timeline"'] == 8
    assert counts[LARGE_OBJECTS] == 4
    # Rows landed during the dump; the count is the dump's own snapshot, not "now".
    assert counts['"public"."Busy Log"'] <= int(
        primary.sql('SELECT count(*) FROM "Busy Log"', DB)
    )

    outcome = await run_verify_job(state)
    assert outcome["result"] == "success", outcome
    [check] = outcome["checks"]
    assert "counts match the source" in check["detail"]
    [record] = Catalogue(state_dir / "backups").list_backups(DB)
    assert record.verified is True
    assert record.drill is not None and record.drill["ok"] is True
    assert record.drill["tables"] == len(counts) - 1
    assert record.drill["rows"] == sum(counts.values())
    assert verify_check(state).ok
    assert_no_drill_left(state_dir)


async def test_truncated_backup_passes_the_cheap_checks_but_fails_the_drill_and_health(
    primary: PgServer, library: str, state_dir: Path
) -> None:
    state = drill_state(primary, state_dir)
    assert (await run_backup_chain(state)).result == "success"
    catalogue = Catalogue(state_dir / "backups")
    [record] = catalogue.list_backups(DB)
    # Cut the archive short and make the manifest agree (a dump recorded as complete
    # that is not): the table of contents at the start still lists fine.
    with open(record.path, "r+b") as handle:
        handle.truncate(record.size * 2 // 3)
    data = record.path.read_bytes()
    catalogue.rewrite_manifest(
        dataclasses.replace(record, size=len(data), sha256=hashlib.sha256(data).hexdigest())
    )

    outcome = await run_verify_job(state)
    assert outcome["result"] == "failed", outcome
    [check] = outcome["checks"]
    assert "pg_restore --list ok" in check["detail"]
    assert "pg_restore failed" in check["detail"]
    [record] = catalogue.list_backups(DB)
    assert record.verified is False and record.drill is not None and not record.drill["ok"]
    verdict = verify_check(state)
    assert verdict.severity == "critical" and "pg_restore failed" in verdict.reason
    assert not health.is_healthy(health.evaluate(state, time.time()))
    assert any("verify" in e.message and "failed" in e.message for e in state.events)
    assert_no_drill_left(state_dir)

    # After a restart the manifest alone still makes health say so.
    fresh = drill_state(primary, state_dir)
    from laterbased.backup.runner import refresh_backup_state

    refresh_backup_state(fresh, catalogue, False)
    assert verify_check(fresh).severity == "critical"


async def test_counts_that_differ_from_the_source_fail_the_drill(
    primary: PgServer, library: str, state_dir: Path
) -> None:
    state = drill_state(primary, state_dir)
    assert (await run_backup_chain(state)).result == "success"
    catalogue = Catalogue(state_dir / "backups")
    [record] = catalogue.list_backups(DB)
    assert record.row_counts is not None
    wrong = dict(record.row_counts) | {'"public"."SM_Project"': 5}
    manifest = json.loads(record.manifest_path.read_text())
    manifest["row_counts"] = wrong
    record.manifest_path.write_text(json.dumps(manifest))

    outcome = await run_verify_job(state)
    assert outcome["result"] == "failed"
    assert '"public"."SM_Project" has 4 rows, source had 5' in outcome["checks"][0]["detail"]
    assert_no_drill_left(state_dir)


async def test_drill_cancelled_mid_restore_stops_the_cluster_and_removes_it(
    primary: PgServer, library: str, state_dir: Path
) -> None:
    state = drill_state(primary, state_dir)
    assert (await run_backup_chain(state)).result == "success"
    verify = asyncio.create_task(run_verify_job(state))
    deadline = time.monotonic() + 60
    # The socket exists once the server runs (initdb's bootstrap backend has none).
    while not list(state_dir.glob(f"{DRILL_PREFIX}*/socket/.s.PGSQL.*")):
        assert not verify.done(), verify.result()
        assert time.monotonic() < deadline, "the drill server never started"
        await asyncio.sleep(0.02)
    assert pids_with_cwd_under(state_dir), "the drill server runs before we cancel"
    verify.cancel()
    with pytest.raises(asyncio.CancelledError):
        await verify
    assert state.job("verify").last_run is not None
    assert state.job("verify").last_run.result == "cancelled"
    assert_no_drill_left(state_dir)


async def test_backup_dumped_without_the_drill_restores_without_comparing(
    primary: PgServer, library: str, state_dir: Path
) -> None:
    state = drill_state(primary, state_dir, restore_drill=False)
    assert (await run_backup_chain(state)).result == "success"
    [record] = Catalogue(state_dir / "backups").list_backups(DB)
    assert record.row_counts is None, "no extra scan when the drill is off"
    drilled = drill_state(primary, state_dir)
    outcome = await run_verify_job(drilled)
    assert outcome["result"] == "success", outcome
    assert "none compared" in outcome["checks"][0]["detail"]
    assert_no_drill_left(state_dir)


async def test_drill_that_cannot_run_fails_the_job_but_not_the_backup(
    primary: PgServer, library: str, state_dir: Path
) -> None:
    state = drill_state(primary, state_dir)
    assert (await run_backup_chain(state)).result == "success"
    config = state.config
    nowhere = state_dir / "no-bin"
    nowhere.mkdir()
    state.config = dataclasses.replace(
        config, standby=dataclasses.replace(config.standby, bin_dir=nowhere)
    )
    outcome = await run_verify_job(state)
    assert outcome["result"] == "failed"
    [check] = outcome["checks"]
    assert "restore drill could not run" in check["detail"] and "standby.bin_dir" in check["detail"]
    assert check["backup_ok"] is True
    [record] = Catalogue(state_dir / "backups").list_backups(DB)
    assert record.verified is True, "an unusable drill host does not condemn the backup"
    assert verify_check(state).severity == "critical"
    assert_no_drill_left(state_dir)


def test_leftover_drill_directories_of_a_killed_daemon_are_removed_but_not_a_foreign_process(
    state_dir: Path,
) -> None:
    from laterbased.backup.drill import remove_leftovers

    leftover = state_dir / f"{DRILL_PREFIX}killed"
    (leftover / "data").mkdir(parents=True)
    # Not a postgres (an operator's shell looking inside): never killed. A real orphaned
    # postgres is: test_backup_ownership.py.
    orphan = subprocess.Popen(["sleep", "120"], cwd=leftover / "data")
    try:
        assert pids_with_cwd_under(state_dir) == [orphan.pid]
        assert remove_leftovers(state_dir) == 1
        assert not leftover.exists()
        orphan.terminate()  # a SIGKILL sent before would win: this does not race
        assert orphan.wait(10) == -15, "a process that is not a postgres was killed"
    finally:
        if orphan.poll() is None:
            orphan.kill()
            orphan.wait()
