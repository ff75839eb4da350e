"""A connection the monitor keeps between polls, lost when the server goes away, is trouble
with that server (unreachable, retried), never a crash of the monitor."""

from __future__ import annotations

from collections.abc import Callable

from monitor_support import monitor_config
from pgserver import PgServer

from laterbased.core.state import State
from laterbased.monitor.worker import Monitor


async def test_the_primary_stopping_between_two_polls_makes_it_unreachable_not_a_crash(
    make_primary: Callable[..., PgServer],
) -> None:
    primary = make_primary()
    monitor = Monitor(State(config=monitor_config(primary, interval=1.0)))
    try:
        await monitor.poll_once()
        assert monitor.state.primary.reachable
        # The kept connection's server is gone; asyncpg's next query on it raises its own
        # InternalClientError ("not connected") rather than a connection error. An immediate
        # stop closes no connection politely, which is what a crash or a power cut does.
        primary.sql("CHECKPOINT")  # the test server commits asynchronously: keep its roles
        primary.stop("immediate")
        for _ in range(3):
            monitor.primary.retry_at = 0.0  # poll now, not after the back-off
            await monitor.poll_once()
            assert not monitor.state.primary.reachable
        primary.start()
        monitor.primary.retry_at = 0.0
        await monitor.poll_once()
        assert monitor.state.primary.reachable
    finally:
        monitor.close()
