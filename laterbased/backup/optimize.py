"""The optional optimize job: ``VACUUM (ANALYZE)`` and ``REINDEX DATABASE`` on the primary.

This is the maintenance Resolve users run by hand from the Project Manager. REINDEX takes
locks that block writers, so the job is off by default (``backup.optimize_schedule``) and
should be scheduled when nobody works (e.g. ``0 3 * * 0``).
"""

from __future__ import annotations

import asyncio
import logging
import time

from laterbased.backup.dump import discover_databases, primary_server, promoted_server
from laterbased.config import Config
from laterbased.errors import LaterbasedError

logger = logging.getLogger(__name__)


def quote_identifier(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


async def optimize_databases(
    config: Config, run_id: str, promoted_port: int | None = None
) -> list[str]:
    """Run the maintenance on every backed-up database; return the failures (empty: ok).
    ``promoted_port``: our promoted standby is the primary now (after a failover)."""
    if promoted_port is not None:
        server = promoted_server(config, promoted_port)
    else:
        server = primary_server(config)
    failures: list[str] = []
    try:
        names = list(config.backup.databases) or await discover_databases(server)
    except LaterbasedError as exc:
        return [str(exc)]
    for name in names:
        started = time.monotonic()
        try:
            conn = await server.connect(name)
            try:
                async with asyncio.timeout(config.backup.timeout):
                    await conn.execute("VACUUM (ANALYZE)")
                    await conn.execute(f"REINDEX DATABASE {quote_identifier(name)}")
            finally:
                await conn.close()
        except (LaterbasedError, TimeoutError, OSError) as exc:
            failures.append(f"{name}: {exc}")
            logger.error("optimize failed run=%s database=%r: %s", run_id, name, exc)
            continue
        except Exception as exc:  # asyncpg server errors (permissions, locks)
            failures.append(f"{name}: {exc}")
            logger.error("optimize failed run=%s database=%r: %s", run_id, name, exc)
            continue
        logger.info(
            "optimize finished run=%s database=%r seconds=%.1f",
            run_id,
            name,
            time.monotonic() - started,
        )
    return failures
