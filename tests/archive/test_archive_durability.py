"""A commit is durable in the archive within moments, not at the next WAL segment switch:
pg_receivewal runs with ``--synchronous`` (each piece written, fsynced, its position reported
at once). Without it the flush position stays at the start of the segment being received
until 16 MB of WAL fill it (days for an idle Resolve library): the RPO would be that."""

from __future__ import annotations

import asyncio
import zlib
from collections.abc import Callable
from pathlib import Path

import pytest
from pgserver import PgServer
from pitr_support import config_for
from waiting import wait_for

from laterbased.archive.worker import run_archive
from laterbased.core.context import WorkerContext
from laterbased.core.state import State
from laterbased.records import wal_archive

pytestmark = pytest.mark.slow


def flushed_by_the_archive(server: PgServer, lsn: str) -> bool:
    return server.sql(
        "SELECT count(*) FROM pg_stat_replication WHERE application_name LIKE "
        f"'laterbased_archive%' AND flush_lsn >= '{lsn}'::pg_lsn"  # noqa: S608
    ) == "1"


def inflated_length(path: Path) -> int:
    """Bytes of WAL a (still growing) gzip'd .partial segment holds on disk now."""
    inflater = zlib.decompressobj(wbits=31)
    return len(inflater.decompress(path.read_bytes()))


async def test_a_commit_is_flushed_into_the_archive_before_its_wal_segment_is_complete(
    make_primary: Callable[..., PgServer], tmp_path: Path, state_dir: Path
) -> None:
    server = make_primary()
    config = config_for(server, tmp_path, state_dir)
    state = State(config=config)
    ctx = WorkerContext(state, asyncio.Event())
    task = asyncio.create_task(run_archive(ctx))
    try:
        await wait_for(lambda: state.archive.phase == "streaming", "pg_receivewal streaming")
        server.sql("CREATE TABLE edits (id int); INSERT INTO edits VALUES (1)")
        lsn = server.sql("SELECT pg_current_wal_lsn()")
        segment, offset = server.sql(
            f"SELECT file_name || ' ' || file_offset FROM pg_walfile_name_offset('{lsn}')"  # noqa: S608
        ).split()
        # Reported durable by pg_receivewal (it reports a flush position after fsync) ...
        await wait_for(
            lambda: flushed_by_the_archive(server, lsn),
            f"the archive's flush position reaching the commit at {lsn}",
            timeout=30,
        )
        # ... while that segment is still the one being received: no switch was needed.
        partial = wal_archive.wal_dir(config.backup_directory) / f"{segment}.gz.partial"
        assert partial.exists(), sorted(p.name for p in partial.parent.iterdir())
        assert not partial.with_name(f"{segment}.gz").exists()
        # And the bytes are in the file, not in pg_receivewal's compression buffer.
        assert inflated_length(partial) >= int(offset)
    finally:
        ctx.stopping.set()
        await asyncio.wait_for(task, 30)
