"""``backup.source: standby``: dumps from a real streaming standby (pg_basebackup clone).

WAL replay is paused for the dump and always resumed: after success, after a failed
pg_dump, after cancellation, and when a lock replayed from the primary blocks the dump.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import signal
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
from backup_support import make_config
from daemon_process import DaemonProcess, write_config
from pgserver import PgServer, free_port
from streaming_standby import StreamingStandby
from waiting import wait_for

from laterbased.backup.dump import DumpOutcome, run_dumps
from laterbased.config import Config
from laterbased.records.catalogue import Catalogue

pytestmark = pytest.mark.slow
DB = "standby quelle ß"


def start_standby(primary: PgServer, slot: str) -> StreamingStandby:
    # The helper grew a ``running`` constructor; older versions clone and start in __init__.
    running = getattr(StreamingStandby, "running", None)
    if running is not None:
        standby: StreamingStandby = running(primary, slot)
        return standby
    return StreamingStandby(primary, slot)


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def standby(primary: PgServer) -> AsyncIterator[StreamingStandby]:
    primary.create_database(DB)
    primary.sql(
        'CREATE TABLE "SM_Project" (id serial PRIMARY KEY, "ProjectName" text); '
        "INSERT INTO \"SM_Project\" (\"ProjectName\") SELECT 'p' || i "
        "FROM generate_series(1, 50) i",
        DB,
    )
    server = await asyncio.to_thread(start_standby, primary, "drill_standby_dump_slot")
    try:
        yield server
    finally:
        await asyncio.to_thread(server.cleanup)


@pytest.fixture
def backup_dir() -> Iterator[Path]:
    base = Path(tempfile.mkdtemp(prefix="laterbased-standby-dump-test-"))
    try:
        yield base / "backups"
    finally:
        subprocess.run(["rm", "-rf", str(base)], check=False)


def standby_config(primary: PgServer, standby: StreamingStandby, backup_dir: Path) -> Config:
    config = make_config(
        primary, backup_dir, databases=(DB,), source="standby", skip_unchanged=False
    )
    return dataclasses.replace(
        config,
        standby=dataclasses.replace(
            config.standby, port=standby.port, listen_addresses="127.0.0.1"
        ),
    )


def replay_paused(standby: StreamingStandby) -> bool:
    return standby.sql("SELECT pg_is_wal_replay_paused()") == "t"


async def wait_replayed(primary: PgServer, standby: StreamingStandby) -> None:
    # The insert position: with synchronous_commit off a commit may not be written yet.
    target = primary.sql("SELECT pg_current_wal_insert_lsn()")
    deadline = time.monotonic() + 30
    query = f"SELECT pg_last_wal_replay_lsn() >= '{target}'::pg_lsn"
    while standby.sql(query) != "t":
        assert time.monotonic() < deadline, f"standby did not replay up to {target}"
        await asyncio.sleep(0.05)


def dumped_data(primary: PgServer, path: Path) -> str:
    result = subprocess.run(
        [str(primary.bindir / "pg_restore"), "--data-only", "--file=-", str(path)],
        capture_output=True, text=True, check=True, timeout=60,
    )
    return result.stdout


async def test_standby_dump_has_the_primarys_rows_and_replay_is_resumed(
    primary: PgServer, standby: StreamingStandby, backup_dir: Path, caplog: Any
) -> None:
    marker = "written on the primary " + os.urandom(4).hex()
    primary.sql(f"INSERT INTO \"SM_Project\" (\"ProjectName\") VALUES ('{marker}')", DB)
    await wait_replayed(primary, standby)
    caplog.set_level("INFO", logger="laterbased.backup.dump")
    outcomes = await run_dumps(
        standby_config(primary, standby, backup_dir), Catalogue(backup_dir), "dump-standby-1"
    )
    assert [o.result for o in outcomes] == ["success"], outcomes
    record = outcomes[0].record
    assert record is not None and record.source == "standby"
    assert marker in dumped_data(primary, record.path)
    assert "paused WAL replay on the standby" in caplog.text
    assert "resumed WAL replay on the standby" in caplog.text
    assert not replay_paused(standby)


async def test_failed_standby_dump_still_resumes_replay(
    primary: PgServer, standby: StreamingStandby, backup_dir: Path
) -> None:
    config = standby_config(primary, standby, backup_dir)
    outcomes = await run_dumps(config, Catalogue(backup_dir), "dump-standby-2", ["no such db"])
    assert [o.result for o in outcomes] == ["failed"]
    assert "no such db" in outcomes[0].detail
    assert not replay_paused(standby)
    assert Catalogue(backup_dir).list_backups() == []


async def hold_exclusive_lock(primary: PgServer, standby: StreamingStandby) -> Any:
    """ACCESS EXCLUSIVE on "SM_Project" on the primary, replayed (and so held) on the standby:
    a pg_dump on the standby blocks on it."""
    conn = await primary.connect(DB)
    await conn.execute('BEGIN; LOCK TABLE "SM_Project" IN ACCESS EXCLUSIVE MODE')
    primary.sql("SELECT pg_switch_wal()")  # flush the lock record to the standby now
    query = (
        "SELECT count(*) FROM pg_locks WHERE mode = 'AccessExclusiveLock' "
        "AND locktype = 'relation' AND granted"
    )
    deadline = time.monotonic() + 30
    while standby.sql(query) == "0":
        assert time.monotonic() < deadline, "the primary's lock never reached the standby"
        await asyncio.sleep(0.05)
    return conn


async def dump_until_replay_paused(
    primary: PgServer, standby: StreamingStandby, backup_dir: Path, run_id: str
) -> asyncio.Task[list[DumpOutcome]]:
    """A dump from the standby, started and running until it paused the standby's replay
    (it blocks on a lock meanwhile): the task, for the test to cancel or to await."""
    dump = asyncio.create_task(
        run_dumps(standby_config(primary, standby, backup_dir), Catalogue(backup_dir), run_id)
    )

    def paused() -> bool:
        assert not dump.done(), dump.result()
        return replay_paused(standby)

    try:
        await wait_for(paused, "the standby's replay paused by the dump", 30, interval=0.05)
    except BaseException:
        dump.cancel()
        raise
    return dump


async def test_cancelled_standby_dump_resumes_replay(
    primary: PgServer, standby: StreamingStandby, backup_dir: Path
) -> None:
    lock = await hold_exclusive_lock(primary, standby)
    try:
        dump = await dump_until_replay_paused(primary, standby, backup_dir, "dump-standby-3")
        dump.cancel()
        with pytest.raises(asyncio.CancelledError):
            await dump
        assert not replay_paused(standby)
    finally:
        await lock.execute("ROLLBACK")
        await lock.close()
    assert list((backup_dir / ".partial").glob("*.backup")) == []


async def test_a_dump_cancelled_at_any_moment_leaves_replay_running(
    primary: PgServer, standby: StreamingStandby, backup_dir: Path
) -> None:
    """Cancelled while the pause itself is in flight (done on the server, not yet answered),
    the dump still resumes replay: before, it left the standby paused for good."""
    config = standby_config(primary, standby, backup_dir)
    for round_number in range(12):
        dump = asyncio.create_task(
            run_dumps(config, Catalogue(backup_dir), f"dump-standby-cancel-{round_number}")
        )
        # From "not started" to "pausing" to "dumping": a different moment each round.
        await asyncio.sleep(0.005 * round_number)
        dump.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await dump
        assert not replay_paused(standby), f"replay left paused (round {round_number})"


async def test_lock_replayed_before_the_pause_does_not_block_the_dump_for_hours(
    primary: PgServer,
    standby: StreamingStandby,
    backup_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Replay paused while the standby's startup process holds a lock replayed from the
    primary: the primary's release is never replayed, so pg_dump would wait on it until
    backup.timeout. The dump gives up on the lock quickly, resumes replay and retries."""
    import laterbased.backup.dump as dump_module

    monkeypatch.setattr(dump_module, "STANDBY_LOCK_WAIT", 1.0)
    monkeypatch.setattr(dump_module, "STANDBY_RETRY_DELAY", 0.5)
    # Short waits, so more attempts than the product's three: on a loaded machine the standby
    # may not replay the primary's release within one 0.5 s pause between attempts.
    monkeypatch.setattr(dump_module, "STANDBY_ATTEMPTS", 10)
    lock = await hold_exclusive_lock(primary, standby)
    try:
        dump = await dump_until_replay_paused(primary, standby, backup_dir, "dump-standby-4")
        # The primary finishes its work while the standby's replay is paused.
        await lock.execute("ROLLBACK")
        outcomes = await asyncio.wait_for(dump, 60)
    finally:
        await lock.close()
    assert [o.result for o in outcomes] == ["success"], outcomes
    assert not replay_paused(standby)


async def test_lock_held_on_the_primary_throughout_fails_the_dump_clearly(
    primary: PgServer,
    standby: StreamingStandby,
    backup_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import laterbased.backup.dump as dump_module

    monkeypatch.setattr(dump_module, "STANDBY_LOCK_WAIT", 0.5)
    monkeypatch.setattr(dump_module, "STANDBY_RETRY_DELAY", 0.2)
    lock = await hold_exclusive_lock(primary, standby)
    try:
        outcomes = await asyncio.wait_for(
            run_dumps(
                standby_config(primary, standby, backup_dir),
                Catalogue(backup_dir),
                "dump-standby-5",
            ),
            60,
        )
    finally:
        await lock.execute("ROLLBACK")
        await lock.close()
    assert [o.result for o in outcomes] == ["failed"]
    assert "lock" in outcomes[0].detail
    assert not replay_paused(standby)


async def test_row_counts_for_the_drill_come_from_the_standbys_snapshot(
    primary: PgServer, standby: StreamingStandby, backup_dir: Path
) -> None:
    await wait_replayed(primary, standby)
    config = standby_config(primary, standby, backup_dir)
    config = dataclasses.replace(
        config, backup=dataclasses.replace(config.backup, restore_drill=True)
    )
    outcomes = await run_dumps(config, Catalogue(backup_dir), "dump-standby-6")
    assert [o.result for o in outcomes] == ["success"], outcomes
    record = outcomes[0].record
    assert record is not None and record.row_counts is not None
    assert record.row_counts['"public"."SM_Project"'] == int(
        primary.sql('SELECT count(*) FROM "SM_Project"', DB)
    )
    assert not replay_paused(standby)


async def test_standby_that_never_accepts_connections_falls_back_to_the_primary_and_says_so(
    primary: PgServer, standby: StreamingStandby, backup_dir: Path, caplog: Any
) -> None:
    config = standby_config(primary, standby, backup_dir)
    nobody = free_port()  # nothing listens here: a standby that has not started (yet)
    config = dataclasses.replace(
        config,
        standby=dataclasses.replace(config.standby, port=nobody),
        backup=dataclasses.replace(config.backup, standby_wait=1.5),
    )
    caplog.set_level("INFO", logger="laterbased.backup.dump")
    outcomes = await run_dumps(config, Catalogue(backup_dir), "dump-standby-fallback")
    assert [o.result for o in outcomes] == ["success"], outcomes
    record = outcomes[0].record
    assert record is not None and record.source == "primary"
    assert f"waiting up to 2s for the standby 127.0.0.1:{nobody}" in caplog.text
    assert f"the standby 127.0.0.1:{nobody} is not accepting connections after" in caplog.text
    assert "dumping from the primary instead run=dump-standby-fallback" in caplog.text
    assert "source=primary" in caplog.text


async def test_daemon_with_source_standby_waits_for_its_standby_at_start_and_dumps_from_it(
    make_primary: Callable[..., PgServer], state_dir: Path
) -> None:
    server = make_primary()
    server.create_database(DB)
    server.sql('CREATE TABLE "SM_Project" (id int); INSERT INTO "SM_Project" VALUES (1)', DB)
    backups = state_dir / "backups"
    config = {
        "primary": {
            "host": server.host,
            "port": server.port,
            "user": server.superuser,
            "password": server.superuser_password,
        },
        "standby": {"port": free_port()},
        "monitor": {"interval": "1s"},
        # Catch-up fires at start, before the standby has even been cloned; the schedule
        # itself would fire next only in a year.
        "backup": {
            "source": "standby",
            "databases": [DB],
            "directory": str(backups),
            "schedule": "0 0 1 1 *",
        },
        "http": {"host": "127.0.0.1", "port": free_port()},
        "state_dir": str(state_dir),
    }
    daemon = await DaemonProcess.start(
        write_config(state_dir / "laterbased.yaml", config), config["http"]["port"]
    )
    try:
        records = await wait_for(
            lambda: Catalogue(backups).list_backups(DB),
            "the catch-up backup",
            timeout=180,
            log=lambda: daemon.log,
        )
        assert records[0].source == "standby", daemon.log
        assert "dump source: waiting up to 300s for the standby" in daemon.log
        assert "dump source: the standby accepts connections after" in daemon.log
        assert "dump run failed" not in daemon.log and "dump failed" not in daemon.log

        async def counted() -> str | None:
            # The backup is published before its run ends and is counted: wait for the count.
            async with aiohttp.ClientSession() as session:
                async with session.get(f"{daemon.url}/metrics") as response:
                    text = await response.text()
            success = 'laterbased_job_runs_total{kind="dump",result="success"} 1.0'
            return text if success in text else None

        metrics = await wait_for(counted, "the run counted", 30, log=lambda: daemon.log)
        assert 'laterbased_job_runs_total{kind="dump",result="failed"} 0.0' in metrics
        daemon.send(signal.SIGTERM)
        assert await daemon.wait_exit(60) == 0, daemon.log
    finally:
        await daemon.stop()
