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
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import aiohttp
import pytest
from pgserver import PgServer
from streaming_standby import APPLICATION_NAME, StreamingStandby, primary_with_standby

from laterbased.config import (
    BackupConfig,
    Config,
    MonitorConfig,
    PrimaryConfig,
    Secret,
    StandbyConfig,
)
from laterbased.core.state import State
from laterbased.daemon import configured_routes
from laterbased.health import verdicts as health
from laterbased.monitor.worker import Monitor
from laterbased.web.server import HttpServer, build_app

pytestmark = pytest.mark.slow

SLOT = "monitor_test_slot"
INTERVAL = 0.2


@pytest.fixture(scope="module")
def servers(pg_bindir: Path) -> Iterator[tuple[PgServer, StreamingStandby]]:
    with primary_with_standby(pg_bindir, SLOT) as pair:
        yield pair


def monitor_config(primary: PgServer, standby_port: int, **monitor: object) -> Config:
    settings: dict[str, object] = {
        "interval": INTERVAL,
        "query_timeout": 2.0,
        "slot_retained_warn_bytes": 1024 * 1024,
    }
    settings.update(monitor)
    return Config(
        primary=PrimaryConfig(
            host=primary.host,
            port=primary.port,
            user=primary.replication_user,
            # quotes, backslash, colon, space, unicode: what broke postgres_exporter
            password=Secret(primary.replication_password),
            connect_timeout=2.0,
        ),
        standby=StandbyConfig(
            enabled=True, port=standby_port, slot_name=SLOT, application_name=APPLICATION_NAME
        ),
        monitor=MonitorConfig(**settings),  # type: ignore[arg-type]
        backup=BackupConfig(enabled=False),
        # A private state_dir: the monitor records the primary's identity there.
        state_dir=Path(tempfile.mkdtemp(prefix="lb-monitor-replication-")),
        timezone="UTC",
    )


class Harness:
    def __init__(self, state: State, monitor: Monitor, url: str) -> None:
        self.state = state
        self.monitor = monitor
        self.url = url

    async def poll_until(self, condition: Callable[[State], bool], what: str,
                         timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            await self.monitor.poll_once()
            if condition(self.state):
                return
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"timed out after {timeout}s waiting for: {what}; "
                    f"primary={self.state.primary} local={self.state.local}"
                )
            await asyncio.sleep(INTERVAL)

    async def status(self, path: str) -> int:
        async with aiohttp.ClientSession() as session, session.get(self.url + path) as r:
            await r.read()
            return r.status


@pytest.fixture
async def harness(servers: tuple[PgServer, StreamingStandby]) -> AsyncIterator[Harness]:
    primary, standby = servers
    standby.start()
    state = State(config=monitor_config(primary, standby.port))
    state.ready = True
    state.standby.enabled = True
    state.standby.phase = "running"
    state.standby.pid = standby.pid
    monitor = Monitor(state)
    http = HttpServer(build_app(state, configured_routes(state.config)), "127.0.0.1", 0)
    await http.start()
    try:
        yield Harness(state, monitor, f"http://127.0.0.1:{http.port}")
    finally:
        monitor.close()
        await http.stop()


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
        metrics = await fetch(harness.url + "/metrics")
        assert f'laterbased_replication_slot_active{{slot_name="{SLOT}"}} 0.0' in metrics
    finally:
        await asyncio.to_thread(standby.start)
    await harness.poll_until(caught_up, "standby reconnects and catches up")
    assert health.is_healthy(health.evaluate(harness.state, time.time()))
    assert "replication slot ok" in caplog.text
    assert "Traceback" not in caplog.text


async def fetch(url: str) -> str:
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        assert response.status == 200
        return await response.text()


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
    text = await fetch(harness.url + "/metrics")
    promtool = shutil.which("promtool")
    assert promtool, "promtool missing: apt-get install prometheus"
    proc = await asyncio.create_subprocess_exec(
        promtool, "check", "metrics",
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    output, _ = await asyncio.wait_for(proc.communicate(text.encode()), 60)
    assert proc.returncode == 0, output.decode()
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
