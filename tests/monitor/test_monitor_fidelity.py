"""What the operator sees follows reality: paused replay is named, and lag and slot series
stay (with their age) while the primary cannot be asked. A real primary and a real streaming
standby of it (pg_basebackup), polled by the monitor, read over HTTP."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from monitor_support import Harness, monitor_config, monitor_harness, streaming
from pgserver import PgServer
from streaming_standby import StreamingStandby, primary_with_standby

pytestmark = pytest.mark.slow

SLOT = "fidelity_slot"
INTERVAL = 0.2


@pytest.fixture(scope="module")
def servers(pg_bindir: Path) -> Iterator[tuple[PgServer, StreamingStandby]]:
    with primary_with_standby(pg_bindir, SLOT) as pair:
        yield pair


@pytest.fixture
async def harness(servers: tuple[PgServer, StreamingStandby]) -> AsyncIterator[Harness]:
    primary, standby = servers
    config = monitor_config(primary, standby=streaming(standby), interval=INTERVAL)
    async with monitor_harness(config, standby) as harness:
        yield harness


def sample(metrics: str, name: str) -> float | None:
    """The value of the first sample of ``name`` (any labels), or None when absent."""
    match = re.search(rf"^{re.escape(name)}(?:{{[^}}]*}})? (\S+)$", metrics, re.MULTILINE)
    return None if match is None else float(match.group(1))


async def test_paused_replay_is_named_in_health_status_page_status_json_and_metrics(
    harness: Harness, servers: tuple[PgServer, StreamingStandby]
) -> None:
    primary, standby = servers
    await harness.poll_until(lambda s: s.local.lag_bytes == 0, "standby caught up")
    _, metrics = await harness.get("/metrics")
    assert sample(metrics, "laterbased_standby_replay_paused") == 0.0
    await asyncio.to_thread(standby.sql, "SELECT pg_wal_replay_pause()")
    try:
        await asyncio.to_thread(
            primary.sql, "INSERT INTO filler (payload) SELECT 'x' FROM generate_series(1, 500)"
        )
        await harness.poll_until(
            lambda s: (s.local.lag_bytes or 0) > 0, "lag while replay is paused"
        )
        _, body = await harness.get("/healthz")
        assert "replay paused" in body, body
        document = await harness.json("/status.json")
        assert document["replication"]["replay_paused"] is True
        replication = next(
            c for c in document["health"]["checks"] if c["name"] == "replication"
        )
        assert "replay paused" in replication["reason"] and "pg_wal_replay_resume" in (
            replication["reason"]
        )
        _, page = await harness.get("/status")
        assert "replay paused" in page
        _, metrics = await harness.get("/metrics")
        assert sample(metrics, "laterbased_standby_replay_paused") == 1.0
    finally:
        await asyncio.to_thread(standby.sql, "SELECT pg_wal_replay_resume()")
    await harness.poll_until(
        lambda s: s.local.replay_paused is False and s.local.lag_bytes == 0, "replay resumed"
    )
    _, body = await harness.get("/healthz")
    assert "replay paused" not in body


async def test_lag_and_slot_series_stay_with_their_age_while_the_primary_is_down(
    harness: Harness, servers: tuple[PgServer, StreamingStandby]
) -> None:
    primary, standby = servers
    # A transaction the standby replays: without one since it started (this module's
    # servers can be fresh, whatever test ran before), it has no last replay time at all.
    primary.sql("INSERT INTO filler (payload) VALUES ('before the outage')")
    await harness.poll_until(
        lambda s: s.local.lag_bytes == 0
        and s.local.last_replay_timestamp is not None
        and s.primary.slot is not None
        and s.primary.slot.active,
        "standby streaming, caught up and a transaction replayed",
    )
    await asyncio.to_thread(primary.stop, "fast")
    try:
        await harness.poll_until(lambda s: s.primary.reachable is False, "primary seen down")
        await harness.poll_until(
            lambda s: s.local.receiver_status != "streaming", "the standby's receiver notices"
        )
        # A little later still: the age of the primary-side facts grows.
        await asyncio.sleep(2 * INTERVAL)
        await harness.monitor.poll_once()
        _, metrics = await harness.get("/metrics")
        assert sample(metrics, "laterbased_primary_up") == 0.0
        assert sample(metrics, "laterbased_replication_lag_bytes") is not None, metrics
        assert sample(metrics, "laterbased_replication_slot_retained_wal_bytes") is not None
        assert sample(metrics, "laterbased_replication_slot_active") is not None
        assert sample(metrics, "laterbased_standby_last_replay_timestamp_seconds") is not None
        assert sample(metrics, "laterbased_wal_receiver_status") is not None
        age = sample(metrics, "laterbased_primary_facts_age_seconds")
        assert age is not None and age >= 2 * INTERVAL, metrics
    finally:
        await asyncio.to_thread(primary.start)
    await harness.poll_until(lambda s: s.primary.reachable is True, "primary back")
    _, metrics = await harness.get("/metrics")
    age = sample(metrics, "laterbased_primary_facts_age_seconds")
    assert age is not None and age < 5
