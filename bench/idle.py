"""What skip-unchanged stores for an idle library: a benchmark (a report, never a test).

An editor saves a project (one UPDATE, session closed), then the library sits idle while the
schedule keeps firing. Each fire either writes a new dump or finds the library unchanged. A
perfect skip stores exactly one dump after the save. Background work that takes a transaction
ID (autovacuum's ANALYZE of the touched table) costs one more: this measures how many a real
server of each major produces, with autovacuum at its defaults.

    sudo .venv/bin/python bench/idle.py --pg-major 13 --fires 12 --interval 20

Fires are --interval seconds apart (an hourly schedule compressed: PostgreSQL's background
jobs run on their own clocks, so the interval must be long enough for autovacuum's naptime,
60 s by default, to pass within the run).
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from laterbased.backup.dump import run_dumps  # noqa: E402
from laterbased.config import (  # noqa: E402
    BackupConfig,
    Config,
    HttpConfig,
    PrimaryConfig,
    Secret,
    StandbyConfig,
)
from laterbased.ops.demo.sample_library import create_sample_library, touch_a_project  # noqa: E402
from laterbased.pg.localcluster import PgServer  # noqa: E402
from laterbased.records.catalogue import Catalogue  # noqa: E402

LIBRARY = "Idle Library"


async def measure(major: int, fires: int, interval: float) -> list[str]:
    primary = PgServer(Path(f"/usr/lib/postgresql/{major}/bin"))
    work = Path(tempfile.mkdtemp(prefix="laterbased-bench-idle-"))
    try:
        primary.create_database(LIBRARY)
        conn = await primary.connect(LIBRARY)
        try:
            await create_sample_library(conn)
        finally:
            await conn.close()
        config = Config(
            primary=PrimaryConfig(
                host=primary.host,
                port=primary.port,
                user=primary.superuser,
                password=Secret(primary.superuser_password),
            ),
            standby=StandbyConfig(enabled=False),
            backup=BackupConfig(directory=work / "backups", databases=(LIBRARY,)),
            http=HttpConfig(enabled=False),
            state_dir=work,
            timezone="UTC",
        )
        catalogue = Catalogue(config.backup_directory)
        await run_dumps(config, catalogue, "idle-before")
        conn = await primary.connect(LIBRARY)
        try:
            await touch_a_project(conn)  # the last save of the evening
        finally:
            await conn.close()
        results = []
        started = time.monotonic()
        for fire in range(fires):
            deadline = started + fire * interval
            await asyncio.sleep(max(0.0, deadline - time.monotonic()))
            [outcome] = await run_dumps(config, catalogue, f"idle-{fire}")
            results.append(outcome.result)
            print(f"  pg{major} fire {fire + 1:2d} at {time.monotonic() - started:5.0f}s: "
                  f"{outcome.result}", flush=True)
        return results
    finally:
        primary.cleanup()
        shutil.rmtree(work, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pg-major", type=int, action="append", default=None,
                        help="major(s) to measure (repeatable); default 13 and 15")
    parser.add_argument("--fires", type=int, default=12)
    parser.add_argument("--interval", type=float, default=20.0)
    options = parser.parse_args()
    majors = options.pg_major or [13, 15]
    print("| major | fires after the save | dumps stored | unchanged | perfect |")
    rows = []
    for major in majors:
        results = asyncio.run(measure(major, options.fires, options.interval))
        stored = results.count("success")
        rows.append(f"| {major} | {len(results)} over {options.fires * options.interval:.0f} s "
                    f"| {stored} | {results.count('unchanged')} | 1 |")
    print("| major | fires after the save | dumps stored | unchanged | perfect |")
    print("|---|---|---|---|---|")
    print("\n".join(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
