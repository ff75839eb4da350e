"""What a scheduled dump costs the Resolve server: ``backup.source`` auto vs primary (a
benchmark, a report, never a test).

A throw-away primary with a pgbench library and a real streaming standby of it (pg_basebackup
through a slot). Each round runs the dump job (``run_dumps``, what the schedule runs) once
with ``source: primary`` and once with ``source: auto`` (alternating which goes first), and
reads the primary's ``pg_stat_database`` before and after, summed over every database:
buffer reads (``blks_hit + blks_read``: pages the primary's backends touched),
``blks_read`` (of them, not in shared buffers), and ``tup_returned`` (rows its scans
returned). An idle interval of the same length is the floor (the probe's own queries,
autovacuum). PostgreSQL 13 reports statistics late (a collector process): every reading waits
until the counters stop moving.

    sudo .venv/bin/python bench/dump_source.py                  # scale 10, 3 rounds, 13 and 15
    sudo .venv/bin/python bench/dump_source.py --scale 30 --rounds 5 --pg-major 13
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests" / "support"))  # the tests' real streaming standby

import dump as dump_bench  # noqa: E402  (bench/dump.py: pgbench fill)
from streaming_standby import StreamingStandby  # noqa: E402

from laterbased.backup.dump import run_dumps  # noqa: E402
from laterbased.config import (  # noqa: E402
    BackupConfig,
    Config,
    HttpConfig,
    PrimaryConfig,
    Secret,
    StandbyConfig,
)
from laterbased.pg.localcluster import PgServer  # noqa: E402
from laterbased.records.catalogue import Catalogue  # noqa: E402

LIBRARY = "bench_source"
COUNTERS = ("blks_hit", "blks_read", "tup_returned")
READ = "SELECT " + ", ".join(f"sum({c})::bigint AS {c}" for c in COUNTERS) + (  # noqa: S608 - our column names
    " FROM pg_stat_database"
)


async def counters(primary: PgServer) -> dict[str, int]:
    """The primary's summed counters once they stop moving (13: the collector is late)."""
    conn = await primary.connect()
    try:
        last: dict[str, int] | None = None
        deadline = time.monotonic() + 15
        while True:
            await conn.execute("SELECT pg_stat_clear_snapshot()")
            row = await conn.fetchrow(READ)
            now = {c: int(row[c] or 0) for c in COUNTERS}
            # The probe's own query adds a little each time: "still" means within 200 pages.
            if last is not None and all(abs(now[c] - last[c]) < 200 for c in COUNTERS):
                return now
            if time.monotonic() > deadline:
                return now
            last = now
            await asyncio.sleep(1.0)
    finally:
        await conn.close()


def delta(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    return {c: after[c] - before[c] for c in COUNTERS}


async def measure(major: int, scale: int, rounds: int) -> list[str]:
    primary = PgServer(Path(f"/usr/lib/postgresql/{major}/bin"), shared_buffers="32MB")
    standby: StreamingStandby | None = None
    work = Path(tempfile.mkdtemp(prefix="laterbased-bench-source-"))
    try:
        await asyncio.to_thread(dump_bench.fill, primary, LIBRARY, scale)
        standby = await asyncio.to_thread(StreamingStandby.running, primary, "bench_source_slot")
        base = Config(
            primary=PrimaryConfig(
                host=primary.host,
                port=primary.port,
                user=primary.superuser,
                password=Secret(primary.superuser_password),
            ),
            standby=StandbyConfig(port=standby.port, listen_addresses="127.0.0.1"),
            backup=BackupConfig(
                directory=work / "backups", databases=(LIBRARY,), skip_unchanged=False
            ),
            http=HttpConfig(enabled=False),
            state_dir=work,
            timezone="UTC",
        )
        catalogue = Catalogue(base.backup_directory)
        figures: dict[str, list[dict[str, float]]] = {"primary": [], "auto": [], "idle": []}
        used: dict[str, set[str]] = {"primary": set(), "auto": set()}
        for round_ in range(rounds):
            order = ["primary", "auto"] if round_ % 2 == 0 else ["auto", "primary"]
            seconds: list[float] = []
            for source in order:
                config = dataclasses.replace(
                    base, backup=dataclasses.replace(base.backup, source=source)
                )
                before = await counters(primary)
                started = time.monotonic()
                [outcome] = await run_dumps(config, catalogue, f"bench-{source}-{round_}")
                took = time.monotonic() - started
                seconds.append(took)
                after = await counters(primary)
                assert outcome.result == "success" and outcome.record is not None, outcome
                used[source].add(outcome.record.source)
                figures[source].append({**delta(before, after), "seconds": took})
                print(f"  pg{major} round {round_ + 1} {source:7s}: dumped the "
                      f"{outcome.record.source}, {took:.1f}s, primary "
                      f"{delta(before, after)}", flush=True)
            # The floor: nothing dumped, the same length of time, the same probe.
            before = await counters(primary)
            await asyncio.sleep(statistics.mean(seconds))
            after = await counters(primary)
            figures["idle"].append({**delta(before, after), "seconds": statistics.mean(seconds)})
        size = primary.sql(f"SELECT pg_size_pretty(pg_database_size('{LIBRARY}'))")
        rows = []
        for source in ("primary", "auto", "idle"):
            runs = figures[source]

            def median(key: str, runs: list[dict[str, float]] = runs) -> float:
                return statistics.median(r[key] for r in runs)

            read_from = "/".join(sorted(used[source])) if source in used else "-"
            rows.append(
                f"| {major} | {scale} ({size}) | {source} | {read_from} "
                f"| {median('blks_hit') + median('blks_read'):,.0f} | {median('blks_read'):,.0f} "
                f"| {median('tup_returned'):,.0f} | {median('seconds'):.1f} |"
            )
        return rows
    finally:
        if standby is not None:
            await asyncio.to_thread(standby.cleanup)
        primary.cleanup()
        shutil.rmtree(work, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pg-major", type=int, action="append", default=None,
                        help="major(s) to measure (repeatable); default 13 and 15")
    parser.add_argument("--scale", type=int, default=10, help="pgbench scale (15 MB each)")
    parser.add_argument("--rounds", type=int, default=3)
    options = parser.parse_args()
    print(f"load average at start: {os.getloadavg()}", flush=True)
    rows = []
    for major in options.pg_major or [13, 15]:
        rows += asyncio.run(measure(major, options.scale, options.rounds))
    print(f"load average at end: {os.getloadavg()}")
    print("Primary's reads during one dump (medians of "
          f"{options.rounds} rounds; pg_stat_database summed over every database)")
    print("| major | scale | backup.source | dumped | buffer reads (hit + read) | blks_read "
          "| tup_returned | seconds |")
    print("|---|---|---|---|---|---|---|---|")
    print("\n".join(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
