"""What a worker is given: a reload announced at any moment after a worker asked to be told
reaches it (a reload during the standby's bootstrap backoff was once missed)."""

from __future__ import annotations

import asyncio

from config_support import quiet_config

from laterbased.core.context import WorkerContext
from laterbased.core.state import State


async def test_a_reload_announced_before_the_waiting_task_first_runs_still_wakes_it() -> None:
    # A worker creates its wait-for-reload task and goes on; the reload comes before that
    # task first runs (same loop iteration). It must wake, not wait for the next reload.
    ctx = WorkerContext(state=State(config=quiet_config()), stopping=asyncio.Event())
    waiter = asyncio.ensure_future(ctx.wait_reload())
    reloaded = quiet_config()
    ctx.state.config = reloaded
    ctx._announce_reload()
    assert await asyncio.wait_for(waiter, 10) is reloaded
