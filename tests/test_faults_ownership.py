"""Which process, which file: laterbased stops, kills and deletes only what is provably its
own, and never follows a planted symbolic link (issue 14, items 4, 7, 8, 9)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from daemon_process import DaemonProcess, write_config
from pgserver import PgServer
from test_standby_daemon import daemon_config
from test_standby_supervisor import running_standby
from waiting import wait_for

from laterbased.proc import pid_alive, process_facts, read_postmaster_pid
from laterbased.standby import bootstrap

pytestmark = pytest.mark.slow


async def test_a_standby_left_running_by_a_sigkilled_daemon_is_stopped_and_replaced_at_restart(
    make_primary: Callable[..., PgServer], state_dir: Path
) -> None:
    primary = make_primary()
    config = daemon_config(primary, state_dir)
    config_path = write_config(state_dir / "laterbased.yaml", config)
    data_dir = state_dir / "standby"
    first = await DaemonProcess.start(config_path, config["http"]["port"])
    try:
        await first.wait_log("standby postgres accepting connections", timeout=90)
        orphan = read_postmaster_pid(data_dir)
        assert orphan is not None
        first.proc.kill()
        await first.wait_exit()
    finally:
        await first.stop()
    # The postmaster has its own session: it outlives the daemon, unsupervised.
    assert pid_alive(orphan)
    second = await DaemonProcess.start(config_path, config["http"]["port"])
    try:
        await second.wait_log("standby postgres accepting connections", timeout=90)
        assert "is ours: stopping it before starting our own" in second.log
        assert not pid_alive(orphan)
        assert read_postmaster_pid(data_dir) not in (None, orphan)
        second.send(signal.SIGTERM)
        assert await second.wait_exit(timeout=90) == 0
    finally:
        await second.stop()
    await wait_for(lambda: read_postmaster_pid(data_dir) is None, "postmaster.pid removed")


@contextlib.contextmanager
def mounted(argv: list[str], target: Path) -> Iterator[None]:
    """``mount <argv> target`` for the test (we run as root), lazily unmounted after it."""
    done = subprocess.run(["mount", *argv, str(target)], capture_output=True, timeout=30,
                          check=False)
    if done.returncode != 0:
        pytest.skip(f"cannot mount here: {done.stderr!r}")
    try:
        yield
    finally:
        subprocess.run(["umount", "-l", str(target)], check=False, timeout=30)


def basebackups_into(staging: Path) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        facts = process_facts(int(entry.name)) if entry.name.isdigit() else None
        if facts is not None and facts.program == "pg_basebackup":
            with contextlib.suppress(OSError):
                if str(staging).encode() in (entry / "cmdline").read_bytes():
                    found.append(facts.pid)
    return found


async def test_a_bind_mounted_data_dir_on_the_same_file_system_is_cloned_once_in_place(
    primary: PgServer,
) -> None:
    # Docker's vfs driver, or a bind mount: the volume is on its parent's file system, so
    # os.path.ismount says no. Staging beside it used to end in EBUSY and a full
    # pg_basebackup repeated for ever.
    async with running_standby(primary, start=False, bootstrap_retry_max=1.0) as standby:
        data_dir = standby.data_dir
        data_dir.mkdir(parents=True)
        with mounted(["--bind", str(data_dir)], data_dir):
            assert not os.path.ismount(data_dir)
            assert bootstrap.is_mount_point(data_dir)
            standby.start()
            await standby.wait_running()
            assert not [e for e in standby.state.events if "bootstrap failed" in e.message]
            assert (data_dir / "standby.signal").exists()
            assert not (data_dir / bootstrap.INNER_STAGING).exists()
            assert not data_dir.with_name(f".{data_dir.name}.laterbased-staging").exists()
            await standby.stop()


async def test_a_daemon_killed_mid_bootstrap_on_a_mount_point_keeps_lost_and_found(
    make_primary: Callable[..., PgServer], state_dir: Path
) -> None:
    primary = make_primary()
    checkpointer = int(
        primary.sql("SELECT pid FROM pg_stat_activity WHERE backend_type = 'checkpointer'")
    )
    config = daemon_config(primary, state_dir)
    config_path = write_config(state_dir / "laterbased.yaml", config)
    data_dir = state_dir / "standby"
    data_dir.mkdir()
    with mounted(["-t", "tmpfs", "-o", "mode=0755,size=512m", "laterbased-test"], data_dir):
        # What mkfs puts on every ext4 volume, with something fsck once saved in it.
        (data_dir / "lost+found").mkdir(mode=0o700)
        (data_dir / "lost+found" / "#12345").write_text("recovered by fsck")
        staging = data_dir / bootstrap.INNER_STAGING
        os.kill(checkpointer, signal.SIGSTOP)
        second: DaemonProcess | None = None
        try:
            first = await DaemonProcess.start(config_path, config["http"]["port"])
            try:
                await first.wait_log("waiting for the primary's checkpoint", timeout=60)
                assert staging.is_dir()
                first.proc.kill()  # no cleanup at all: staging and pg_basebackup stay
                await first.wait_exit()
            finally:
                await first.stop()
            orphans = basebackups_into(staging)
            assert orphans != []
            second = await DaemonProcess.start(config_path, config["http"]["port"])
            await second.wait_log("killing leftover pg_basebackup", timeout=30)
        finally:
            os.kill(checkpointer, signal.SIGCONT)
        assert second is not None
        try:
            await second.wait_log("standby postgres accepting connections", timeout=90)
            assert not any(pid_alive(pid) for pid in orphans)
            assert (data_dir / "lost+found" / "#12345").read_text() == "recovered by fsck"
            assert not staging.exists()
            second.send(signal.SIGTERM)
            assert await second.wait_exit(timeout=90) == 0
        finally:
            await second.stop()


async def test_an_interrupted_move_into_a_mount_point_removes_only_what_it_moved(
    primary: PgServer,
) -> None:
    async with running_standby(primary, start=False) as standby:
        data_dir = standby.data_dir
        data_dir.mkdir(parents=True)
        with mounted(["-t", "tmpfs", "-o", "mode=0755,size=512m", "laterbased-test"], data_dir):
            (data_dir / "lost+found").mkdir(mode=0o700)
            (data_dir / "lost+found" / "#12345").write_text("recovered by fsck")
            # A crash halfway through moving a clone's entries into the mount point: the
            # list of what was being moved, two entries moved, the rest still staged.
            staging = data_dir / bootstrap.INNER_STAGING
            staging.mkdir()
            (staging / "global").mkdir()
            (data_dir / "base").mkdir()
            (data_dir / "PG_VERSION").write_text("15\n")
            (data_dir / bootstrap.MOVING_LIST).write_text('["PG_VERSION", "base", "global"]')
            standby.start()
            await standby.wait_running()
            assert (data_dir / "lost+found" / "#12345").read_text() == "recovered by fsck"
            assert not (data_dir / bootstrap.MOVING_LIST).exists()
            assert (data_dir / "standby.signal").exists()
            await standby.stop()
