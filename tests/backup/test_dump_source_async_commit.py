"""``backup.source: auto`` reads the standby only once it has replayed every commit the
primary had made visible when the run began, also a commit not flushed yet.

With ``synchronous_commit = off`` (a setting some facilities use for speed; the test servers
use it too) a commit is visible on the primary before its WAL is flushed, and a standby only
receives flushed WAL. Waiting for the primary's *flush* position then let a dump from the
standby miss a row committed just before the run (seen in CI on 13).
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from backup_support import make_config
from pgserver import PgServer
from streaming_standby import StreamingStandby

from laterbased.backup.dump import run_dumps
from laterbased.config import MonitorConfig
from laterbased.records.catalogue import Catalogue

pytestmark = pytest.mark.slow
DB = "async commit library"


@pytest.fixture
def backup_dir() -> Iterator[Path]:
    base = Path(tempfile.mkdtemp(prefix="laterbased-async-commit-test-"))
    try:
        yield base / "backups"
    finally:
        subprocess.run(["rm", "-rf", str(base)], check=False)


async def test_a_row_committed_but_not_yet_flushed_before_the_run_is_in_the_standby_dump(
    make_primary: Callable[..., PgServer], backup_dir: Path
) -> None:
    # The WAL writer flushes an asynchronous commit only every few seconds here, so the
    # commit below stays unflushed (not sent to the standby) while the run starts.
    primary = make_primary(synchronous_commit="off", wal_writer_delay="3s")
    primary.create_database(DB)
    primary.sql('CREATE TABLE "SM_Project" (id serial PRIMARY KEY, "ProjectName" text)', DB)
    standby = StreamingStandby.running(primary, "async_commit_slot")
    try:
        primary.sql("SELECT pg_switch_wal()")  # nothing older left unflushed
        marker = "committed just before the run " + os.urandom(4).hex()
        primary.sql(f"INSERT INTO \"SM_Project\" (\"ProjectName\") VALUES ('{marker}')", DB)
        config = make_config(primary, backup_dir, databases=(DB,), skip_unchanged=False)
        config = dataclasses.replace(
            config,
            standby=dataclasses.replace(
                config.standby, enabled=True, port=standby.port, listen_addresses="127.0.0.1"
            ),
            monitor=MonitorConfig(),
        )
        outcomes = await run_dumps(config, Catalogue(backup_dir), "async-commit")
        assert [o.result for o in outcomes] == ["success"], outcomes
        record = outcomes[0].record
        assert record is not None and record.source == "standby"
        data = subprocess.run(
            [str(primary.bindir / "pg_restore"), "--data-only", "--file=-", str(record.path)],
            capture_output=True, text=True, check=True, timeout=60,
        ).stdout
        assert marker in data
    finally:
        standby.cleanup()
