"""One daemon per state_dir: a second ``laterbased run`` on the same state_dir exits 3 naming
the first (which keeps serving), and the lock is neither inherited by children nor outlives
its holder."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest
from daemon_process import DaemonProcess, minimal_config, write_config
from pgserver import free_port

from laterbased.core.lockfile import STATE_LOCK_FILE, LockBusy, lock_state_dir, take_lock
from laterbased.errors import EXIT_REFUSE, RefuseToRun
from laterbased.proc import run


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
