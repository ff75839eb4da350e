"""The backup worker, the chain, POST /api/backup and a real daemon killed mid-dump."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
from backup_support import environment, make_config
from pgserver import PgServer, free_port

from laterbased.backup.runner import backup_worker, register_actions, run_backup_chain
from laterbased.config import HttpConfig, Secret
from laterbased.core.context import WorkerContext
from laterbased.core.state import State
from laterbased.records.catalogue import Catalogue, writers_into
from laterbased.web.actions import add_action_routes
from laterbased.web.server import HttpServer, build_app

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def small_db(primary: PgServer) -> AsyncIterator[str]:
    name = "runner proj ø"
    primary.create_database(name)
    primary.sql(
        'CREATE TABLE "SM_Project" (id int, name text); '
        "INSERT INTO \"SM_Project\" SELECT i, 'p' || i FROM generate_series(1, 100) i",
        name,
    )
    yield name


@pytest.fixture
def backup_dir() -> Iterator[Path]:
    base = Path(tempfile.mkdtemp(prefix="laterbased-runner-test-"))
    try:
        yield base / "backups"
    finally:
        subprocess.run(["rm", "-rf", str(base)], check=False)


async def hold_lock(server: PgServer, database: str) -> Any:
    """A connection holding ACCESS EXCLUSIVE on "SM_Project": pg_dump blocks on it."""
    conn = await server.connect(database)
    await conn.execute('BEGIN; LOCK TABLE "SM_Project" IN ACCESS EXCLUSIVE MODE')
    return conn


async def test_post_backup_needs_a_configured_token_and_the_right_one(
    primary: PgServer, small_db: str, backup_dir: Path
) -> None:
    async def post(config_token: str | None, header: str | None) -> tuple[int, dict[str, Any]]:
        config = make_config(
            primary,
            backup_dir,
            databases=(small_db,),
            http=HttpConfig(port=0, token=Secret(config_token) if config_token else None),
        )
        state = State(config=config)
        register_actions(state)
        server = HttpServer(build_app(state, [add_action_routes]), "127.0.0.1", 0)
        await server.start()
        try:
            headers = {"Authorization": header} if header else {}
            async with aiohttp.ClientSession() as session:
                async with session.post(
                    f"http://127.0.0.1:{server.port}/api/backup", headers=headers, json={}
                ) as answer:
                    return answer.status, await answer.json()
        finally:
            await server.stop()

    status, body = await post(None, "Bearer anything")
    assert status == 403 and "set http.token" in body["error"], body
    status, body = await post("s3cret-token", "Bearer wrong")
    assert status == 401
    status, body = await post("s3cret-token", None)
    assert status == 401
    assert Catalogue(backup_dir).list_backups() == []
    status, body = await post("s3cret-token", "Bearer s3cret-token")
    assert status == 200, body
    assert body["result"] == "success"
    assert [s["step"] for s in body["steps"]] == ["dump", "prune"]
    assert body["run"].startswith("dump-")
    assert len(Catalogue(backup_dir).list_backups(small_db)) == 1


async def test_chain_reports_failure_and_state(primary: PgServer, backup_dir: Path) -> None:
    config = make_config(primary, backup_dir, databases=("missing db",))
    state = State(config=config)
    result = await run_backup_chain(state, trigger="test")
    assert result.result == "failed"
    assert state.job("dump").runs["failed"] == 1
    assert state.backup("missing db").last_error
    assert state.job("prune").runs["success"] == 1, "prune still runs after a failed dump"


async def test_schedule_runs_dump_then_prune_and_never_overlaps(
    primary: PgServer, small_db: str, backup_dir: Path
) -> None:
    config = make_config(
        primary,
        backup_dir,
        databases=(small_db,),
        schedule="* * * * * *",  # every second (croniter: seconds field last)
        skip_unchanged=False,
    )
    state = State(config=config)
    ctx = WorkerContext(state=state, stopping=asyncio.Event())
    lock = await hold_lock(primary, small_db)
    worker = asyncio.create_task(backup_worker(ctx))
    try:
        # Catch-up fires at once (no backup yet) and blocks on the lock (held until we
        # roll back) while the every-second schedule fires again: that fire is skipped.
        await wait_for(
            lambda: state.job("dump").skipped_overlap >= 1, 30, "a fire skipped as an overlap"
        )
        assert state.job("dump").running is not None
        assert len(writers_into(backup_dir / ".partial")) == 1, "one pg_dump at a time"
        await lock.execute("ROLLBACK")
        deadline = time.monotonic() + 30
        # The backups counted, not only the runs: a run counts its success before its prune
        # and its re-reading of the backup directory.
        while state.job("dump").runs["success"] < 3 or state.backup(small_db).local_count < 3:
            assert time.monotonic() < deadline, f"dumps did not run: {state.job('dump')}"
            await asyncio.sleep(0.1)
    finally:
        worker.cancel()
        with pytest.raises(asyncio.CancelledError):
            await worker
        await lock.close()
    dump, prune = state.job("dump"), state.job("prune")
    assert prune.runs["success"] >= dump.runs["success"] - 1
    assert prune.last_run is not None and dump.last_run is not None
    assert prune.last_run.id == dump.last_run.id or prune.last_run.started >= dump.last_run.started
    assert not writers_into(backup_dir / ".partial"), "cancel leaves no pg_dump behind"
    assert state.backup(small_db).local_count >= 3


def start_daemon(primary: PgServer, database: str, backup_dir: Path) -> subprocess.Popen[bytes]:
    assert backup_dir.name == "backups"  # the layout environment() gives
    env = environment(
        primary, backup_dir.parent, free_port(), None, database=database, catch_up=True
    )
    with open(backup_dir.parent / "daemon.log", "ab") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "laterbased", "run"],
            env=env,
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=log,
        )


async def wait_for(condition: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out after {timeout}s waiting for: {what}"
        await asyncio.sleep(0.1)


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def published_files(backup_dir: Path) -> list[Path]:
    return [
        p
        for p in backup_dir.rglob("*")
        if p.is_file()
        and ".partial" not in p.relative_to(backup_dir).parts
        and p.name != ".lock"  # the catalogue's flock file, not a backup
    ]


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGKILL])
async def test_daemon_killed_mid_dump_publishes_nothing_and_next_start_cleans_up(
    primary: PgServer, small_db: str, backup_dir: Path, signum: signal.Signals
) -> None:
    partial = backup_dir / ".partial"
    lock = await hold_lock(primary, small_db)
    daemon = start_daemon(primary, small_db, backup_dir)
    second: subprocess.Popen[bytes] | None = None
    try:
        dumpers: list[int] = []

        def pg_dump_writing() -> bool:
            # Only pg_dump itself: the daemon also holds a file in .partial/ for a moment
            # (the passfile it writes), which made this test flaky.
            dumpers[:] = [pid for pid in writers_into(partial) if _comm(pid) == "pg_dump"]
            return bool(dumpers)

        await wait_for(pg_dump_writing, 60, "catch-up pg_dump to start")
        dumper = dumpers[0]
        daemon.send_signal(signum)
        code = await asyncio.to_thread(daemon.wait, 60)
        if signum == signal.SIGTERM:
            assert code == 0, (backup_dir.parent / "daemon.log").read_text()
            await wait_for(lambda: not writers_into(partial), 10, "pg_dump stopped with us")
            assert not [p for p in partial.iterdir() if not p.name.startswith("pgpass")]
        assert published_files(backup_dir) == []
        assert not list(partial.glob("*.dump.json"))

        second = start_daemon(primary, small_db, backup_dir)
        await wait_for(
            lambda: not os.path.exists(f"/proc/{dumper}") or dumper not in writers_into(partial),
            60,
            "the next start to kill the orphan pg_dump",
        )
        await lock.execute("ROLLBACK")
        await wait_for(
            lambda: len(Catalogue(backup_dir).list_backups(small_db)) == 1,
            60,
            "the next start's catch-up backup",
        )
        second.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(second.wait, 60) == 0
        leftovers = list(partial.iterdir())
        assert leftovers == [], leftovers
    finally:
        for process in (daemon, second):
            if process is not None and process.poll() is None:
                process.kill()
                process.wait(30)
        await lock.close()


async def test_worker_waits_for_a_backup_now_holding_the_directory_then_cleans_up(
    primary: PgServer, small_db: str, backup_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import laterbased.backup.runner as runner

    monkeypatch.setattr(runner, "CLAIM_RETRY_SECONDS", 0.1)
    config = make_config(primary, backup_dir, databases=(small_db,), catch_up=False)
    state = State(config=config)
    catalogue = Catalogue(backup_dir)
    catalogue.prepare()
    leftover = catalogue.new_partial("x.dump")
    leftover.write_bytes(b"in progress elsewhere")
    held = catalogue.lock()
    worker = asyncio.create_task(backup_worker(WorkerContext(state, asyncio.Event())))
    try:
        await wait_for(
            lambda: any("backups wait" in e.message for e in state.events), 10, "a wait event"
        )
        await asyncio.sleep(0.3)
        assert leftover.exists(), "a directory held by another process is not cleaned"
        held.release()
        await wait_for(lambda: not leftover.exists(), 10, ".partial cleaned once free")
        assert state.job("dump").next_fire is not None, "schedules run after the claim"
    finally:
        held.release()
        worker.cancel()
        with pytest.raises(asyncio.CancelledError):
            await worker
    with catalogue.lock():
        pass  # released by the cancelled worker


def with_password(config: Any, password: str) -> Any:
    """``config`` with another primary password, built directly: this skips the validation
    that refuses such a password, to provoke a real exception inside the dump job."""
    return dataclasses.replace(
        config, primary=dataclasses.replace(config.primary, password=Secret(password))
    )


async def test_a_crash_inside_the_dump_job_fails_that_run_and_never_wedges_the_next(
    primary: PgServer, small_db: str, backup_dir: Path, caplog: Any
) -> None:
    good = make_config(
        primary,
        backup_dir,
        databases=(small_db,),
        http=HttpConfig(port=0, token=Secret("crash-token")),
    )
    # The passfile writer raises on a line break: an error run_dumps does not expect.
    state = State(config=with_password(good, primary.superuser_password + "\nsecond line"))
    register_actions(state)
    server = HttpServer(build_app(state, [add_action_routes]), "127.0.0.1", 0)
    await server.start()
    url = f"http://127.0.0.1:{server.port}"
    headers = {"Authorization": "Bearer crash-token"}
    try:
        async with aiohttp.ClientSession() as session:
            for attempt in (1, 2):
                async with session.post(f"{url}/api/backup", headers=headers) as answer:
                    body = await answer.json()
                    assert answer.status == 200, (attempt, answer.status, body)
                assert body["result"] == "failed", body
                assert "line break" in body["steps"][0]["detail"], body
            assert state.job("dump").running is None
            async with session.get(f"{url}/metrics") as answer:
                metrics = await answer.text()
            assert 'laterbased_job_runs_total{kind="dump",result="failed"} 2.0' in metrics
            assert 'laterbased_job_running{kind="dump"} 0.0' in metrics
            async with session.get(f"{url}/healthz") as answer:
                health = await answer.text()
                assert answer.status == 503, health
            assert "the backup run crashed: ValueError" in health, health
            assert "backup run crashed run=dump-" in caplog.text
            # Nothing to restart: with the password fixed the very next run backs up.
            state.config = good
            async with session.post(f"{url}/api/backup", headers=headers) as answer:
                body = await answer.json()
                assert (answer.status, body["result"]) == (200, "success"), body
    finally:
        await server.stop()
    assert primary.superuser_password not in caplog.text
    assert len(Catalogue(backup_dir).list_backups(small_db)) == 1


async def test_scheduled_runs_go_on_failing_after_a_crash_instead_of_being_skipped(
    primary: PgServer, small_db: str, backup_dir: Path
) -> None:
    config = make_config(
        primary, backup_dir, databases=(small_db,), schedule="* * * * * *", catch_up=True
    )
    state = State(config=with_password(config, "one\ntwo"))
    worker = asyncio.create_task(backup_worker(WorkerContext(state, asyncio.Event())))
    try:
        await wait_for(
            lambda: state.job("dump").runs["failed"] >= 3, 30, "three failed scheduled runs"
        )
    finally:
        worker.cancel()
        with pytest.raises(asyncio.CancelledError):
            await worker
    dump = state.job("dump")
    assert dump.skipped_overlap == 0, "a crashed run left the job marked as running"
    assert dump.last_run is not None and "line break" in (dump.last_run.detail or "")
    assert state.backup(small_db).last_error, "health sees the failure per database"


async def test_a_planted_manifest_nested_thousands_deep_or_a_fifo_is_ignored_not_a_failure(
    primary: PgServer, small_db: str, backup_dir: Path
) -> None:
    config = make_config(primary, backup_dir, databases=(small_db,), skip_unchanged=True)
    catalogue = Catalogue(backup_dir)
    first = await run_backup_chain(State(config=config), trigger="test")
    assert first.result == "success", first.to_json()
    directory = catalogue.database_dir(small_db)
    (directory / "deep.json").write_text("[" * 30_000 + "]" * 30_000)
    fifo = directory / "fifo.json"
    os.mkfifo(fifo)
    state = State(config=config)
    try:
        # Bounded: before the fix a reader blocked on the FIFO for ever.
        chain = await asyncio.wait_for(run_backup_chain(state, trigger="test"), 60)
    finally:
        # Release a reader still blocked on the FIFO (ENXIO: nobody is reading it).
        with contextlib.suppress(OSError):
            os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
    assert chain.result == "success", chain.to_json()
    assert state.job("dump").running is None
    assert len(catalogue.list_backups(small_db)) == 1
