"""Benchmark: /healthz latency, /metrics time and event-loop lag while a pg_dump runs.

Not a test: prints a table. Starts a throw-away PostgreSQL server, fills a pgbench database
(``--scale``, default 30), then runs in ONE event loop, as the daemon does: the HTTP app with
every route, the monitor worker polling the primary every second, an event-loop lag probe,
and the real backup chain (``run_backup_chain``: pg_dump into .partial, sha256, publish).
A separate client process hammers ``/healthz`` and ``/metrics`` (so the client's own work
does not count against the daemon's loop), first while idle, then during the dump.

Goal (issue 5): /healthz p99 < 5 ms during the dump.

    sudo .venv/bin/python bench/healthz.py --scale 30
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from laterbased.backup.runner import run_backup_chain
from laterbased.config import (
    BackupConfig,
    Config,
    HttpConfig,
    MonitorConfig,
    PrimaryConfig,
    Secret,
    StandbyConfig,
)
from laterbased.core.context import WorkerContext
from laterbased.core.state import State
from laterbased.daemon import configured_routes
from laterbased.monitor.worker import run_monitor
from laterbased.pg.localcluster import PgServer
from laterbased.web.server import HttpServer, build_app

CLIENT = r"""
import http.client, json, sys, time
port, seconds = int(sys.argv[1]), float(sys.argv[2])
conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
health, metrics = [], []
deadline = time.monotonic() + seconds
n = 0
while time.monotonic() < deadline:
    path = "/metrics" if n % 20 == 19 else "/healthz"
    started = time.perf_counter()
    conn.request("GET", path)
    response = conn.getresponse()
    response.read()
    (metrics if path == "/metrics" else health).append(time.perf_counter() - started)
    n += 1
    time.sleep(0.002)
print(json.dumps({"healthz": health, "metrics": metrics}))
"""


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def row(name: str, values: list[float]) -> str:
    ms = [v * 1000 for v in values]
    return (
        f"{name:<22} n={len(ms):<6} p50={percentile(ms, 0.5):7.2f} ms  "
        f"p99={percentile(ms, 0.99):7.2f} ms  max={max(ms):7.2f} ms  "
        f"mean={statistics.fmean(ms):7.2f} ms"
    )


async def loop_lag(samples: list[float], stop: asyncio.Event) -> None:
    """How late a 10 ms sleep wakes up: the event loop's responsiveness."""
    while not stop.is_set():
        started = time.perf_counter()
        await asyncio.sleep(0.01)
        samples.append(time.perf_counter() - started - 0.01)


async def client(port: int, seconds: float) -> dict[str, list[float]]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", CLIENT, str(port), str(seconds), stdout=asyncio.subprocess.PIPE
    )
    out, _ = await proc.communicate()
    result: dict[str, list[float]] = json.loads(out)
    return result


async def measure(server: PgServer, database: str, work: Path, idle_seconds: float) -> None:
    config = Config(
        primary=PrimaryConfig(
            host=server.host,
            port=server.port,
            user=server.superuser,
            password=Secret(server.superuser_password),
        ),
        standby=StandbyConfig(enabled=False),
        monitor=MonitorConfig(interval=1.0),
        backup=BackupConfig(
            directory=work / "backups", databases=(database,), skip_unchanged=False
        ),
        http=HttpConfig(port=0),
        state_dir=work,
        timezone="UTC",
    )
    state = State(config=config)
    state.ready = True
    http = HttpServer(build_app(state, configured_routes(config)), "127.0.0.1", 0)
    await http.start()
    stopping = asyncio.Event()
    idle_lag: list[float] = []
    dump_lag: list[float] = []
    try:
        async with asyncio.TaskGroup() as group:
            group.create_task(run_monitor(WorkerContext(state=state, stopping=stopping)))
            probe_stop = asyncio.Event()
            group.create_task(loop_lag(idle_lag, probe_stop))
            idle = await client(http.port, idle_seconds)
            probe_stop.set()
            probe_stop = asyncio.Event()
            group.create_task(loop_lag(dump_lag, probe_stop))
            chain = group.create_task(run_backup_chain(state, trigger="bench"))
            started = time.monotonic()
            busy: dict[str, list[float]] = {"healthz": [], "metrics": []}
            while not chain.done():
                part = await client(http.port, 2.0)
                for key in busy:
                    busy[key] += part[key]
            dump_seconds = time.monotonic() - started
            probe_stop.set()
            stopping.set()
        result = chain.result()
    finally:
        await http.stop()
    print(f"dump: {result.result} in {dump_seconds:.1f}s, steps={result.steps[0]}")
    print(row("idle /healthz", idle["healthz"]))
    print(row("idle /metrics", idle["metrics"]))
    print(row("idle loop lag", idle_lag))
    print(row("dump /healthz", busy["healthz"]))
    print(row("dump /metrics", busy["metrics"]))
    print(row("dump loop lag", dump_lag))
    p99 = percentile(busy["healthz"], 0.99) * 1000
    print(f"goal /healthz p99 < 5 ms during the dump: {'MET' if p99 < 5 else 'MISSED'} "
          f"({p99:.2f} ms)")


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--scale", type=int, default=30)
    parser.add_argument("--idle-seconds", type=float, default=5.0)
    options = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="laterbased-bench-"))
    server = PgServer(shared_buffers="128MB", fsync=False)
    try:
        server.create_database("bench")
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PG", "LATERBASED_"))}
        env["PGPASSFILE"] = str(server.passfile)
        started = time.monotonic()
        subprocess.run(
            [str(server.bindir / "pgbench"), "-i", "-q", "-s", str(options.scale),
             "-h", server.host, "-p", str(server.port), "-U", server.superuser, "-d", "bench"],
            env=env, check=True, capture_output=True, timeout=3600,
        )
        size = server.sql("SELECT pg_size_pretty(pg_database_size('bench'))")
        print(f"pgbench scale {options.scale}: {size} in {time.monotonic() - started:.0f}s")
        asyncio.run(measure(server, "bench", work, options.idle_seconds))
    finally:
        server.cleanup()
        with contextlib.suppress(OSError):
            shutil.rmtree(work)


if __name__ == "__main__":
    main()
