"""Which process, which file: laterbased stops, kills and deletes only what is provably its
own, and never follows a planted symbolic link (issue 14, items 4, 7, 8, 9)."""

from __future__ import annotations

import signal
from collections.abc import Callable
from pathlib import Path

import pytest
from daemon_process import DaemonProcess, write_config
from pgserver import PgServer
from test_standby_daemon import daemon_config
from waiting import wait_for

from laterbased.proc import pid_alive, read_postmaster_pid

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
