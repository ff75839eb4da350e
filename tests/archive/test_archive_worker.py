"""The WAL archiver is a supervised child: restarted after being killed, stopped with the
daemon; a base backup cut short by SIGTERM leaves nothing behind."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from daemon_process import DaemonProcess, minimal_config, primary_section, write_config
from pgserver import PgServer
from pitr_support import config_for

from laterbased.archive.worker import run_archive
from laterbased.config import load_config
from laterbased.core.context import WorkerContext
from laterbased.core.state import State
from laterbased.health.verdicts import check_pitr
from laterbased.proc import pid_alive
from laterbased.records import wal_archive

pytestmark = pytest.mark.slow


async def wait_until(condition: Callable[[], bool], what: str, timeout: float = 60.0) -> None:
    try:
        async with asyncio.timeout(timeout):
            while not condition():
                await asyncio.sleep(0.05)
    except TimeoutError:
        raise AssertionError(f"not within {timeout}s: {what}") from None


def commandlines_naming(program: str, text: str) -> list[str]:
    """Command lines of ``program`` naming ``text`` (our own folder: other tests run too)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                line = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue
            if program in line and text in line:
                found.append(line)
    return found


async def test_a_killed_pg_receivewal_is_restarted_and_the_archive_goes_on(
    make_primary: Callable[..., PgServer], tmp_path: Path, state_dir: Path
) -> None:
    server = make_primary()
    config = config_for(server, tmp_path, state_dir)
    state = State(config=config)
    ctx = WorkerContext(state, asyncio.Event())
    task = asyncio.create_task(run_archive(ctx))
    try:
        await wait_until(lambda: state.archive.phase == "streaming", "pg_receivewal streaming")
        first = state.archive.pid
        assert first is not None
        os.kill(first, signal.SIGKILL)
        await wait_until(
            lambda: state.archive.phase == "streaming" and state.archive.pid not in (None, first),
            "a new pg_receivewal",
        )
        assert state.archive.restarts == 1
        assert "killed by signal 9" in (state.archive.last_exit or "")
        server.sql("CREATE TABLE after_the_restart (id int); SELECT pg_switch_wal()")
        lsn = server.sql("SELECT pg_current_wal_lsn()")
        await wait_until(
            lambda: server.sql(
                "SELECT count(*) FROM pg_stat_replication WHERE application_name = "
                f"'laterbased_archive_receivewal' AND flush_lsn >= '{lsn}'::pg_lsn"  # noqa: S608
            ) == "1",
            "the restarted pg_receivewal archives new WAL",
        )
        second = state.archive.pid

        def slot_watched() -> bool:
            slot = state.archive.slot
            return slot is not None and slot.exists and slot.active

        await wait_until(slot_watched, "the archive's slot polled, active")
    finally:
        ctx.stopping.set()
        await asyncio.wait_for(task, 30)
    assert second is not None and not pid_alive(second), "stopped with the worker"
    names = [s.path.name for s in wal_archive.list_segments(config.backup_directory)]
    assert any(name.endswith(".gz") for name in names), names


async def test_sigterm_during_a_base_backup_leaves_nothing_behind(
    make_primary: Callable[..., PgServer], tmp_path: Path, state_dir: Path
) -> None:
    server = make_primary()
    # Enough data that pg_basebackup runs for a moment after its folder appears.
    server.sql(
        "CREATE TABLE filler AS SELECT g, md5(g::text) AS note FROM generate_series(1, 600000) g"
    )
    backups = tmp_path / "backups"
    data = minimal_config(
        tmp_path,
        primary=primary_section(server, superuser=True),
        backup={"enabled": False, "directory": str(backups)},
        pitr={"enabled": True, "compression": "none"},
        state_dir=str(state_dir),
    )
    config_path = write_config(tmp_path / "laterbased.yaml", data)
    daemon = await DaemonProcess.start(config_path, data["http"]["port"])
    try:
        base = backups / wal_archive.BASE_DIR
        await wait_until(
            lambda: base.is_dir()
            and any(p.name.startswith(wal_archive.BASE_PARTIAL_PREFIX) for p in base.iterdir())
            and bool(commandlines_naming("pg_basebackup", str(backups))),
            "a base backup under way",
        )
        daemon.send(signal.SIGTERM)
        assert await daemon.wait_exit(30) == 0, daemon.log
    finally:
        await daemon.stop()
    assert "base backup finished" not in daemon.log, "SIGTERM came too late to test anything"
    assert list(base.iterdir()) == [], "no partial or half-published base backup"
    assert commandlines_naming("pg_basebackup", str(backups)) == []
    assert commandlines_naming("pg_receivewal", str(backups)) == []
    await wait_until(
        lambda: server.sql("SELECT count(*) FROM pg_stat_replication") == "0",
        "no walsender left on the primary",
        timeout=15,
    )


async def test_a_user_without_the_replication_right_is_reported_and_retried_not_a_crash(
    make_primary: Callable[..., PgServer], tmp_path: Path, state_dir: Path
) -> None:
    server = make_primary()
    server.sql("CREATE ROLE plain LOGIN PASSWORD 'plain-password'")
    config = load_config(
        None,
        {
            "PRIMARY_HOST": server.host,
            "PRIMARY_PORT": str(server.port),
            "PRIMARY_USER": "plain",
            "REPL_PASSWORD": "plain-password",
            "LOCAL_BACKUP_PATH": str(tmp_path / "backups"),
            "LATERBASED_STATE_DIR": str(state_dir),
            "LATERBASED_PITR_ENABLED": "true",
        },
    )
    state = State(config=config)
    ctx = WorkerContext(state, asyncio.Event())
    task = asyncio.create_task(run_archive(ctx))
    try:
        await wait_until(lambda: state.archive.restarts >= 1 or task.done(), "a failed start")
        assert not task.done(), "the worker keeps trying instead of crashing"
        assert state.archive.phase == "restarting"
        assert "could not start" in (state.archive.last_exit or ""), state.archive
        verdict = check_pitr(state, time.time())
        assert "could not start" in verdict.reason, verdict
    finally:
        ctx.stopping.set()
        await asyncio.wait_for(task, 30)


def receivewal_pids(backups: Path) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                line = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue
            if "pg_receivewal" in line and str(backups) in line:
                pids.append(int(entry.name))
    return pids


async def test_a_pg_receivewal_left_by_a_sigkilled_daemon_is_stopped_by_the_next_one(
    make_primary: Callable[..., PgServer], tmp_path: Path, state_dir: Path
) -> None:
    server = make_primary()
    backups = tmp_path / "backups"
    data = minimal_config(
        tmp_path,
        primary=primary_section(server, superuser=True),
        backup={"enabled": False, "directory": str(backups)},
        pitr={"enabled": True},
        state_dir=str(state_dir),
    )
    config_path = write_config(tmp_path / "laterbased.yaml", data)
    first = await DaemonProcess.start(config_path, data["http"]["port"])
    try:
        await wait_until(lambda: bool(receivewal_pids(backups)), "pg_receivewal running")
        (orphan,) = receivewal_pids(backups)
        first.send(signal.SIGKILL)
        await first.wait_exit(15)
    finally:
        await first.stop()
    assert pid_alive(orphan), "a SIGKILLed daemon cannot stop its child: it runs on"
    second = await DaemonProcess.start(config_path, data["http"]["port"])
    try:
        await second.wait_log(f"stopping pg_receivewal pid={orphan} left running", timeout=30)
        await wait_until(
            lambda: receivewal_pids(backups) != [] and orphan not in receivewal_pids(backups),
            "our own pg_receivewal instead of the orphan",
        )
        second.send(signal.SIGTERM)
        assert await second.wait_exit(30) == 0, second.log
    finally:
        await second.stop()
    assert receivewal_pids(backups) == [], "nothing left after a clean stop"
