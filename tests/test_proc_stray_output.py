"""A child's exit is seen when it exits, even while a process it left behind keeps its output.

A postgres backend that outlives its postmaster (busy, or frozen in a debugger) keeps the
postmaster's output pipe open. On Python 3.11 ``asyncio.subprocess.Process.wait()`` returns
only once every pipe is closed, so a supervisor waiting on it would miss a crash, and a stop
would hang, for as long as that backend lives.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from waiting import wait_for

from laterbased.proc import pid_alive, run, spawn

PY = sys.executable
# Far longer than any healthy wait below: a hang shows as this deadline, not as a slow test.
HANG = 20.0


def leaves_a_stray_holding_output(pid_file: Path, *, then_exit: bool) -> str:
    """A child that starts a grandchild in a session of its own (out of reach of a kill of
    the child's group, like a process that changed its group), sharing its stdout/stderr."""
    end = "sys.exit(3)\n" if then_exit else "time.sleep(600)\n"
    return (
        "import os, subprocess, sys, time\n"
        f"g = subprocess.Popen([{PY!r}, '-c', 'import time; time.sleep(600)'],"
        " start_new_session=True)\n"
        f"open({str(pid_file)!r}, 'w').write(str(g.pid))\n"
        "print('ready', flush=True)\n"
        f"{end}"
    )


@pytest.fixture
async def stray_pid_file(tmp_path: Path) -> AsyncIterator[Path]:
    pid_file = tmp_path / "stray.pid"
    yield pid_file
    if pid_file.exists() and pid_file.read_text():
        stray = int(pid_file.read_text())
        if pid_alive(stray):
            os.kill(stray, signal.SIGKILL)


async def _stray_started(pid_file: Path) -> int:
    await wait_for(lambda: pid_file.exists() and pid_file.read_text() != "", "stray up", 20)
    stray = int(pid_file.read_text())
    assert pid_alive(stray)
    return stray


async def test_a_child_that_crashed_is_seen_exited_while_a_stray_still_holds_its_output(
    stray_pid_file: Path,
) -> None:
    child = await spawn(
        [PY, "-c", leaves_a_stray_holding_output(stray_pid_file, then_exit=True)],
        log_name="crashes",
    )
    stray = await _stray_started(stray_pid_file)
    async with asyncio.timeout(HANG):
        assert await child.wait() == 3
    assert pid_alive(stray), "the stray is not ours to kill"


async def test_stopping_a_child_does_not_wait_for_a_stray_holding_its_output(
    stray_pid_file: Path,
) -> None:
    child = await spawn(
        [PY, "-c", leaves_a_stray_holding_output(stray_pid_file, then_exit=False)],
        log_name="stopped",
    )
    await _stray_started(stray_pid_file)
    async with asyncio.timeout(HANG):
        assert await child.stop([(signal.SIGTERM, 10)]) == -signal.SIGTERM


async def test_a_run_returns_when_its_command_exits_while_a_stray_holds_its_output(
    stray_pid_file: Path,
) -> None:
    async with asyncio.timeout(HANG):
        result = await run(
            [PY, "-c", leaves_a_stray_holding_output(stray_pid_file, then_exit=True)],
            log_name="brief",
            timeout=HANG * 2,
        )
    assert result.returncode == 3
