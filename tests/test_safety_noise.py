"""Found by the 3 a.m. review: the API's split-brain guard on promotion, one daemon per
state_dir, and log lines that buried real events (rclone stats, pg_restore --verbose, the
standby's FATAL every 5 s while the primary is down). Real PostgreSQL, pg_restore, rclone
and ``laterbased run`` processes throughout."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from backup_files import publish_real_backup
from daemon_process import DaemonProcess, minimal_config, write_config
from daemon_support import TOKEN, daemon_config, run_cli, standby_sql
from pgserver import PgServer, free_port
from waiting import wait_for

from laterbased.config import load_config
from laterbased.core.lockfile import STATE_LOCK_FILE, LockBusy, lock_state_dir, take_lock
from laterbased.errors import EXIT_REFUSE, RefuseToRun
from laterbased.offsite import rclone as rclone_module
from laterbased.offsite.rclone import Rclone, RcloneFailed, RcloneLog
from laterbased.ops.restore import steps as restore_module
from laterbased.ops.restore.steps import RestoreProgress, RestoreRequest, restore
from laterbased.proc import RepeatCollapser, resolve_run_as, run, spawn
from laterbased.records.catalogue import Catalogue

# --- 1. POST /api/promote: the same split-brain guard as `laterbased promote` -----------



async def start_streaming_daemon(primary: PgServer, state_dir: Path) -> tuple[DaemonProcess, int]:
    """A `laterbased run` whose standby of ``primary`` streams; (daemon, standby port)."""
    config = daemon_config(primary, state_dir)
    config_path = write_config(state_dir / "laterbased.yaml", config)
    daemon = await DaemonProcess.start(config_path, config["http"]["port"])
    try:
        await daemon.wait_log("standby postgres accepting connections", timeout=120)
    except BaseException:
        await daemon.stop()
        raise
    return daemon, config["standby"]["port"]


async def post_promote(daemon: DaemonProcess, body: Any = None) -> tuple[int, dict[str, Any]]:
    headers = {"Authorization": f"Bearer {TOKEN}"}
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120)) as session,
        session.post(f"{daemon.url}/api/promote", headers=headers, json=body) as response,
    ):
        return response.status, await response.json()


async def in_recovery(primary: PgServer, port: int) -> bool:
    return bool(await standby_sql(primary, port, "SELECT pg_is_in_recovery()"))


@pytest.mark.slow
async def test_promote_api_refuses_while_the_old_primary_runs_and_force_goes_ahead(
    make_primary: Callable[..., PgServer], state_dir: Path
) -> None:
    primary = make_primary()
    daemon, port = await start_streaming_daemon(primary, state_dir)
    try:
        where = f"{primary.host}:{primary.port}"
        status, body = await post_promote(daemon)
        assert status == 409, body
        assert body["reason"] == "old_primary_running"
        assert f"refusing to promote: the old primary {where} is still running" in body["error"]
        assert '{"force": true}' in body["error"]
        assert await in_recovery(primary, port), "refused, yet the standby was promoted"

        status, body = await post_promote(daemon, {"force": "yes"})
        assert status == 400 and "force must be true or false" in body["error"]

        # The CLI goes through the daemon and gets the daemon's refusal: exit 3, same words.
        config_path = state_dir / "laterbased.yaml"
        code, out = await run_cli("promote", "--config", str(config_path))
        assert code == EXIT_REFUSE, out
        assert f"refusing to promote: the old primary {where} is still running" in out
        assert await in_recovery(primary, port)

        status, body = await post_promote(daemon, {"force": True})
        assert status == 200, body
        assert body["role"] == "primary"
        assert where in body["forced_past"]
        assert not await in_recovery(primary, port)
        assert "promoting although the old primary" in daemon.log
    finally:
        await daemon.stop()


@pytest.mark.slow
async def test_promote_goes_through_the_daemon_without_force_once_the_old_primary_is_stopped(
    make_primary: Callable[..., PgServer], state_dir: Path
) -> None:
    primary = make_primary()
    daemon, port = await start_streaming_daemon(primary, state_dir)
    try:
        await asyncio.to_thread(primary.stop, "fast")
        code, out = await run_cli("promote", "--config", str(state_dir / "laterbased.yaml"))
        assert code == 0, out
        assert "promoted by the running daemon" in out and "role: primary" in out
        assert "refusing" not in out and "anyway" not in out
        assert not await in_recovery(primary, port)
    finally:
        await daemon.stop()


# --- 2. one daemon per state_dir ----------------------------------------------------------


async def test_second_daemon_on_the_same_state_dir_exits_3_and_the_first_keeps_serving(
    tmp_path: Path,
) -> None:
    config = minimal_config(tmp_path)
    state = Path(config["state_dir"])
    first_path = write_config(tmp_path / "first.yaml", config)
    first = await DaemonProcess.start(first_path, config["http"]["port"])
    try:
        await first.wait_http()
        assert (state / STATE_LOCK_FILE).read_text().strip() == str(first.proc.pid)

        second_port = free_port()
        second_path = write_config(
            tmp_path / "second.yaml", {**config, "http": {"host": "127.0.0.1", "port": second_port}}
        )
        started = time.monotonic()
        second = await DaemonProcess.start(second_path, second_port)
        try:
            assert await second.wait_exit(timeout=20) == EXIT_REFUSE, second.log
        finally:
            await second.stop()
        took = time.monotonic() - started
        assert took < 10, f"the second daemon took {took:.1f}s to refuse"
        assert (
            f"another laterbased (pid {first.proc.pid}) is already running with state_dir "
            f"{state}; stop it first (systemctl stop laterbased) or give this one its own "
            "state_dir"
        ) in second.log
        assert "laterbased ready" not in second.log  # refused before HTTP and workers
        await first.wait_http(timeout=5)  # the first one keeps serving

        first.send(signal.SIGTERM)
        assert await first.wait_exit() == 0
    finally:
        await first.stop()

    third = await DaemonProcess.start(first_path, config["http"]["port"])
    try:
        await third.wait_http()
    finally:
        third.send(signal.SIGTERM)
        assert await third.wait_exit() == 0
        await third.stop()


async def test_the_state_lock_is_not_inherited_by_children_and_dies_with_its_holder(
    tmp_path: Path,
) -> None:
    held = lock_state_dir(tmp_path / "state")
    try:
        # A second taker in this very process is refused too (flock is per open file).
        with pytest.raises(RefuseToRun, match=rf"another laterbased \(pid {os.getpid()}\)"):
            lock_state_dir(tmp_path / "state")
        # A child (postgres, pg_dump, rclone …) does not get the descriptor.
        listing = await run(["ls", "-l", "/proc/self/fd/"], capture_stdout=True, log_name="ls")
        assert STATE_LOCK_FILE not in listing.stdout.decode()
    finally:
        held.release()
    with take_lock(tmp_path / "state" / STATE_LOCK_FILE):
        with pytest.raises(LockBusy):
            take_lock(tmp_path / "state" / STATE_LOCK_FILE)
    lock_state_dir(tmp_path / "state").release()


# --- 3. log noise -------------------------------------------------------------------------


def local_upload_config(dest: Path) -> Any:
    env = {
        "PRIMARY_HOST": "resolve.local",
        "HOME": "/nonexistent-home",
        "RCLONE_REMOTE_NAME": "offsite",
        "RCLONE_REMOTE_PATH": str(dest),
        "RCLONE_REMOTE_1_NAME": "offsite",
        "RCLONE_REMOTE_1_TYPE": "local",
        "LATERBASED_UPLOAD_RETRIES": "0",
    }
    return load_config(None, env)


async def test_rclone_stats_lines_are_debug_and_its_errors_warnings(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    config = local_upload_config(tmp_path / "remote")
    rclone = await Rclone.open(config.upload)
    source = tmp_path / "one.dump"
    source.write_bytes(b"x" * 1000)
    assert await rclone.lsjson(rclone.target("nowhere")) == []  # absent: an answer
    await rclone.copyto(source, rclone.target("db", "one.dump"))
    assert [e.name for e in await rclone.lsjson(rclone.target("db"))] == ["one.dump"]
    with pytest.raises(RcloneFailed):
        await rclone.copyto(tmp_path / "missing.dump", rclone.target("db", "missing.dump"))

    rclone_records = [r for r in caplog.records if r.name == "laterbased.offsite.rclone"]
    stats = [r for r in rclone_records if " B / " in r.getMessage() and "ETA" in r.getMessage()]
    assert len(stats) >= 4, "every rclone call prints a stats line (at DEBUG)"
    assert {r.levelno for r in stats} == {logging.DEBUG}
    loud = [r.getMessage() for r in rclone_records if r.levelno >= logging.INFO]
    # The expected absence (lsjson of a missing folder) is not a warning; the failed copy is.
    assert loud and all("rclone copyto:" in message for message in loud), loud
    assert any("ERROR" in m and "not found" in m for m in loud), loud
    assert all(
        r.levelno == logging.WARNING for r in rclone_records if r.levelno >= logging.INFO
    )
    # Nothing of rclone's reaches INFO through the generic child logger any more.
    generic = [r for r in caplog.records if r.name == "laterbased.proc"]
    assert not [r for r in generic if "NOTICE" in r.getMessage()]


@pytest.mark.parametrize(
    ("line", "level"),
    [
        ("2026/11/26 13:18:50 NOTICE:           0 B / 0 B, -, 0 B/s, ETA -", logging.DEBUG),
        ("2026/11/26 13:18:50 NOTICE:   1.500 GiB / 10 GiB, 15%, 10 MiB/s, ETA 14m", logging.DEBUG),
        ('2026/11/26 13:18:50 NOTICE: Config file "/x/rclone.conf" not found - using defaults',
         logging.DEBUG),
        ("2026/11/26 13:18:50 ERROR : db/x.dump: Failed to copy: 403 Forbidden", logging.WARNING),
        ("2026/11/26 13:18:50 NOTICE: Failed to copyto: directory not found", logging.WARNING),
        ('2026/11/26 13:18:50 CRITICAL: Failed to create file system for "x:"', logging.ERROR),
        ("2026/11/26 13:18:50 NOTICE: S3 bucket b: Switched region to eu-west-1", logging.INFO),
        ("2026/11/26 13:18:50 DEBUG : rclone: Version v1.75.2", logging.DEBUG),
        ("panic: runtime error", logging.INFO),
    ],
)
def test_rclone_line_levels(line: str, level: int) -> None:
    assert RcloneLog("copyto").level(line) == level


def test_a_long_transfer_reports_its_progress_at_info(monkeypatch: pytest.MonkeyPatch) -> None:
    log = RcloneLog("copyto")
    stats = "2026/11/26 13:18:50 NOTICE:   1.500 GiB / 10 GiB, 15%, 10 MiB/s, ETA 14m"
    assert log.level(stats) == logging.DEBUG
    log.started -= rclone_module.STATS_AT_INFO_AFTER
    assert log.level(stats) == logging.INFO
    absent = "2026/11/26 13:18:50 ERROR : error listing: directory not found"
    assert RcloneLog("lsjson", absent_ok=True).level(absent) == logging.DEBUG
    assert RcloneLog("copyto").level(absent) == logging.WARNING


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
    info = [r for r in ours if r.levelno >= logging.INFO]
    assert len(info) <= len(progress) + 4, [r.getMessage() for r in info]


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


def test_repeats_are_logged_once_then_summarised_once_a_window() -> None:
    fatal = (
        '{} UTC [{}] FATAL:  could not connect to the primary server: connection to server '
        'at "10.0.0.5", port 5432 failed: Connection refused'
    )
    hint = "\tIs the server running on that host and accepting TCP/IP connections?"
    collapser = RepeatCollapser(window=60)
    logged: list[str] = []
    for second in range(0, 130, 5):  # the walreceiver retries every 5 s
        logged += collapser.feed(fatal.format(f"13:{second:03d}", 1000 + second), float(second))
        logged += collapser.feed(hint, float(second))
    assert logged[0].startswith("13:000 UTC [1000] FATAL:  could not connect")
    assert logged[1] == hint
    summary = (
        'FATAL:  could not connect to the primary server: connection to server at "10.0.0.5", '
        "port 5432 failed: Connection refused (repeated {} times in the last minute)"
    )
    # 5 s … 55 s in the first minute, 60 s … 115 s in the second.
    assert logged[2:] == [summary.format(11), summary.format(12)]
    assert collapser.next_deadline() == 180.0
    # The primary is back: a new message is logged at once, the last repeats when due.
    assert collapser.feed("13:131 UTC [77] LOG:  started streaming WAL", 131.0) == [
        "13:131 UTC [77] LOG:  started streaming WAL"
    ]
    assert collapser.expire(180.0) == [summary.format(2)]
    assert collapser.expire(240.0) == []  # quiet for a window: forgotten ...
    assert collapser.feed(fatal.format("13:300", 5), 300.0)[0].startswith("13:300")  # ... so logged


async def test_standby_fatal_while_the_primary_is_down_is_collapsed(
    make_primary: Callable[..., PgServer], caplog: pytest.LogCaptureFixture
) -> None:
    # A real postgres in standby mode whose primary does not answer: its walreceiver fails
    # with the same FATAL every wal_retrieve_retry_interval (5 s by default, 100 ms here).
    server = make_primary()
    await asyncio.to_thread(server.stop, "fast")
    (server.data_dir / "standby.signal").touch()
    dead = free_port()
    caplog.set_level(logging.INFO, logger="laterbased.proc")
    child = await spawn(
        [
            str(server.bindir / "postgres"),
            "-D", str(server.data_dir),
            "-c", f"primary_conninfo=host=127.0.0.1 port={dead} user=nobody connect_timeout=2",
            "-c", "wal_retrieve_retry_interval=100ms",
        ],
        run_as=resolve_run_as(None),
        log_name="standby postgres",
        repeat_window=1.0,
    )
    try:
        await wait_for(
            lambda: sum(
                "repeated" in m and "could not connect" in m
                for m in (r.getMessage() for r in caplog.records)
            ) >= 2,
            "two summaries of the repeated FATAL",
            timeout=30,
            log=lambda: caplog.text[-3000:],
        )
    finally:
        await child.stop([(signal.SIGINT, 30)])
    messages = [r.getMessage() for r in caplog.records if r.name == "laterbased.proc"]
    fatal = [m for m in messages if "could not connect to the primary server" in m]
    full = [m for m in fatal if "repeated" not in m]
    summaries = [m for m in fatal if "repeated" in m]
    assert len(full) == 1, fatal
    assert len(summaries) >= 2
    assert all(m.startswith("standby postgres: FATAL:  could not connect") for m in summaries)
    counted = [int(m.rsplit("(repeated ", 1)[1].split()[0]) for m in summaries]
    assert sum(counted) >= 5, counted
    # The postmaster's own lines are still there, once each.
    assert sum("database system is shut down" in m for m in messages) == 1, messages[-10:]

