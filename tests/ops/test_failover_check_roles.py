"""``laterbased check`` judges the standby's pg_hba.conf for every role a failover needs: the
configured ``primary.user`` and the login that owns each Resolve library (Resolve creates a
library as the user its workstations log in with), which need not be laterbased's own role
(``prepare-primary --create-role`` gives laterbased a separate one)."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from config_support import primary_config
from pgserver import PgServer, free_port

from laterbased.config import (
    BackupConfig,
    Config,
    HttpConfig,
    StandbyConfig,
)
from laterbased.ops.check.checks import CheckResult
from laterbased.ops.check.failover import check_failover_plan

pytestmark = pytest.mark.slow

LIBRARY = "Resolve Library"
EDITOR = "resolve_editor"
LAN_ADDRESS = "127.0.0.2"  # all of 127/8 is loopback on Linux: it stands for the LAN


@pytest.fixture
def state_dir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="lb-failover-roles-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def library_of_another_login(make_primary: Callable[..., PgServer]) -> PgServer:
    """A primary whose library belongs to the workstations' login, and whose pg_hba.conf
    admits laterbased's own role from the LAN but not that login."""
    primary = make_primary()
    primary.sql(f"CREATE ROLE {EDITOR} LOGIN PASSWORD 'DaVinci'")
    primary.sql(f'CREATE DATABASE "{LIBRARY}" OWNER {EDITOR}')
    primary.append_hba(f"host all {primary.replication_user} 127.0.0.0/8 scram-sha-256")
    return primary


def cloned_standby(primary: PgServer, state_dir: Path) -> Path:
    """What the check reads of a cloned standby: its PG_VERSION and the pg_hba.conf the
    clone copied from the primary."""
    data_dir = state_dir / "standby"
    data_dir.mkdir()
    for name in ("PG_VERSION", "pg_hba.conf"):
        shutil.copy(primary.data_dir / name, data_dir / name)
    return data_dir


def config_for(primary: PgServer, state_dir: Path) -> Config:
    return Config(
        primary=primary_config(primary, connect_timeout=5.0),
        standby=StandbyConfig(port=free_port(), failover_address=(LAN_ADDRESS,)),
        backup=BackupConfig(enabled=False, databases=(LIBRARY,)),
        http=HttpConfig(enabled=False),
        state_dir=state_dir,
    )


def hba_line(results: list[CheckResult]) -> CheckResult:
    return next(r for r in results if r.name == "failover pg_hba")


async def test_a_pg_hba_that_admits_laterbased_but_not_the_librarys_owner_fails_the_plan(
    make_primary: Callable[..., PgServer], state_dir: Path
) -> None:
    primary = library_of_another_login(make_primary)
    data_dir = cloned_standby(primary, state_dir)
    config = config_for(primary, state_dir)

    line = hba_line(await check_failover_plan(config))
    assert line.status == "FAIL", line
    assert EDITOR in line.message and LIBRARY in line.message, line
    assert f"host all {EDITOR} " in line.hint, line

    with open(data_dir / "pg_hba.conf", "a", encoding="utf-8") as hba:
        hba.write(f"host all {EDITOR} 127.0.0.0/8 scram-sha-256\n")
    line = hba_line(await check_failover_plan(config))
    assert line.status == "OK", line
    assert EDITOR in line.message and primary.replication_user in line.message, line
