"""Benchmark: the point-in-time archive (issue 18): RPO, restore to a moment, cost on the primary.

Not a test: prints a table. Every PostgreSQL server runs as the ``postgres`` OS user when
root; everything lives in ``/tmp/laterbased-*`` and is removed at the end.

* **RPO**: a commit on the primary → the WAL holding it durable in the archive. The daemon's
  own archive worker (``laterbased.archive.worker.run_archive``: ``pg_receivewal
  --synchronous`` through its slot, base backups) runs in this process against a throw-away
  primary with ``synchronous_commit = on`` (Resolve's setting). One probe commit at a time
  (random gaps); after each, ``pg_current_wal_insert_lsn()`` (at or past the commit record:
  conservative when other sessions write) is awaited in ``pg_stat_replication.flush_lsn`` of
  the archive's walsender, which pg_receivewal reports only after fsync. Idle primary, then
  under a steady pgbench load. Goal p99 ≤ 1 s.
* **Cost on the primary**: the walsenders the archive holds, their CPU, the WAL its slot
  keeps; the archive's disk per day for an idle and for a busy library (pgbench at a fixed
  rate, the interval starting with a CHECKPOINT so that full-page images count as after
  every checkpoint: an upper bound), extrapolated from a measured interval (compressed WAL
  on disk) plus the daily base backup.
* **Restore to a moment** at each pgbench scale, on a primary of its own: a base backup, a
  pgbench run after it with the moment in its middle; then, alternating, ``laterbased restore
  --database D --at MOMENT --target-db NEW`` (the real CLI: base backup extracted into a
  throw-away cluster, WAL replayed to the moment, ``pg_dump -Fc``, ``pg_restore -j 2``) vs
  the raw tools doing the same steps by hand (``tar -xzf``, recovery with
  ``recovery_target_time`` and a ``gunzip`` restore_command, ``pg_ctl start -w``,
  ``pg_dump -Fc``, ``pg_ctl stop``, ``createdb``, ``pg_restore -j 2``, ``rm -rf``), the sum
  of their times. Both results are checked to hold the same rows. Goal ratio ≤ 1.2.

    sudo .venv/bin/python bench/pitr.py                    # scales 10 and 100 (~15 min)
    sudo .venv/bin/python bench/pitr.py --quick            # scale 1, 1 round (~2 min)
    sudo .venv/bin/python bench/pitr.py --scales 10 --rounds 3 --rpo-commits 300
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import astuple, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import yaml
from report import Report, percentile, phase  # bench/report.py, beside this file

from laterbased.archive.worker import run_archive
from laterbased.config import Config, load_config
from laterbased.core.context import WorkerContext
from laterbased.core.state import State
from laterbased.pg.localcluster import PgServer, free_port
from laterbased.records import wal_archive

ARCHIVE_APP = "laterbased_archive_receivewal"
LOGS: list[str] = []  # the JSON log of every laterbased restore, for --json
MB = 1024 * 1024
DAY = 86400.0


# --- the primary, the daemon's configuration, its archive worker ----------------------------


def server_env(primary: PgServer) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PG", "LATERBASED_"))}
    env.update(LC_ALL="C.UTF-8", LANG="C.UTF-8", PGPASSFILE=str(primary.passfile))
    return env


def as_server_user(primary: PgServer) -> dict[str, Any]:
    """subprocess keywords that run a raw tool as the server's OS user (postgres as root)."""
    if primary.os_user is None:
        return {}
    return {"user": primary.os_user.pw_uid, "group": primary.os_user.pw_gid, "extra_groups": []}


def make_primary() -> PgServer:
    # synchronous_commit on, as on Resolve's server (the harness turns it off for speed):
    # a commit returns once its WAL is flushed locally, which is when the walsender sends it.
    # fsync stays off: the primary's own disk is not what is measured, the archive's is.
    return PgServer(shared_buffers="128MB", fsync=False, synchronous_commit=True)


def pgbench(primary: PgServer, db: str, *args: str, timeout: float = 3600) -> str:
    result = subprocess.run(
        [str(primary.bindir / "pgbench"), "-h", primary.host, "-p", str(primary.port),
         "-U", primary.superuser, *args, db],
        env=server_env(primary), capture_output=True, text=True, check=False, timeout=timeout,
    )
    if result.returncode != 0:
        raise RuntimeError(f"pgbench {' '.join(args)} failed: {result.stderr[-2000:]}")
    return result.stdout + result.stderr


def fill(primary: PgServer, db: str, scale: int) -> None:
    primary.create_database(db)
    started = time.monotonic()
    pgbench(primary, db, "-i", "-q", "-s", str(scale))
    size = primary.sql(f"SELECT pg_size_pretty(pg_database_size('{db}'))")
    print(f"pgbench scale {scale}: {size} in {time.monotonic() - started:.0f}s", flush=True)


def write_config(work: Path, primary: PgServer) -> tuple[Path, dict[str, str]]:
    """The daemon's YAML (PITR on, no standby, no HTTP) and the environment with the
    password file, for this process and for the ``laterbased restore`` child alike."""
    password_file = work / "primary_password"
    password_file.write_text(primary.superuser_password + "\n")
    password_file.chmod(0o600)
    path = work / "laterbased.yaml"
    path.write_text(yaml.safe_dump({
        "primary": {"host": primary.host, "port": primary.port, "user": primary.superuser},
        "standby": {"enabled": False},
        "backup": {"directory": str(work / "backups"), "schedule": "0 0 1 1 *"},
        "pitr": {"enabled": True, "base_backup_schedule": "0 0 1 1 *"},
        "http": {"enabled": False},
        "state_dir": str(work / "state"),
        "log_format": "json",
        "timezone": "UTC",
    }))
    env = {k: v for k, v in os.environ.items() if not k.startswith("LATERBASED_")}
    env["REPL_PASSWORD_FILE"] = str(password_file)
    env["PATH"] = f"{Path(sys.executable).parent}:{env.get('PATH', '')}"
    return path, env


class Archive:
    """The daemon's archive worker (pg_receivewal + base backups + slot watch) in this loop."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.state = State(config=config)
        self.ctx = WorkerContext(self.state, asyncio.Event())
        self.task: asyncio.Task[None] | None = None

    async def start(self, within: float) -> float:
        """Start it; seconds until the first base backup is published and WAL streams."""
        started = time.monotonic()
        self.task = asyncio.create_task(run_archive(self.ctx))
        deadline = started + within
        archive = self.state.archive
        while not (archive.base_backups >= 1 and archive.phase == "streaming"):
            if self.task.done():
                self.task.result()
                raise RuntimeError("the archive worker ended before its first base backup")
            if time.monotonic() > deadline:
                raise RuntimeError(f"no base backup within {within:.0f}s: {archive}")
            await asyncio.sleep(0.1)
        return time.monotonic() - started

    async def stop(self) -> None:
        if self.task is None:
            return
        self.ctx.stopping.set()
        await asyncio.wait_for(self.task, 60)
        self.task = None

    @property
    def receiver_pid(self) -> int | None:
        return self.state.archive.pid


def disk_bytes(directory: Path) -> int:
    """Bytes the files under ``directory`` occupy on disk (st_blocks, like du)."""
    total = 0
    for path in directory.rglob("*"):
        with contextlib.suppress(OSError):
            if path.is_file():
                total += path.stat().st_blocks * 512
    return total


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (root reads the postgres user's /proc too)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def connect(primary: PgServer, db: str = "postgres") -> Any:
    return await asyncpg.connect(
        host=primary.host, port=primary.port, user=primary.superuser,
        password=primary.superuser_password, database=db,
    )


async def wait_archived(watcher: Any, lsn: str, within: float = 120) -> None:
    deadline = time.monotonic() + within
    while not await watcher.fetchval(
        "SELECT count(*) = 1 FROM pg_stat_replication WHERE application_name = $1 "
        "AND flush_lsn >= $2::text::pg_lsn", ARCHIVE_APP, lsn,
    ):
        if time.monotonic() > deadline:
            raise RuntimeError(f"the archive did not flush {lsn} within {within:.0f}s")
        await asyncio.sleep(0.05)


# --- RPO ------------------------------------------------------------------------------------


async def rpo_samples(primary: PgServer, count: int, poll: float = 0.002) -> list[float]:
    """Seconds from each probe commit returning to its LSN flushed by the archive."""
    writer = await connect(primary)
    watcher = await connect(primary)
    samples: list[float] = []
    try:
        await writer.execute("CREATE TABLE IF NOT EXISTS rpo_probe (id bigserial PRIMARY KEY, "
                             "at timestamptz NOT NULL DEFAULT clock_timestamp())")
        for _ in range(count):
            # Random gaps: never in step with pg_receivewal's 1 s status interval.
            await asyncio.sleep(random.uniform(0.02, 0.25))
            await writer.execute("INSERT INTO rpo_probe DEFAULT VALUES")  # autocommit
            committed = time.perf_counter()
            lsn = await writer.fetchval("SELECT pg_current_wal_insert_lsn()::text")
            deadline = committed + 30
            while not await watcher.fetchval(
                "SELECT count(*) = 1 FROM pg_stat_replication WHERE application_name = $1 "
                "AND flush_lsn >= $2::text::pg_lsn", ARCHIVE_APP, lsn,
            ):
                if time.perf_counter() > deadline:
                    raise RuntimeError(f"commit at {lsn} not in the archive after 30 s")
                await asyncio.sleep(poll)
            samples.append(time.perf_counter() - committed)
    finally:
        await writer.close()
        await watcher.close()
    return samples


@contextlib.asynccontextmanager
async def fsync_control(directory: Path, samples: list[float]) -> AsyncIterator[None]:
    """While the block runs, time a bare 100-byte write + fsync in ``directory`` every
    100 ms in a thread: what the archive's disk alone costs a durable write meanwhile."""
    stop = threading.Event()

    def probe() -> None:
        path = directory / "fsync-control"
        with path.open("ab") as handle:
            while not stop.wait(0.1):
                started = time.perf_counter()
                handle.write(b"x" * 100)
                handle.flush()
                os.fsync(handle.fileno())
                samples.append(time.perf_counter() - started)
        path.unlink()

    thread = asyncio.create_task(asyncio.to_thread(probe))
    try:
        yield
    finally:
        stop.set()
        await thread


def describe_rpo(samples: list[float]) -> str:
    ms = [s * 1000 for s in samples]
    return (f"p50 {percentile(ms, 0.5):.1f} / p99 {percentile(ms, 0.99):.1f} / "
            f"max {max(ms):.1f} ms (n={len(ms)})")


# --- cost on the primary --------------------------------------------------------------------


@dataclass
class Interval:
    seconds: float
    wal_bytes: int
    archive_bytes: int
    walsender_cpu: float
    receiver_cpu: float
    retained_bytes: int | None


async def measure_interval(primary: PgServer, archive: Archive, seconds: float,
                           db: str | None, rate: int) -> Interval:
    """Archive growth (on disk) and the walsender's CPU over ``seconds``: idle, or with a
    rate-limited pgbench on ``db``."""
    root = archive.config.backup_directory
    watcher = await connect(primary)
    try:
        pid = int(await watcher.fetchval(
            "SELECT pid FROM pg_stat_replication WHERE application_name = $1", ARCHIVE_APP))
        receiver = archive.receiver_pid
        assert receiver is not None
        if db is not None:
            # The interval starts right after a checkpoint: every page's first change is a
            # full-page image, as after each checkpoint_timeout; an upper bound for the day.
            await watcher.execute("CHECKPOINT")
        lsn0 = str(await watcher.fetchval("SELECT pg_current_wal_lsn()::text"))
        await wait_archived(watcher, lsn0)
        disk0 = await asyncio.to_thread(disk_bytes, wal_archive.wal_dir(root))
        cpu0, rcpu0 = cpu_seconds(pid), cpu_seconds(receiver)
        started = time.monotonic()
        if db is None:
            await asyncio.sleep(seconds)
        else:
            await asyncio.to_thread(pgbench, primary, db, "-n", "-c", "2", "-R", str(rate),
                                    "-T", str(int(seconds)))
        lsn1 = str(await watcher.fetchval("SELECT pg_current_wal_lsn()::text"))
        await wait_archived(watcher, lsn1)
        elapsed = time.monotonic() - started
        cpu1, rcpu1 = cpu_seconds(pid), cpu_seconds(receiver)
        disk1 = await asyncio.to_thread(disk_bytes, wal_archive.wal_dir(root))
        wal = int(await watcher.fetchval("SELECT $1::text::pg_lsn - $2::text::pg_lsn", lsn1, lsn0))
        retained = await watcher.fetchval(
            "SELECT pg_current_wal_lsn() - restart_lsn FROM pg_replication_slots "
            "WHERE slot_name = $1", archive.config.pitr.slot_name)
    finally:
        await watcher.close()
    return Interval(elapsed, wal, disk1 - disk0, cpu1 - cpu0, rcpu1 - rcpu0,
                    None if retained is None else int(retained))


def per_day(amount: float, seconds: float) -> float:
    return amount * DAY / seconds


async def bench_archive(results: Report, primary: PgServer, archive: Archive, db: str,
                        scale: int, options: argparse.Namespace) -> None:
    wal_dir = wal_archive.wal_dir(archive.config.backup_directory).parent
    phase(f"RPO, idle primary: {options.rpo_commits} probe commits")
    control: list[float] = []
    async with fsync_control(wal_dir, control):
        idle_rpo = await rpo_samples(primary, options.rpo_commits)
    results.raw["rpo_idle"] = idle_rpo
    results.raw["fsync_control_idle"] = control
    results.add("RPO: commit → durable in the archive, idle primary", scale,
                describe_rpo(idle_rpo), f"bare write+fsync there: {describe_rpo(control)}",
                "", "p99 ≤ 1 s", "met" if percentile(idle_rpo, 0.99) <= 1 else "NOT met")

    phase(f"RPO under pgbench -R {options.busy_rate} ({options.rpo_commits} probe commits)")
    load = asyncio.create_task(asyncio.to_thread(
        pgbench, primary, db, "-n", "-c", "2", "-R", str(options.busy_rate), "-T",
        str(int(max(10, options.rpo_commits * 0.2))),
    ))
    control = []
    try:
        await asyncio.sleep(1)
        async with fsync_control(wal_dir, control):
            busy_rpo = await rpo_samples(primary, options.rpo_commits)
    finally:
        await load
    results.raw["rpo_busy"] = busy_rpo
    results.raw["fsync_control_busy"] = control
    results.add(f"RPO, primary busy (pgbench {options.busy_rate} tx/s)", scale,
                describe_rpo(busy_rpo), f"bare write+fsync there: {describe_rpo(control)}",
                "", "p99 ≤ 1 s", "met" if percentile(busy_rpo, 0.99) <= 1 else "NOT met")

    conn = await connect(primary)
    try:
        senders = await conn.fetch("SELECT application_name FROM pg_stat_replication")
    finally:
        await conn.close()
    names = sorted(str(r["application_name"]) for r in senders)
    results.add("walsenders the archive holds on the primary", scale,
                f"{sum(1 for n in names if n.startswith('laterbased_archive'))} "
                f"(all walsenders: {', '.join(names)})", "", "", "1",
                "met" if names.count(ARCHIVE_APP) == 1 and len(names) == 1 else "NOT met")

    base = wal_archive.list_base_backups(archive.config.backup_directory)[-1]
    base_bytes = await asyncio.to_thread(disk_bytes, base.directory)
    for label, rate, seconds in (("idle", 0, options.idle_seconds),
                                 (f"busy, pgbench {options.busy_rate} tx/s", options.busy_rate,
                                  options.busy_seconds)):
        phase(f"archive growth, {label}, {seconds:.0f} s")
        interval = await measure_interval(primary, archive, seconds, db if rate else None, rate)
        results.raw[f"interval_{'idle' if not rate else 'busy'}"] = interval.__dict__
        wal_day = per_day(interval.archive_bytes, interval.seconds)
        results.add(
            f"archive disk per day, {label}", scale,
            f"WAL {wal_day / MB:.1f} MB/day ({interval.wal_bytes / MB:.2f} MB of WAL in "
            f"{interval.seconds:.0f} s, {interval.archive_bytes / MB:.2f} MB on disk) "
            f"+ base backup {base_bytes / MB:.1f} MB/day",
            "", "", "", "info",
        )
        results.add(
            f"CPU, {label}", scale,
            f"walsender {100 * interval.walsender_cpu / interval.seconds:.2f} % of a core, "
            f"pg_receivewal {100 * interval.receiver_cpu / interval.seconds:.2f} %; "
            f"slot retains {(interval.retained_bytes or 0) / 1024:.0f} kB",
            "", "", "", "info",
        )


# --- restore to a moment --------------------------------------------------------------------


@contextlib.contextmanager
def work_directory(prefix: str) -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix=prefix))
    path.chmod(0o755)  # the throw-away servers run as postgres: it must reach in
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def log_times(stderr: str) -> dict[str, float]:
    """Unix time of the first JSON log line containing each key phrase (the CLI's phases)."""
    marks = {
        "extract": "restore: extracting base backup",
        "staged": "WAL segment(s) staged",
        "removed": "restore: removed the throw-away cluster",
        "created": "restore: created work database",
        "restored": "pg_restore exited",
    }
    found: dict[str, float] = {}
    for text_line in stderr.splitlines():
        with contextlib.suppress(ValueError, KeyError, TypeError):
            record = json.loads(text_line)
            for key, phrase in marks.items():
                if key not in found and phrase in record["message"]:
                    found[key] = datetime.fromisoformat(record["time"]).timestamp()
    return found


def laterbased_restore(config_path: Path, env: dict[str, str], db: str, moment: datetime,
                       target: str) -> tuple[float, dict[str, float]]:
    argv = [sys.executable, "-m", "laterbased", "restore", "--config", str(config_path),
            "--database", db, "--at", moment.isoformat(), "--target-db", target, "-j", "2"]
    started_wall = time.time()
    started = time.monotonic()
    result = subprocess.run(argv, env=env, capture_output=True, text=True, check=False,
                            timeout=7200)
    elapsed = time.monotonic() - started
    if result.returncode != 0 or "point in time: exactly" not in result.stdout:
        raise RuntimeError(f"laterbased restore failed ({result.returncode}):\n{result.stdout}\n"
                           f"{result.stderr[-3000:]}")
    marks = log_times(result.stderr)
    LOGS.append(result.stderr)
    phases: dict[str, float] = {"started": started_wall}
    phases.update(marks)
    phases["ended"] = started_wall + elapsed
    return elapsed, phases


def raw_restore(primary: PgServer, backup: wal_archive.BaseBackup, archive_dir: Path,
                db: str, moment: datetime, target: str, work: Path) -> dict[str, float]:
    """The same steps by hand with the raw tools; seconds per step."""
    times: dict[str, float] = {}
    bindir = primary.bindir
    env = server_env(primary)
    user = as_server_user(primary)

    def step(name: str, argv: list[str], *, as_postgres: bool = False,
             stdin: Any = subprocess.DEVNULL) -> None:
        started = time.monotonic()
        result = subprocess.run(argv, env=env, stdin=stdin, capture_output=True, text=True,
                                check=False, timeout=7200, cwd=scratch,
                                **(user if as_postgres else {}))
        times[name] = times.get(name, 0.0) + time.monotonic() - started
        if result.returncode != 0:
            raise RuntimeError(f"raw {name}: {' '.join(argv)} failed:\n{result.stderr[-2000:]}")

    scratch = work / f"raw-{target}"
    data, sock = scratch / "data", scratch / "sock"
    started = time.monotonic()
    for path in (scratch, data, sock):
        path.mkdir(mode=0o700)
        if primary.os_user is not None:
            os.chown(path, primary.os_user.pw_uid, primary.os_user.pw_gid)
    times["mkdir"] = time.monotonic() - started
    with backup.tar.open("rb") as tar:  # root reads the archive, postgres writes its files
        step("tar -xzf", ["tar", "-xzf", "-", "-C", str(data)], as_postgres=True, stdin=tar)
    started = time.monotonic()
    port = free_port()
    # What an operator appends by hand: the primary's own settings stay, this one listens on
    # a socket of its own, replays from the archive and stops at the moment.
    restore_command = (f'f={archive_dir}/%f; if [ -f "$f.gz" ]; then gunzip -c "$f.gz" > "%p"; '
                       f'else cp "$f" "%p"; fi')
    with (data / "postgresql.auto.conf").open("a") as conf:
        conf.write(
            f"port = {port}\nlisten_addresses = ''\nunix_socket_directories = '{sock}'\n"
            f"restore_command = '{restore_command}'\n"
            f"recovery_target_time = '{moment.astimezone(UTC).isoformat()}'\n"
            "recovery_target_action = 'promote'\nhot_standby = off\n"
        )
    (data / "recovery.signal").touch()
    if primary.os_user is not None:
        os.chown(data / "recovery.signal", primary.os_user.pw_uid, primary.os_user.pw_gid)
    times["configure"] = time.monotonic() - started
    try:
        # pg_ctl -w returns once the server runs (recovery goes on: with hot_standby off it
        # says "standby" at once); recovery has ended when it answers as a primary. Polled
        # every 0.1 s, as pg_ctl polls (laterbased polls every 0.2 s).
        started = time.monotonic()
        try:
            step("recovery", [str(bindir / "pg_ctl"), "-D", str(data), "-l",
                              str(scratch / "server.log"), "-w", "-t", "7200", "start"],
                 as_postgres=True)
        except RuntimeError as exc:
            log = (scratch / "server.log").read_text(errors="replace")[-3000:]
            raise RuntimeError(f"{exc}\n--- server log ---\n{log}") from None
        while True:
            answer = subprocess.run(
                [str(bindir / "psql"), "-X", "-A", "-t", "-h", str(sock), "-p", str(port),
                 "-U", primary.superuser, "-d", "postgres", "-c", "SELECT pg_is_in_recovery()"],
                env=env, capture_output=True, text=True, check=False, timeout=60,
            )
            if answer.stdout.strip() == "f":
                break
            if time.monotonic() - started > 7200 or not (data / "postmaster.pid").exists():
                log = (scratch / "server.log").read_text(errors="replace")[-3000:]
                raise RuntimeError(f"raw recovery did not end: {answer.stderr.strip()}\n"
                                   f"--- server log ---\n{log}")
            time.sleep(0.1)
        times["recovery"] = time.monotonic() - started
        dump = scratch / "moment.dump"
        step("pg_dump -Fc", [str(bindir / "pg_dump"), "-Fc", "-h", str(sock), "-p", str(port),
                             "-U", primary.superuser, "-f", str(dump), db])
    finally:
        if (data / "postmaster.pid").exists():
            step("pg_ctl stop", [str(bindir / "pg_ctl"), "-D", str(data), "-m", "fast",
                                 "-w", "stop"], as_postgres=True)
    on_primary = ["-h", primary.host, "-p", str(primary.port), "-U", primary.superuser]
    step("createdb", [str(bindir / "createdb"), *on_primary, "-T", "template0", "-E", "UTF8",
                      target])
    step("pg_restore -j 2", [str(bindir / "pg_restore"), *on_primary, "-d", target,
                             "--no-owner", "--no-acl", "--exit-on-error", "-j", "2", str(dump)])
    started = time.monotonic()
    shutil.rmtree(scratch)
    times["rm -rf"] = time.monotonic() - started
    return times


def make_archive_readable(root: Path, primary: PgServer) -> None:
    """The raw restore_command runs as postgres; the daemon keeps its archive 0700/0600.
    By hand an operator would have to do this (or copy the WAL) too; untimed here."""
    if primary.os_user is None:
        return
    for directory in (root, wal_archive.wal_dir(root)):
        directory.chmod(directory.stat().st_mode | 0o005)
    for path in wal_archive.wal_dir(root).iterdir():
        path.chmod(path.stat().st_mode | 0o004)


def fingerprint(primary: PgServer, db: str) -> str:
    return primary.sql(
        "SELECT (SELECT count(*) FROM pgbench_history) || '/' || "
        "(SELECT sum(abalance) FROM pgbench_accounts) || '/' || "
        "(SELECT sum(bbalance) FROM pgbench_branches)", database=db)


async def bench_restore(results: Report, scale: int, rounds: int,
                        options: argparse.Namespace) -> None:
    db = f"bench_{scale}"
    with work_directory(f"laterbased-bench-pitr-{scale}-") as work:
        phase(f"scale {scale}: primary, pgbench -i, archive + base backup")
        primary = await asyncio.to_thread(make_primary)
        archive: Archive | None = None
        try:
            results.raw.setdefault("postgresql", await asyncio.to_thread(
                primary.sql, "SHOW server_version"))
            await asyncio.to_thread(fill, primary, db, scale)
            config_path, env = write_config(work, primary)
            config = load_config(config_path, env)
            archive = Archive(config)
            seconds = await archive.start(within=3600)
            root = config.backup_directory
            base = wal_archive.list_base_backups(root)[-1]
            base_bytes = await asyncio.to_thread(disk_bytes, base.directory)
            size = await asyncio.to_thread(
                primary.sql, "SELECT pg_size_pretty(sum(pg_database_size(oid))) FROM pg_database")
            results.add("base backup (pg_basebackup -Ft -z, from the primary)", scale,
                        f"{(base.finished - base.started).total_seconds():.1f} s, "
                        f"{base_bytes / MB:.1f} MB for a {size} cluster "
                        f"(archive start → first base backup {seconds:.1f} s)")
            if options.archive_bench and scale == options.scales[0]:
                await bench_archive(results, primary, archive, db, scale, options)

            phase(f"scale {scale}: pgbench after the base backup, the moment in its middle")
            half = str(options.work_seconds // 2)
            await asyncio.to_thread(pgbench, primary, db, "-n", "-c", "2", "-T", half)
            moment = datetime.fromisoformat(
                await asyncio.to_thread(primary.sql, "SELECT clock_timestamp()::text"))
            await asyncio.sleep(0.05)
            await asyncio.to_thread(pgbench, primary, db, "-n", "-c", "2", "-T", half)
            await asyncio.to_thread(primary.sql, "SELECT pg_switch_wal()")
            await asyncio.to_thread(primary.sql, "CREATE TABLE after_the_switch (id int)")
            watcher = await connect(primary)
            try:
                lsn = str(await watcher.fetchval("SELECT pg_current_wal_lsn()::text"))
                await wait_archived(watcher, lsn)
            finally:
                await watcher.close()
            wal_bytes = await asyncio.to_thread(disk_bytes, wal_archive.wal_dir(root))
            # Both restores read what is archived; the receiver compressing the restores' own
            # WAL (they write into the primary) would only add noise to both.
            await archive.stop()
            archive = None
            print(f"moment {moment.isoformat()}; archive {wal_bytes / MB:.1f} MB of WAL",
                  flush=True)

            ours: list[float] = []
            ours_phases: list[dict[str, float]] = []
            theirs: list[dict[str, float]] = []
            prints: set[str] = set()
            for index in range(rounds):
                def run_ours(index: int = index) -> None:
                    target = f"lb_{scale}_{index}"
                    seconds, marks = laterbased_restore(config_path, env, db, moment, target)
                    ours.append(seconds)
                    ours_phases.append(marks)
                    prints.add(fingerprint(primary, target))
                    primary.sql(f'DROP DATABASE "{target}"')
                    print(f"  round {index + 1}: laterbased restore --at {seconds:.2f}s",
                          flush=True)

                def run_theirs(index: int = index) -> None:
                    target = f"raw_{scale}_{index}"
                    # Again each round: laterbased's restore makes the backup folder 0700.
                    make_archive_readable(root, primary)
                    steps = raw_restore(primary, base, wal_archive.wal_dir(root), db, moment,
                                        target, work)
                    theirs.append(steps)
                    prints.add(fingerprint(primary, target))
                    primary.sql(f'DROP DATABASE "{target}"')
                    print(f"  round {index + 1}: raw tools {sum(steps.values()):.2f}s "
                          + ", ".join(f"{k} {v:.2f}" for k, v in steps.items()), flush=True)

                order = (run_ours, run_theirs) if index % 2 == 0 else (run_theirs, run_ours)
                for run in order:
                    await asyncio.to_thread(run)
            if len(prints) != 1:
                raise RuntimeError(f"the restores differ (history/abalance/bbalance): {prints}")
            totals = [sum(t.values()) for t in theirs]
            results.raw[f"restore_{scale}"] = {"laterbased": ours, "laterbased_phases":
                                               ours_phases, "raw": theirs}
            ratio = min(ours) / min(totals)
            results.add(
                "restore --at / raw tools by hand", f"{scale} ({size})",
                f"min {min(ours):.2f} s, med {statistics.median(ours):.2f} s",
                f"min {min(totals):.2f} s, med {statistics.median(totals):.2f} s",
                f"{ratio:.2f} (med {statistics.median(ours) / statistics.median(totals):.2f})",
                "≤ 1.2", "met" if ratio <= 1.2 else "NOT met",
            )
            best = theirs[totals.index(min(totals))]
            results.note(f"scale {scale}: raw steps of the best round: "
                         + ", ".join(f"{k} {v:.2f}s" for k, v in best.items()))
            marks = ours_phases[ours.index(min(ours))]
            if all(k in marks for k in ("extract", "staged", "removed", "created", "restored")):
                results.note(
                    f"scale {scale}: laterbased's best round from its log: start + checks "
                    f"{marks['extract'] - marks['started']:.2f}s, extract + stage WAL "
                    f"{marks['staged'] - marks['extract']:.2f}s, recovery + pg_dump + stop "
                    f"{marks['removed'] - marks['staged']:.2f}s, createdb "
                    f"{marks['created'] - marks['removed']:.2f}s, pg_restore "
                    f"{marks['restored'] - marks['created']:.2f}s, the rest "
                    f"{marks['ended'] - marks['restored']:.2f}s"
                )
            results.note(f"scale {scale}: both restores hold the same rows "
                         f"(history count/abalance sum/bbalance sum {prints.pop()}); "
                         f"{wal_bytes / MB:.1f} MB of compressed WAL archived")
        finally:
            if archive is not None:
                await archive.stop()
            await asyncio.to_thread(primary.cleanup)


async def run(options: argparse.Namespace, results: Report) -> None:
    for scale in options.scales:
        rounds = options.rounds if scale <= 10 else options.rounds_large
        await bench_restore(results, scale, rounds, options)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="scale 1, one restore round, fewer probe commits, short intervals")
    parser.add_argument("--scales", default=None, help="pgbench scales (default 10,100)")
    parser.add_argument("--rounds", type=int, default=None,
                        help="restore rounds per scale up to 10 (default 3; --quick 1)")
    parser.add_argument("--rounds-large", type=int, default=None,
                        help="restore rounds per scale above 10 (default 2; --quick 1)")
    parser.add_argument("--interval", type=float, default=None,
                        help="seconds measured idle and busy for the disk per day "
                        "(default 60; --quick 20)")
    parser.add_argument("--rpo-commits", type=int, default=None)
    parser.add_argument("--no-archive-bench", dest="archive_bench", action="store_false",
                        help="restore only: no RPO, walsender or disk figures")
    parser.add_argument("--pg-major", type=int, default=None)
    parser.add_argument("--json", type=Path, default=None,
                        help="also write every raw figure and laterbased's restore logs here")
    options = parser.parse_args(argv)
    if options.pg_major is not None:
        bindir = Path(f"/usr/lib/postgresql/{options.pg_major}/bin")
        if not (bindir / "initdb").exists():
            parser.error(f"PostgreSQL {options.pg_major} is not installed ({bindir})")
        os.environ["LATERBASED_TEST_PG_BINDIR"] = str(bindir)
    default_scales = "1" if options.quick else "10,100"
    options.scales = sorted({int(s) for s in (options.scales or default_scales).split(",") if s})
    options.rounds = options.rounds or (1 if options.quick else 3)
    options.rounds_large = options.rounds_large or (1 if options.quick else 2)
    options.rpo_commits = options.rpo_commits or (50 if options.quick else 200)
    options.idle_seconds = options.busy_seconds = options.interval or (
        20.0 if options.quick else 60.0
    )
    options.busy_rate = 10
    options.work_seconds = 6 if options.quick else 10
    return options


def main(argv: list[str] | None = None) -> int:
    options = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="  %(name)s: %(message)s")
    results = Report()
    load_start = " ".join(f"{x:.2f}" for x in os.getloadavg())
    started = time.monotonic()
    failure: BaseException | None = None
    try:
        asyncio.run(run(options, results))
    except Exception as exc:  # print what was measured before the failure
        failure = exc
    major = results.raw.get("postgresql", "?")
    results.raw["load_at_start"] = load_start
    results.raw["load_at_end"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
    results.raw["minutes"] = round((time.monotonic() - started) / 60, 1)
    print("\n" + "=" * 100)
    print(f"laterbased PITR benchmark {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}: "
          f"{os.cpu_count()} CPUs, PostgreSQL {major}; load average at start {load_start}, "
          f"at end {' '.join(f'{x:.2f}' for x in os.getloadavg())}; took "
          f"{(time.monotonic() - started) / 60:.1f} min")
    print(results.table())
    for text in results.notes:
        print(f"- {text}")
    if options.json:
        options.json.write_text(json.dumps(
            {"rows": [astuple(row) for row in results.rows], "notes": results.notes, **results.raw,
             "laterbased_logs": LOGS}, indent=1, default=str))
    if failure is not None:
        print(f"\nbenchmark stopped early: {failure!r}", file=sys.stderr)
        raise failure
    return 0


if __name__ == "__main__":
    sys.exit(main())
