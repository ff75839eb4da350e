"""Benchmark: the daemon's standby bootstrap vs a raw ``pg_basebackup -X stream``.

Builds a throw-away primary (tests/support/pgserver.py), loads it with ``pgbench -i -s SCALE``, then
alternates: raw ``pg_basebackup -X stream --checkpoint=fast`` into a fresh directory, and
the daemon's bootstrap (slot, staged pg_basebackup with progress parsing, pg_verifybackup,
standby configuration, rename) into a fresh state directory. Prints each time and the ratio
of the best daemon run to the best raw run (goal <= 1.05).

    .venv/bin/python bench/bootstrap.py --scale 20 --rounds 3
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from laterbased.config import (
    BackupConfig,
    Config,
    HttpConfig,
    PrimaryConfig,
    Secret,
    StandbyConfig,
)
from laterbased.core.context import WorkerContext
from laterbased.core.state import State
from laterbased.pg.localcluster import PgServer, free_port
from laterbased.proc import resolve_run_as
from laterbased.standby.layout import prepare_directories
from laterbased.standby.supervisor import StandbySupervisor


def raw_basebackup(primary: PgServer) -> float:
    target = Path(tempfile.mkdtemp(prefix="bench-raw-"))
    try:
        conninfo = f"host={primary.host} port={primary.port} user={primary.replication_user}"
        started = time.monotonic()
        # The password comes from the harness's passfile (PGPASSFILE in its environment).
        result = subprocess.run(
            [
                str(primary.bindir / "pg_basebackup"),
                f"--dbname={conninfo}",
                "--no-password",
                "-D", str(target / "data"),
                "-X", "stream",
                "--checkpoint=fast",
            ],
            capture_output=True,
            text=True,
            check=False,
            timeout=1800,
            env=primary._child_kwargs(as_server_user=False)["env"],
        )
        elapsed = time.monotonic() - started
        if result.returncode != 0:
            raise RuntimeError(f"raw pg_basebackup failed: {result.stderr}")
        return elapsed
    finally:
        shutil.rmtree(target, ignore_errors=True)


async def daemon_bootstrap(primary: PgServer) -> float:
    state_dir = Path(tempfile.mkdtemp(prefix="bench-daemon-"))
    try:
        config = Config(
            primary=PrimaryConfig(
                host=primary.host,
                port=primary.port,
                user=primary.replication_user,
                password=Secret(primary.replication_password),
            ),
            standby=StandbyConfig(port=free_port()),
            backup=BackupConfig(enabled=False),
            http=HttpConfig(enabled=False),
            state_dir=state_dir,
        )
        ctx = WorkerContext(state=State(config=config), stopping=asyncio.Event())
        supervisor = StandbySupervisor(ctx)
        supervisor.run_as = resolve_run_as(None)
        prepare_directories(supervisor.layout, state_dir, supervisor.run_as)
        started = time.monotonic()
        await supervisor._bootstrap_once()
        elapsed = time.monotonic() - started
        copied = ctx.state.standby.bootstrap_bytes_done
        if copied < 1024 * 1024:
            raise RuntimeError(f"daemon bootstrap copied only {copied} bytes")
        return elapsed
    finally:
        shutil.rmtree(state_dir, ignore_errors=True)
        primary.sql(
            "SELECT pg_drop_replication_slot('laterbase_standby_slot') "
            "FROM pg_replication_slots WHERE slot_name = 'laterbase_standby_slot'"
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=int, default=20, help="pgbench scale (15 MB each)")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    # The daemon's own timing lines: copy vs verify vs total.
    logging.basicConfig(level=logging.WARNING, format="  %(message)s")
    logging.getLogger("laterbased.standby.bootstrap").setLevel(logging.INFO)
    logging.getLogger("laterbased.standby.bootstrap").addFilter(
        lambda record: "seconds" in record.getMessage()
    )
    primary = PgServer()
    try:
        started = time.monotonic()
        subprocess.run(
            [str(primary.bindir / "pgbench"), "-i", "-q", "-s", str(args.scale),
             "-h", primary.host, "-p", str(primary.port), "-U", primary.superuser, "postgres"],
            check=True,
            capture_output=True,
            env=primary._child_kwargs(as_server_user=False)["env"],
            timeout=1800,
        )
        size = primary.sql("SELECT pg_size_pretty(sum(pg_database_size(oid))) FROM pg_database")
        print(f"primary loaded: pgbench scale {args.scale}, {size}, "
              f"{time.monotonic() - started:.1f}s")
        raw_times: list[float] = []
        daemon_times: list[float] = []
        for round_number in range(1, args.rounds + 1):
            # Alternate which goes first, so neither always gets the warmer cache.
            if round_number % 2:
                raw_times.append(raw_basebackup(primary))
                daemon_times.append(asyncio.run(daemon_bootstrap(primary)))
            else:
                daemon_times.append(asyncio.run(daemon_bootstrap(primary)))
                raw_times.append(raw_basebackup(primary))
            print(f"round {round_number}: raw pg_basebackup {raw_times[-1]:.2f}s, "
                  f"daemon bootstrap {daemon_times[-1]:.2f}s")
        ratio = min(daemon_times) / min(raw_times)
        print(f"best raw {min(raw_times):.2f}s, best daemon {min(daemon_times):.2f}s, "
              f"ratio {ratio:.3f} (goal <= 1.05)")
    finally:
        primary.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
