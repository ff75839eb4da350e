"""The monitor against a real primary and a real streaming standby (pg_basebackup).

One private primary + standby per module: these tests stop the standby, pause its replay
and leave slots inactive, which must not disturb the shared session primary.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import shutil
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from monitor_support import Harness, monitor_config, monitor_harness, promtool_check, streaming
from pgserver import PgServer
from streaming_standby import StreamingStandby, primary_with_standby

from laterbased.core.state import State
from laterbased.health import verdicts as health

pytestmark = pytest.mark.slow

SLOT = "monitor_test_slot"
INTERVAL = 0.2


@pytest.fixture(scope="module")
def servers(pg_bindir: Path) -> Iterator[tuple[PgServer, StreamingStandby]]:
    with primary_with_standby(pg_bindir, SLOT) as pair:
        yield pair


@pytest.fixture
async def harness(servers: tuple[PgServer, StreamingStandby]) -> AsyncIterator[Harness]:
    primary, standby = servers
    standby.start()
    config = monitor_config(
        primary,
        standby=streaming(standby),
        interval=INTERVAL,
        slot_retained_warn_bytes=1024 * 1024,
    )
    async with monitor_harness(config, standby) as harness:
        yield harness


def caught_up(state: State) -> bool:
    return (
        state.local.lag_bytes == 0
        and state.local.lag_seconds == 0.0
        and health.is_streaming(state)
        and state.primary.slot is not None
        and state.primary.slot.active
    )


async def write_on_primary(primary: PgServer, rows: int = 2000) -> None:
    await asyncio.to_thread(
        primary.sql,
        f"INSERT INTO filler (payload) SELECT repeat('x', 200) "  # noqa: S608 - int only
        f"FROM generate_series(1, {int(rows)})",
    )


async def test_streaming_standby_is_healthy_replica_with_zero_lag(harness: Harness) -> None:
    await harness.poll_until(caught_up, "standby streaming and caught up")
    state = harness.state
    assert state.primary.reachable and state.primary.server_version_num
    # The replicator role has no pg_monitor: both status columns read NULL, the slot decides.
    assert state.primary.replication_state == "unknown"
    assert state.local.receiver_status == "unknown"
    assert state.local.in_recovery is True
    checks = health.evaluate(state, time.time())
    assert health.is_healthy(checks), health.report(checks)
    assert await harness.status("/replica") == 200
    assert await harness.status("/replica?lag=1kB") == 200
    assert await harness.status("/read-only") == 200
    assert await harness.status("/primary") == 503
    assert await harness.status("/healthz") == 200


async def test_lag_grows_while_replay_is_paused_and_replica_lag_check_flips(
    harness: Harness, servers: tuple[PgServer, StreamingStandby]
) -> None:
    primary, standby = servers
    await harness.poll_until(caught_up, "caught up before the test")
    await asyncio.to_thread(standby.sql, "SELECT pg_wal_replay_pause()")
    try:
        await write_on_primary(primary)
        await harness.poll_until(
            lambda s: (s.local.lag_bytes or 0) > 1024, "lag bytes > 1kB while replay is paused"
        )
        assert await harness.status("/replica?lag=1kB") == 503
        assert await harness.status("/replica?lag=1GB") == 200
        first = harness.state.local.lag_seconds
        assert first is not None
        await harness.poll_until(
            lambda s: (s.local.lag_seconds or 0) >= first + 2 * INTERVAL,
            "lag seconds grow while the standby stands still",
        )
    finally:
        await asyncio.to_thread(standby.sql, "SELECT pg_wal_replay_resume()")
    await harness.poll_until(caught_up, "lag back to 0 after replay resumes")
    assert await harness.status("/replica?lag=1kB") == 200


async def test_stopped_standby_inactive_slot_retains_wal_warns_and_recovers(
    harness: Harness,
    servers: tuple[PgServer, StreamingStandby],
    caplog: pytest.LogCaptureFixture,
) -> None:
    primary, standby = servers
    caplog.set_level(logging.INFO)
    await harness.poll_until(caught_up, "caught up before the test")
    await asyncio.to_thread(standby.stop)
    try:
        for _ in range(4):  # > 1 MiB of WAL while nobody consumes the slot
            await write_on_primary(primary, rows=3000)
        await harness.poll_until(
            lambda s: s.primary.slot is not None
            and not s.primary.slot.active
            and (s.primary.slot.retained_bytes or 0) > 1024 * 1024,
            "inactive slot retaining more than 1 MiB",
        )
        state = harness.state
        checks = health.evaluate(state, time.time())
        slot = next(c for c in checks if c.name == "slot")
        assert slot.severity == "warning" and "inactive" in slot.reason
        assert not health.is_healthy(checks)
        assert await harness.status("/healthz") == 503
        assert await harness.status("/replica") == 503
        assert "replication slot warning" in caplog.text
        # The standby's last replay position is kept: lag keeps growing while it is down.
        assert (state.local.lag_bytes or 0) > 1024 * 1024
        metrics = await fetch(harness, "/metrics")
        assert f'laterbased_replication_slot_active{{slot_name="{SLOT}"}} 0.0' in metrics
    finally:
        await asyncio.to_thread(standby.start)
    await harness.poll_until(caught_up, "standby reconnects and catches up")
    assert health.is_healthy(health.evaluate(harness.state, time.time()))
    assert "replication slot ok" in caplog.text
    assert "Traceback" not in caplog.text


async def fetch(harness: Harness, path: str) -> str:
    status, text = await harness.get(path)
    assert status == 200, text
    return text


DESIGN_METRICS = [
    "laterbased_build_info", "laterbased_up", "laterbased_standby_running",
    "laterbased_standby_restarts_total", "laterbased_primary_up",
    "laterbased_replication_lag_bytes", "laterbased_replication_lag_seconds",
    "laterbased_replication_slot_active", "laterbased_replication_slot_retained_wal_bytes",
    "laterbased_replication_slot_safe_wal_size_bytes", "laterbased_replication_slot_wal_status",
    "laterbased_job_runs_total", "laterbased_job_last_duration_seconds",
    "laterbased_job_last_success_timestamp_seconds",
    "laterbased_backup_last_success_timestamp_seconds", "laterbased_backup_last_size_bytes",
    # DESIGN.md says backups_local_count; promtool rejects "_count" outside histograms.
    "laterbased_backups_local", "laterbased_retention_deleted_total",
    "laterbased_upload_last_success_timestamp_seconds",
    "laterbased_wal_receiver_status", "laterbased_worker_restarts_total",
]


async def test_real_scrape_passes_promtool_and_has_every_design_metric(
    harness: Harness,
) -> None:
    await harness.poll_until(caught_up, "standby streaming and caught up")
    state = harness.state
    # What the backup / upload engineers' workers write, so those families carry samples.
    state.standby.restarts["crash"] += 1
    dump = state.job("dump")
    dump.runs["success"] += 2
    dump.last_success, dump.last_duration, dump.next_fire = time.time(), 1.5, time.time() + 60
    summary = state.backup('Resolve "Projects" 2024')
    summary.last_success, summary.last_size, summary.local_count = time.time(), 4096, 3
    state.retention_deleted = 4
    state.upload_last_success = time.time()
    state.worker_restarts["schedule"] += 1
    text = await fetch(harness, "/metrics")
    await promtool_check(text)
    samples = {line.split("{")[0].split(" ")[0] for line in text.splitlines()
               if line and not line.startswith("#")}
    declared = {line.split()[2] for line in text.splitlines() if line.startswith("# TYPE")}
    declared |= {f"{name}_total" for name in declared} | {f"{name}_info" for name in declared}
    assert not [name for name in DESIGN_METRICS if name not in declared], text
    # safe_wal_size is NULL while max_slot_wal_keep_size is unlimited (-1): no sample then.
    missing = [name for name in DESIGN_METRICS if name not in samples]
    assert missing == ["laterbased_replication_slot_safe_wal_size_bytes"], text
    assert "laterbased_primary_up 1.0" in text
    assert f'laterbased_replication_slot_wal_status{{slot_name="{SLOT}",status="reserved"}} 1.0' \
        in text
    assert "laterbased_replication_lag_bytes 0.0" in text


async def test_status_page_renders_in_headless_chromium_with_role_and_lag(
    harness: Harness,
) -> None:
    await harness.poll_until(caught_up, "standby streaming and caught up")
    harness.state.record_event("error", "<script>alert('x')</script> dump failed")
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    assert chromium, "chromium missing: apt-get install chromium"
    profile = Path(tempfile.mkdtemp(prefix="laterbased-chromium-"))
    try:
        proc = await asyncio.create_subprocess_exec(
            chromium, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            f"--user-data-dir={profile}", "--dump-dom", harness.url + "/status",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            env={**os.environ, "HOME": str(profile)},
        )
        try:
            dom_bytes, errors = await asyncio.wait_for(proc.communicate(), 90)
        except TimeoutError:
            proc.kill()
            await proc.wait()
            raise
    finally:
        shutil.rmtree(profile, ignore_errors=True)
    dom = dom_bytes.decode()
    assert proc.returncode == 0, errors.decode()[-2000:]
    assert re.search(r'<span id="role">replica</span>', dom), dom[:3000]
    assert re.search(r'<span id="lag">0 B / 0\.0s</span>', dom), dom[:3000]
    assert "healthy" in dom
    # Escaped, so the browser shows it as text and never runs it.
    assert "<script>" not in dom and "&lt;script&gt;" in dom


async def test_with_pg_monitor_the_exact_streaming_status_is_read(
    harness: Harness, servers: tuple[PgServer, StreamingStandby]
) -> None:
    primary, _ = servers
    await asyncio.to_thread(primary.sql, f"GRANT pg_monitor TO {primary.replication_user}")
    await harness.poll_until(
        lambda s: s.local.receiver_status == "streaming"
        and s.primary.replication_state == "streaming",
        "wal receiver and sender both report streaming",
    )
    assert harness.state.local.sender_host == primary.host
    assert health.is_healthy(health.evaluate(harness.state, time.time()))
