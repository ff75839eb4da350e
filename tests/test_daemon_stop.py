"""The stop reaches every worker, and a stop that takes long says what it waits for."""

from __future__ import annotations

import asyncio
import logging

import pytest
from config_support import quiet_config
from waiting import wait_for

import laterbased.daemon as daemon_module
from laterbased.core.context import WorkerContext
from laterbased.core.state import State
from laterbased.daemon import Daemon, Worker


async def test_a_worker_sleeping_when_the_stop_comes_is_cancelled_not_left_running() -> None:
    # The daemon sets the stop event and cancels its workers in the same breath. On Python
    # 3.11, asyncio.wait_for swallows a cancellation that lands as the awaited event is set:
    # a worker that went on after its sleep (as any loop might) then never stopped.
    ctx = WorkerContext(State(config=quiet_config()), asyncio.Event())
    rounds = 0

    async def keeps_going() -> None:
        nonlocal rounds
        while True:
            rounds += 1
            await ctx.sleep(3600)

    task = asyncio.create_task(keeps_going())
    await wait_for(lambda: rounds == 1, "the worker asleep", 5)
    await asyncio.sleep(0)
    ctx.stopping.set()
    task.cancel()
    done, _ = await asyncio.wait({task}, timeout=10)
    assert done, f"the worker went on after the stop ({rounds} rounds)"
    assert task.cancelled()


async def test_a_slow_stop_logs_which_worker_it_waits_for_and_where(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(daemon_module, "SLOW_STOP_REPORT_EVERY", 0.2)
    caplog.set_level(logging.INFO, logger="laterbased.daemon")
    release = asyncio.Event()

    async def slow_to_stop(ctx: WorkerContext) -> None:
        try:
            await ctx.stopping.wait()
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            await release.wait()  # its clean-up takes a while
            raise

    daemon = Daemon(quiet_config(), workers=[Worker("stubborn", slow_to_stop)])
    serving = asyncio.create_task(daemon.serve())
    await asyncio.wait_for(daemon.ready.wait(), 10)
    daemon.stopping.set()

    def reported() -> list[str]:
        return [r.getMessage() for r in caplog.records if "still waiting" in r.getMessage()]

    lines = await wait_for(reported, "a slow-stop report", 10)
    assert "for worker:stubborn at " in lines[0], lines
    assert "slow_to_stop" in lines[0], lines
    release.set()
    assert await asyncio.wait_for(serving, 10) == 0
    count = len(reported())
    await asyncio.sleep(0.5)
    assert len(reported()) == count, "the report goes on after the stop"
