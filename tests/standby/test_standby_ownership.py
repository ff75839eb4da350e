"""The standby stops, kills and deletes only what is provably its own, and never follows a
planted symbolic link: a postgres left by a SIGKILLed daemon, a stale postmaster.pid, data
directories that are mount points or symbolic links, a runtime directory that is a link
(issue 14, items 7, 8, 9). Real PostgreSQL, real mounts, real processes."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from bystanders import victim_with_an_open_file
from daemon_process import DaemonProcess, write_config
from daemon_support import daemon_config
from pgserver import PgServer
from standby_support import frozen_checkpointer, running_standby
from waiting import wait_for

from laterbased.errors import UnsafePath
from laterbased.proc import pid_alive, process_facts, read_postmaster_pid
from laterbased.standby import bootstrap

pytestmark = pytest.mark.slow


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


async def test_a_bind_mounted_data_dir_on_the_same_file_system_is_cloned_once_in_place(
    primary: PgServer,
) -> None:
    # Docker's vfs driver, or a bind mount: the volume is on its parent's file system, so
    # os.path.ismount says no. Staging beside it used to end in EBUSY and a full
    # pg_basebackup repeated for ever.
    async with running_standby(primary, start=False, bootstrap_retry_max=1.0) as standby:
        data_dir = standby.data_dir
        data_dir.mkdir(parents=True, mode=0o700)  # a volume's root: root's, 0700
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
    config = daemon_config(primary, state_dir)
    config_path = write_config(state_dir / "laterbased.yaml", config)
    data_dir = state_dir / "standby"
    data_dir.mkdir()
    with mounted(["-t", "tmpfs", "-o", "mode=0755,size=512m", "laterbased-test"], data_dir):
        # What mkfs puts on every ext4 volume, with something fsck once saved in it.
        (data_dir / "lost+found").mkdir(mode=0o700)
        (data_dir / "lost+found" / "#12345").write_text("recovered by fsck")
        staging = data_dir / bootstrap.INNER_STAGING
        second: DaemonProcess | None = None
        with frozen_checkpointer(primary):
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


async def test_a_symlinked_runtime_dir_in_the_state_dir_is_refused_and_its_target_untouched(
    primary: PgServer,
) -> None:
    async with running_standby(primary, start=False) as standby:
        with victim_with_an_open_file() as (victim, _sleeper):
            (standby.config.state_dir / "standby-run").symlink_to(victim)
            before = victim.stat()
            standby.start()
            assert standby.task is not None
            with pytest.raises(UnsafePath, match="standby-run is a symbolic link"):
                await asyncio.wait_for(standby.task, 30)
            after = victim.stat()
            assert (after.st_mode, after.st_uid) == (before.st_mode, before.st_uid)


async def test_a_stale_postmaster_pid_naming_another_live_process_is_removed_not_obeyed(
    primary: PgServer,
) -> None:
    # After a crash or reboot the pid in postmaster.pid is reused: here by the primary's
    # own postgres, then by an unrelated program, both of the same OS user (another user's
    # process does not count for postgres). postgres itself refuses to start beside such a
    # file ("lock file already exists"); neither process may be touched.
    primary_postmaster = read_postmaster_pid(primary.data_dir)
    assert primary_postmaster is not None
    user = primary.os_user.pw_uid if primary.os_user is not None else None
    with subprocess.Popen(["sleep", "300"], cwd="/", user=user) as stranger:
        try:
            async with running_standby(primary, restart_backoff_max=1.0) as standby:
                await standby.wait_running()
                for squatter in (primary_postmaster, stranger.pid):
                    await standby.stop()
                    pid_file = standby.data_dir / "postmaster.pid"
                    assert not pid_file.exists()
                    pid_file.write_text(f"{squatter}\n{standby.data_dir}\n")
                    standby.ctx.stopping.clear()
                    standby.start()
                    await standby.wait_running()
                    assert read_postmaster_pid(standby.data_dir) not in (None, squatter)
                    assert pid_alive(squatter)
                    assert sum(standby.state.standby.restarts.values()) == 0
        finally:
            stranger.kill()


async def test_a_mount_point_that_appears_during_the_clone_gets_the_clone_moved_in(
    make_primary: Callable[..., PgServer],
) -> None:
    # The detection ran before the volume was mounted (or missed it): staging is beside
    # the directory, which can then be neither removed (EBUSY) nor renamed into (EXDEV).
    # The finished clone is moved in, not thrown away for another full pg_basebackup.
    primary = make_primary()
    async with running_standby(primary, start=False, bootstrap_retry_max=1.0) as standby:
        data_dir = standby.data_dir
        data_dir.mkdir(parents=True)
        staging = data_dir.with_name(f".{data_dir.name}.laterbased-staging")
        with frozen_checkpointer(primary):
            standby.start()
            await wait_for(
                lambda: "waiting for checkpoint" in (standby.state.standby.message or ""),
                "bootstrap waiting for the primary's checkpoint",
            )
            assert staging.is_dir()
        with mounted(["--bind", str(data_dir)], data_dir):
            await standby.wait_running()
            assert not [e for e in standby.state.events if "bootstrap failed" in e.message]
            assert not staging.exists()
            assert (data_dir / "standby.signal").exists()
            run_as = standby.config.standby.run_as or "postgres"
            owners = {path.owner() for path in [data_dir, *data_dir.rglob("*")]}
            assert owners == {run_as}
            await standby.stop()


async def test_a_data_dir_that_is_a_symbolic_link_to_an_empty_directory_is_cloned_into_it(
    primary: PgServer,
) -> None:
    # How operators put PGDATA on a bigger disk. A link cannot be replaced by a rename
    # (rmdir says ENOTDIR): the clone used to fail and repeat for ever.
    target = Path(tempfile.mkdtemp(prefix="laterbased-bigdisk-"))
    try:
        async with running_standby(primary, start=False, bootstrap_retry_max=1.0) as standby:
            data_dir = standby.data_dir
            data_dir.parent.mkdir(parents=True, exist_ok=True)
            data_dir.symlink_to(target)
            standby.start()
            await standby.wait_running()
            assert not [e for e in standby.state.events if "bootstrap failed" in e.message]
            assert data_dir.is_symlink()
            assert (target / "standby.signal").exists()
            assert not (target / bootstrap.INNER_STAGING).exists()
            await standby.stop()
    finally:
        shutil.rmtree(target, ignore_errors=True)
