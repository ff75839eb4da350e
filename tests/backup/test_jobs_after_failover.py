"""After a failover the scheduled jobs work on the promoted server, not on the old primary
that is gone (issue 19): the dump and the optimize job follow ``state.standby``."""

from __future__ import annotations

import dataclasses
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from backup_support import make_config
from pgserver import PgServer, free_port

from laterbased.backup.runner import promoted_port, run_optimize_job
from laterbased.config import StandbyConfig
from laterbased.core.state import State

pytestmark = pytest.mark.slow
DB = "after failover"


@pytest.fixture
def backup_dir() -> Iterator[Path]:
    base = Path(tempfile.mkdtemp(prefix="laterbased-failover-jobs-"))
    try:
        yield base / "backups"
    finally:
        subprocess.run(["rm", "-rf", str(base)], check=False)


def promoted_state(server: PgServer, backup_dir: Path) -> State:
    """``server`` plays our promoted standby (on loopback, at its port); the configured
    primary is a port where nothing listens any more."""
    config = make_config(server, backup_dir, databases=(DB,))
    config = dataclasses.replace(
        config,
        primary=dataclasses.replace(config.primary, port=free_port()),
        standby=StandbyConfig(enabled=True, port=server.port),
    )
    state = State(config=config)
    state.standby.role = "primary"
    state.standby.phase = "promoted"
    state.standby.port = server.port
    return state


async def test_optimize_after_a_failover_runs_on_the_promoted_server(
    primary: PgServer, backup_dir: Path
) -> None:
    if DB not in primary.sql("SELECT string_agg(datname, ',') FROM pg_database"):
        primary.create_database(DB)
    state = promoted_state(primary, backup_dir)
    assert promoted_port(state) == primary.port
    outcome = await run_optimize_job(state)
    assert outcome["result"] == "success", outcome


def test_no_promotion_keeps_the_configured_primary_as_the_source(
    primary: PgServer, backup_dir: Path
) -> None:
    state = promoted_state(primary, backup_dir)
    state.standby.role = "replica"
    assert promoted_port(state) is None
