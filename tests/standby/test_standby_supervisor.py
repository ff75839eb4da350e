"""The standby supervisor against a real primary: the worker runs in-process with a
WorkerContext, exactly as the daemon runs it, and starts a real standby postgres."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import subprocess
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest
from pgserver import NASTY_PASSWORD, PgServer
from standby_support import DEADLINE, cmdlines, frozen_checkpointer, running_standby
from waiting import wait_for

from laterbased.config import (
    Secret,
)
from laterbased.errors import RefuseToRun
from laterbased.pg import control_file
from laterbased.proc import pid_alive, pids_with_cwd_under
from laterbased.records import identity
from laterbased.standby import supervisor
from laterbased.standby.promote import PromoteRefused, promote_in_daemon

pytestmark = pytest.mark.slow

SYSID = "SELECT system_identifier FROM pg_control_system()"


def drop_slot(primary: PgServer, name: str = "laterbase_standby_slot") -> None:
    query = "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE "
    primary.sql(query + f"slot_name = '{name}' AND NOT active")


async def test_bootstrap_from_empty_dir_streams_rows_with_active_slot_and_no_password_in_argv(
    primary: PgServer,
) -> None:
    primary.sql("CREATE TABLE IF NOT EXISTS sb_first (v text)")
    drop_slot(primary)
    async with running_standby(primary) as standby:
        await standby.wait_running()
        st = standby.state.standby
        assert st.role == "replica"
        assert st.bootstrap_bytes_done > 0
        assert st.bootstrap_bytes_total is not None
        assert (standby.data_dir / "standby.signal").exists()
        assert control_file.system_identifier(standby.data_dir) == primary.sql(
            "SELECT system_identifier FROM pg_control_system()"
        )
        primary.sql("INSERT INTO sb_first VALUES ('hello from the primary')")
        await standby.wait_row(primary, "sb_first", "hello from the primary")
        assert primary.sql(
            "SELECT active FROM pg_replication_slots WHERE slot_name = 'laterbase_standby_slot'"
        ) == "t"
        # The password is nowhere in any command line, ours or our children's.
        for cmdline in cmdlines():
            assert NASTY_PASSWORD.encode() not in cmdline
            assert b"w\\'o" not in cmdline
        # It is in the passfile, owned by the postgres user, mode 0600, in the state dir.
        passfile = standby.config.state_dir / "standby-run" / "primary.pgpass"
        info = passfile.stat()
        assert info.st_mode & 0o777 == 0o600
        if primary.os_user is not None:
            assert info.st_uid == primary.os_user.pw_uid
        # The standby listens where we said, not where the primary does.
        assert await standby.query(primary, "SHOW listen_addresses") == "127.0.0.1"
        assert await standby.query(primary, "SELECT pg_is_in_recovery()") is True
        # The standby runs the primary's own major, also with newer majors installed beside.
        assert st.pid is not None
        assert os.readlink(f"/proc/{st.pid}/exe").startswith(f"{primary.bindir.parent}/"), (
            f"a PostgreSQL {primary.bindir.parent.name} primary got a standby on "
            f"{os.readlink(f'/proc/{st.pid}/exe')}"
        )
        pid = st.pid
    assert pid is not None and not pid_alive(pid)
    assert standby.state.standby.phase == "stopped"


async def test_kill_9_of_the_postmaster_restarts_it_and_replication_resumes(
    make_primary: Callable[..., PgServer],
) -> None:
    primary = make_primary()
    primary.sql("CREATE TABLE sb_kill (v text)")
    async with running_standby(primary, restart_backoff_max=2.0) as standby:
        await standby.wait_running()
        first = standby.state.standby.pid
        assert first is not None
        os.kill(first, signal.SIGKILL)
        await wait_for(
            lambda: standby.state.standby.restarts["killed"] == 1,
            "restart counted with reason killed",
        )
        await standby.wait_running()
        assert standby.state.standby.pid not in (None, first)
        assert "signal 9" in (standby.state.standby.last_exit or "")
        primary.sql("INSERT INTO sb_kill VALUES ('after the kill')")
        await standby.wait_row(primary, "sb_kill", "after the kill")
        assert any("restart #1" in event.message for event in standby.state.events)


def pending_signals(pid: int) -> int:
    """The signals sent to ``pid`` and not yet handled (a stopped process handles none)."""
    status = Path(f"/proc/{pid}/status").read_text()
    masks = [int(line.split()[1], 16) for line in status.splitlines()
             if line.startswith(("SigPnd:", "ShdPnd:"))]
    return masks[0] | masks[1]


async def test_a_second_cancel_during_shutdown_still_leaves_no_postgres_behind(
    make_primary: Callable[..., PgServer],
) -> None:
    """The second cancellation (the daemon's task group aborting) lands while postgres is
    being stopped, for sure: the postmaster is SIGSTOPped, so its stop waits (SIGINT, then
    SIGQUIT, then SIGKILL of its group) and the second cancel arrives once a stop signal is
    pending. It must end with the postmaster reaped, no exception but the cancellation, and
    no postgres process left.

    This one cannot catch a stop that skips the sweep of leftover backends (they exit by
    themselves within moments of the postmaster's SIGKILL); the next test freezes one, so
    that only the sweep ends it."""
    primary = make_primary()
    async with running_standby(primary, stop_timeout=1.0) as standby:
        await standby.wait_running()
        postmaster = standby.state.standby.pid
        assert postmaster is not None
        conn = await standby.connect(primary)  # a backend: its own session, own process
        try:
            assert standby.task is not None
            os.kill(postmaster, signal.SIGSTOP)
            standby.task.cancel()
            # SIGINT, or SIGQUIT when the frozen postmaster already counted as stuck; each
            # stays pending for stop_timeout (1 s) before the next step.
            stop_signals = (1 << (signal.SIGINT - 1)) | (1 << (signal.SIGQUIT - 1))
            await wait_for(
                lambda: pending_signals(postmaster) & stop_signals,
                "the supervisor's stop signal to the postmaster (its stop under way)",
                interval=0.02,
            )
            standby.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await standby.task
            assert not os.path.exists(f"/proc/{postmaster}")
            assert pids_with_cwd_under(standby.config.state_dir) == []
        finally:
            with contextlib.suppress(Exception):
                await conn.close(timeout=1)


async def test_a_second_cancel_during_shutdown_still_kills_a_frozen_backend(
    make_primary: Callable[..., PgServer],
) -> None:
    """As above, with a backend that cannot notice its postmaster's death (frozen): only
    the sweep after the stop ends it, so a second cancel that skipped the sweep would leave
    it behind (checked: without finish_uncancellable around stop_and_sweep this fails).
    Possible since a child's exit is read from its reaped status: before, the stop waited
    for the frozen backend to close the postmaster's output pipe, for ever."""
    primary = make_primary()
    async with running_standby(primary, stop_timeout=1.0) as standby:
        await standby.wait_running()
        postmaster = standby.state.standby.pid
        assert postmaster is not None
        conn = await standby.connect(primary)
        backend = int(await conn.fetchval("SELECT pg_backend_pid()"))
        try:
            assert standby.task is not None
            os.kill(backend, signal.SIGSTOP)
            os.kill(postmaster, signal.SIGSTOP)
            standby.task.cancel()
            stop_signals = (1 << (signal.SIGINT - 1)) | (1 << (signal.SIGQUIT - 1))
            await wait_for(
                lambda: pending_signals(postmaster) & stop_signals,
                "the supervisor's stop signal to the postmaster (its stop under way)",
                interval=0.02,
            )
            standby.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.wait_for(asyncio.shield(standby.task), DEADLINE)
            assert not os.path.exists(f"/proc/{postmaster}")
            await wait_for(lambda: not pid_alive(backend), "the frozen backend killed", 10)
            assert pids_with_cwd_under(standby.config.state_dir) == []
        finally:
            if pid_alive(backend):
                os.kill(backend, signal.SIGKILL)
            with contextlib.suppress(Exception):
                conn.terminate()


async def test_a_stopped_postmaster_is_detected_as_stuck_and_restarted(
    make_primary: Callable[..., PgServer], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Shorter than in production (5 s each) so the test stays quick; same logic.
    monkeypatch.setattr(supervisor, "PING_TIMEOUT", 1)
    monkeypatch.setattr(supervisor, "STUCK_QUIT_WAIT", 1.0)
    primary = make_primary()
    async with running_standby(primary) as standby:
        await standby.wait_running()
        first = standby.state.standby.pid
        assert first is not None
        os.kill(first, signal.SIGSTOP)  # alive, PID present, answers nothing
        await wait_for(
            lambda: standby.state.standby.restarts["stuck"] == 1, "restart with reason stuck"
        )
        await standby.wait_running()
        assert standby.state.standby.pid != first
        assert not pid_alive(first)


async def test_primary_stop_and_start_standby_reconnects_by_itself(
    make_primary: Callable[..., PgServer],
) -> None:
    primary = make_primary()
    primary.sql("CREATE TABLE sb_reconnect (v text)")
    async with running_standby(primary) as standby:
        await standby.wait_running()
        primary.stop("fast")
        await asyncio.sleep(1.0)
        primary.start()
        primary.sql("INSERT INTO sb_reconnect VALUES ('back again')")
        await standby.wait_row(primary, "sb_reconnect", "back again")
        assert sum(standby.state.standby.restarts.values()) == 0


async def test_reload_with_a_new_slot_and_password_keeps_streaming_without_reclone(
    make_primary: Callable[..., PgServer],
) -> None:
    primary = make_primary()
    primary.sql("CREATE TABLE sb_reload (v text)")
    async with running_standby(primary) as standby:
        await standby.wait_running()
        pid = standby.state.standby.pid
        new_password = "n3w p'a\\ss \"word\""
        primary.sql(
            "ALTER ROLE replicator PASSWORD '" + new_password.replace("'", "''") + "'"
        )
        new = replace(
            standby.config,
            primary=replace(standby.config.primary, password=Secret(new_password)),
            standby=replace(standby.config.standby, slot_name="laterbased_reloaded"),
        )
        standby.state.config = new
        standby.ctx._announce_reload()
        await wait_for(
            lambda: primary.sql(
                "SELECT active FROM pg_replication_slots WHERE slot_name = 'laterbased_reloaded'"
            ) == "t",
            "the standby streams through the new slot",
        )
        primary.sql("INSERT INTO sb_reload VALUES ('via new slot')")
        await standby.wait_row(primary, "sb_reload", "via new slot")
        assert standby.state.standby.pid == pid  # reloaded, not restarted or re-cloned
        assert "laterbased_reloaded" in (standby.data_dir / "postgresql.auto.conf").read_text()


async def test_data_dir_of_another_cluster_is_refused_with_the_sysid(
    primary: PgServer, make_primary: Callable[..., PgServer]
) -> None:
    other = make_primary()
    other_sysid = other.sql("SELECT system_identifier FROM pg_control_system()")
    async with running_standby(primary, start=False) as standby:
        data_dir = standby.data_dir
        # laterbased knows its primary: the data directory is the stranger here (without
        # that record, the data directory would be trusted over the primary).
        identity.save_accepted(standby.config.state_dir, primary.sql(SYSID), "test")
        other.stop()
        data_dir.parent.mkdir(parents=True, exist_ok=True)
        shutil.copytree(other.data_dir, data_dir, symlinks=True)
        if other.os_user is not None:
            for path in [data_dir, *data_dir.rglob("*")]:
                os.lchown(path, other.os_user.pw_uid, other.os_user.pw_gid)
        (data_dir / "standby.signal").touch()
        standby.start()
        assert standby.task is not None
        with pytest.raises(RefuseToRun) as refused:
            await asyncio.wait_for(standby.task, DEADLINE)
        assert other_sysid in str(refused.value)
        assert "reclone_on_mismatch" in str(refused.value)
        assert standby.state.standby.phase == "failed"
        assert control_file.system_identifier(data_dir) == other_sysid  # untouched


async def test_reclone_on_mismatch_moves_the_old_dir_aside_and_streams(
    make_primary: Callable[..., PgServer],
) -> None:
    primary = make_primary()
    other = make_primary()
    other_sysid = other.sql("SELECT system_identifier FROM pg_control_system()")
    primary.sql("CREATE TABLE sb_reclone (v text)")
    async with running_standby(primary, start=False, reclone_on_mismatch=True) as standby:
        data_dir = standby.data_dir
        identity.save_accepted(standby.config.state_dir, primary.sql(SYSID), "test")
        other.stop()
        shutil.copytree(other.data_dir, data_dir, symlinks=True)
        if other.os_user is not None:
            for path in [data_dir, *data_dir.rglob("*")]:
                os.lchown(path, other.os_user.pw_uid, other.os_user.pw_gid)
        (data_dir / "standby.signal").touch()
        standby.start()
        await standby.wait_running()
        aside = list(data_dir.parent.glob("standby.mismatch-*"))
        assert len(aside) == 1
        assert control_file.system_identifier(aside[0]) == other_sysid
        primary.sql("INSERT INTO sb_reclone VALUES ('fresh clone')")
        await standby.wait_row(primary, "sb_reclone", "fresh clone")


async def test_cancel_mid_bootstrap_leaves_no_data_dir_and_next_start_cleans_and_clones(
    make_primary: Callable[..., PgServer],
) -> None:
    primary = make_primary()
    async with running_standby(primary, start=False) as standby:
        with frozen_checkpointer(primary):
            standby.start()
            await wait_for(
                lambda: "waiting for checkpoint" in (standby.state.standby.message or ""),
                "bootstrap waiting for the primary's checkpoint",
            )
            assert standby.state.standby.phase == "bootstrapping"
            staging = standby.data_dir.with_name(".standby.laterbased-staging")
            assert staging.exists()
            await standby.stop()
        assert not standby.data_dir.exists()
        assert not staging.exists()
        # A harder death (no cleanup) leaves staging behind: the next start removes it.
        staging.mkdir()
        (staging / "PG_VERSION").write_text("15\n")
        standby.ctx.stopping.clear()
        standby.start()
        await standby.wait_running()
        assert not staging.exists()


async def test_promote_makes_the_standby_writable_and_it_stays_primary_after_a_crash(
    make_primary: Callable[..., PgServer],
) -> None:
    primary = make_primary()
    async with running_standby(primary, superuser=True, restart_backoff_max=1.0) as standby:
        await standby.wait_running()
        result = await promote_in_daemon(standby.state)
        assert result["role"] == "primary"
        assert result["method"] == "pg_promote()"
        st = standby.state.standby
        assert (st.role, st.phase) == ("primary", "promoted")
        assert st.promoted_at is not None
        conn = await standby.connect(primary)
        try:
            # The harness's primary (and so its clone) commits asynchronously; this write
            # must survive the SIGKILL below.
            await conn.execute("SET synchronous_commit = on; CREATE TABLE promoted_writes (id int)")
        finally:
            await conn.close()
        assert await standby.query(primary, "SELECT pg_is_in_recovery()") is False
        with pytest.raises(PromoteRefused):
            await promote_in_daemon(standby.state)
        # A crash after promotion restarts it as a primary: no standby.signal comes back.
        pid = st.pid
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        await wait_for(lambda: st.restarts["killed"] == 1, "restart after the crash")
        await wait_for(lambda: st.phase == "promoted" and st.pid not in (None, pid),
                       "promoted server running again")
        assert not (standby.data_dir / "standby.signal").exists()
        await standby.query(primary, "INSERT INTO promoted_writes VALUES (1)")


async def test_bootstrap_waits_for_an_absent_primary_and_clones_when_it_appears(
    make_primary: Callable[..., PgServer],
) -> None:
    primary = make_primary()
    primary.stop("fast")
    async with running_standby(primary, bootstrap_retry_max=1.0) as standby:
        await wait_for(
            lambda: "bootstrap failed, retrying" in (standby.state.standby.message or ""),
            "bootstrap retry announced while the primary is down",
        )
        assert standby.state.standby.phase == "waiting"
        assert not standby.data_dir.exists()
        primary.start()
        await standby.wait_running()


async def test_bootstrap_into_a_mount_point_uses_inner_staging(
    primary: PgServer,
) -> None:
    async with running_standby(primary, start=False) as standby:
        standby.data_dir.mkdir(parents=True)
        mounted = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "mode=0755,size=512m", "laterbased-test",
             str(standby.data_dir)],
            capture_output=True, check=False, timeout=30,
        )
        if mounted.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr!r}")
        try:
            drop_slot(primary)
            standby.start()
            await standby.wait_running()
            assert os.path.ismount(standby.data_dir)
            assert not (standby.data_dir / ".laterbased-staging").exists()
            assert (standby.data_dir / "standby.signal").exists()
            await standby.stop()
        finally:
            subprocess.run(["umount", str(standby.data_dir)], check=False, timeout=30)
