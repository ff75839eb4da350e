"""A verify that cannot run must not call a good backup damaged (retention would then treat
it as bad): the job fails and says why, the backup's verdict stays what it was."""

from __future__ import annotations

import dataclasses
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from backup_files import publish_real_backup
from backup_support import make_config
from pgserver import PgServer

from laterbased.backup.runner import run_verify_job
from laterbased.core.state import State
from laterbased.records.catalogue import Catalogue

pytestmark = pytest.mark.slow


@pytest.fixture
def work() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="laterbased-verify-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


async def test_missing_pg_restore_fails_the_job_but_leaves_the_backup_good(
    primary: PgServer, work: Path
) -> None:
    catalogue = Catalogue(work / "backups")
    record = publish_real_backup(primary, catalogue, "postgres")
    empty_bindir = work / "no-binaries"
    empty_bindir.mkdir()
    config = make_config(primary, work / "backups", databases=("postgres",))
    config = dataclasses.replace(
        config, backup=dataclasses.replace(config.backup, bin_dir=empty_bindir)
    )
    state = State(config=config)

    result = await run_verify_job(state)

    assert result["result"] == "failed"
    (check,) = result["checks"]
    assert check["detail"].startswith("could not verify:")
    assert check["backup_ok"] is None
    (after,) = catalogue.list_backups("postgres")
    assert after.file == record.file
    assert after.verified is None, "an unverifiable backup must not be marked damaged"
    assert after.good
    assert state.job("verify").last_run is not None
    assert state.job("verify").last_run.result == "failed"
