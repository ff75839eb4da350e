"""Benchmark: laterbased's dump vs raw ``pg_dump -Fc`` vs the old ``pg_dump | gzip > file``.

Not a test: prints a table. Starts a throw-away PostgreSQL server, fills a pgbench database
(``--scale``, default 30), and times, alternating and ``--repeat`` times each:

* raw: ``pg_dump -Fc`` with stdout to a file;
* old: ``pg_dump | gzip > file`` (the Laterbase shell pipeline, without a shell);
* laterbased: the scheduled chain's dump step (fingerprint, pg_dump into .partial, sha256,
  fsync, publish) in a separate Python process, which also reports its own peak RSS.

``--rss-scales 10,100`` additionally measures the daemon's peak RSS per scale (slow at 100).
Goals (issue 6): laterbased/raw <= 1.05; peak RSS <= 60 MB and flat across scales.

    sudo .venv/bin/python bench/dump.py --scale 30 --repeat 3 [--rss-scales 10,100]
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from laterbased.pg.localcluster import PgServer

CHILD = r"""
import asyncio, json, resource, sys, time
from pathlib import Path
from laterbased.config import Config, PrimaryConfig, StandbyConfig, BackupConfig, HttpConfig, Secret
from laterbased.backup.runner import run_backup_chain
from laterbased.core.state import State
args = json.loads(sys.stdin.read())
config = Config(
    primary=PrimaryConfig(host=args["host"], port=args["port"], user=args["user"],
                          password=Secret(args["password"])),
    standby=StandbyConfig(enabled=False),
    backup=BackupConfig(directory=Path(args["dir"]), databases=(args["db"],),
                        skip_unchanged=False, min_keep=1, retention_days=0),
    http=HttpConfig(enabled=False), state_dir=Path(args["dir"]).parent, timezone="UTC")
start = time.monotonic()
result = asyncio.run(run_backup_chain(State(config=config), trigger="bench"))
wall = time.monotonic() - start
dump = result.steps[0]
print(json.dumps({"result": result.result, "dump_seconds": dump["seconds"], "size": dump["size"],
                  "chain_seconds": wall,
                  "peak_rss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}))
"""


def pg_env(server: PgServer) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PG", "LATERBASED_"))}
    env["PGPASSFILE"] = str(server.passfile)
    return env


def conn_args(server: PgServer, db: str) -> list[str]:
    return ["-h", server.host, "-p", str(server.port), "-U", server.superuser, "-d", db]


def fill(server: PgServer, db: str, scale: int) -> None:
    server.create_database(db)
    started = time.monotonic()
    subprocess.run(
        [str(server.bindir / "pgbench"), "-i", "-q", "-s", str(scale), *conn_args(server, db)],
        env=pg_env(server),
        check=True,
        capture_output=True,
        timeout=3600,
    )
    size = server.sql(f"SELECT pg_size_pretty(pg_database_size('{db}'))")
    print(f"pgbench scale {scale}: {size} in {time.monotonic() - started:.0f}s", flush=True)


def time_raw(server: PgServer, db: str, out: Path) -> float:
    started = time.monotonic()
    with open(out, "wb") as handle:
        subprocess.run(
            [str(server.bindir / "pg_dump"), "-Fc", *conn_args(server, db)],
            stdout=handle,
            env=pg_env(server),
            check=True,
            timeout=3600,
        )
    return time.monotonic() - started


def time_old(server: PgServer, db: str, out: Path) -> float:
    started = time.monotonic()
    with open(out, "wb") as handle:
        dump = subprocess.Popen(
            [str(server.bindir / "pg_dump"), *conn_args(server, db)],
            stdout=subprocess.PIPE,
            env=pg_env(server),
        )
        gzip = subprocess.Popen(["gzip"], stdin=dump.stdout, stdout=handle)
        assert dump.stdout is not None
        dump.stdout.close()
        assert gzip.wait(3600) == 0 and dump.wait(3600) == 0
    return time.monotonic() - started


def run_laterbased(server: PgServer, db: str, directory: Path) -> dict[str, float]:
    args = {
        "host": server.host,
        "port": server.port,
        "user": server.superuser,
        "password": server.superuser_password,
        "db": db,
        "dir": str(directory),
    }
    started = time.monotonic()
    completed = subprocess.run(  # the password goes on stdin, never argv
        [sys.executable, "-c", CHILD],
        input=json.dumps(args),
        capture_output=True,
        text=True,
        check=True,
        timeout=3600,
    )
    result: dict[str, float] = json.loads(completed.stdout.strip().splitlines()[-1])
    result["process_seconds"] = time.monotonic() - started
    return result


def _append(results: list[Any], measure: Callable[..., Any], *args: Any) -> None:
    results.append(measure(*args))


def compare_dumps(
    server: PgServer, db: str, repeat: int, work: Path
) -> tuple[list[float], list[float], list[dict[str, float]]]:
    """(raw pg_dump -Fc seconds, pg_dump|gzip seconds, laterbased child results) for
    ``repeat`` rounds; the dump files stay in ``work`` (raw-<i>.dump, old-<i>.sql.gz)."""
    raw: list[float] = []
    old: list[float] = []
    ours: list[dict[str, float]] = []
    # The machine is shared: rotate the order each round so no variant always runs
    # right after another, and report min and median.
    for index in range(repeat):
        steps: list[Callable[[], None]] = [
            functools.partial(_append, raw, time_raw, server, db, work / f"raw-{index}.dump"),
            functools.partial(_append, old, time_old, server, db, work / f"old-{index}.sql.gz"),
            functools.partial(_append, ours, run_laterbased, server, db, work / "backups"),
        ]
        for step in steps[index % 3 :] + steps[: index % 3]:
            step()
    return raw, old, ours


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=int, default=30)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--rss-scales", default="", help="e.g. 10,100: peak RSS per scale")
    options = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="laterbased-bench-"))
    server = PgServer(shared_buffers="128MB", fsync=False)
    try:
        fill(server, "bench", options.scale)
        raw, old, ours = compare_dumps(server, "bench", options.repeat, work)
        raw_median = statistics.median(raw)
        dump_median = statistics.median(r["dump_seconds"] for r in ours)
        print(f"raw pg_dump -Fc         median {raw_median:7.2f}s  runs {raw}")
        print(f"pg_dump | gzip > file   median {statistics.median(old):7.2f}s  runs {old}")
        dump_runs = [round(r["dump_seconds"], 3) for r in ours]
        print(f"laterbased dump step    median {dump_median:7.2f}s  runs {dump_runs}")
        print(
            f"ratio laterbased/raw: median {dump_median / raw_median:.3f}, "
            f"min {min(dump_runs) / min(raw):.3f} (goal <= 1.05)"
        )
        print(
            "laterbased whole chain  median "
            f"{statistics.median(r['chain_seconds'] for r in ours):7.2f}s "
            f"(process incl. Python start "
            f"{statistics.median(r['process_seconds'] for r in ours):.2f}s)"
        )
        print(
            f"sizes: raw {(work / 'raw-0.dump').stat().st_size} B, "
            f"old {(work / 'old-0.sql.gz').stat().st_size} B, ours {ours[0]['size']} B"
        )
        from laterbased.backup.dump import hash_file

        started = time.monotonic()
        hash_file(work / "raw-0.dump")
        print(f"sha256 of the dump afterwards (page cache): {time.monotonic() - started:.3f}s")
        peak = max(r["peak_rss_kb"] for r in ours) / 1024
        print(f"peak RSS at scale {options.scale}: {peak:.1f} MB")
        for scale in [int(s) for s in options.rss_scales.split(",") if s.strip()]:
            db = f"bench_{scale}"
            fill(server, db, scale)
            result = run_laterbased(server, db, work / f"backups-{scale}")
            print(
                f"scale {scale}: dump {result['dump_seconds']:.1f}s size {result['size']} B "
                f"peak RSS {result['peak_rss_kb'] / 1024:.1f} MB"
            )
    finally:
        server.cleanup()
        subprocess.run(["rm", "-rf", str(work)], check=False)


if __name__ == "__main__":
    main()
