"""A primary that comes back after a long outage is seen at once, not a backoff later."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

import pytest
from monitor_support import monitor_config
from pgserver import PgServer
from waiting import wait_for

from laterbased.daemon import Daemon, Worker
from laterbased.monitor.worker import run_monitor

pytestmark = pytest.mark.slow


async def test_primary_back_after_a_long_outage_is_seen_within_two_polls_and_five_seconds(
    make_primary: Callable[..., PgServer], caplog: pytest.LogCaptureFixture
) -> None:
    primary = make_primary()
    interval = 1.0
    daemon = Daemon(
        monitor_config(primary, interval=interval), workers=[Worker("monitor", run_monitor)]
    )
    caplog.set_level(logging.DEBUG, logger="laterbased.monitor.worker")

    def failed_polls() -> int:
        return caplog.text.count("primary poll failed")

    async with asyncio.TaskGroup() as group:
        group.create_task(daemon.serve())
        try:
            await wait_for(lambda: daemon.state.primary.reachable is True, "first poll", 20)
            await asyncio.to_thread(primary.stop, "fast")
            # Five failed polls in a row: a doubling backoff would wait 16 s after the fifth.
            await wait_for(lambda: failed_polls() >= 5, "five failed polls", 60)
            await asyncio.to_thread(primary.start)
            back = time.monotonic()
            await wait_for(lambda: daemon.state.primary.reachable is True, "primary back", 60)
            took = time.monotonic() - back
        finally:
            daemon.stopping.set()
    # One second on top for the connection and queries of the poll that sees it.
    assert took <= 2 * interval + 5 + 1, f"the returning primary was seen after {took:.1f}s"
    assert "primary reachable" in caplog.text
