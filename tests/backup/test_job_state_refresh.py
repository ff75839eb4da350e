"""After a verify or an upload run, the backup facts are re-read from the backup directory.
When that re-reading fails, the run ends as failed with the reason, rather than staying
"running" for ever (every later verify skipped as an overlap) or ending the upload job's
loop (no upload until a restart)."""

from __future__ import annotations

import asyncio
import json
import tempfile
from pathlib import Path

from config_support import quiet_config
from waiting import wait_for

from laterbased.backup.runner import _upload_loop, run_verify_job
from laterbased.config import BackupConfig, UploadConfig
from laterbased.core.state import State
from laterbased.records.catalogue import MANIFEST_KIND, Catalogue

# A manifest naming a file longer than any file name the file system allows: asking whether
# that file exists fails (ENAMETOOLONG), which no verify or upload step foresees. A globals
# manifest, so that verify, which leaves the globals alone, never asks before the refresh.
TOO_LONG = "x" * 300


def unreadable_catalogue(backup_dir: Path) -> Path:
    directory = backup_dir / "globals"
    directory.mkdir(parents=True)
    manifest = directory / "globals-20261129T100000Z.json"
    manifest.write_text(
        json.dumps(
            {
                "kind": MANIFEST_KIND,
                "database": "(globals)",
                "file": TOO_LONG,
                "format": "globals",
                "size": 1,
                "sha256": "0" * 64,
                "started": "2026-11-29T10:00:00Z",
                "finished": "2026-11-29T10:00:01Z",
            }
        )
    )
    return manifest


def backup_state(*, upload: bool) -> State:
    backup_dir = Path(tempfile.mkdtemp(prefix="lb-refresh-"))
    config = quiet_config(
        backup=BackupConfig(directory=backup_dir, restore_drill=False),
        upload=UploadConfig(remote="offsite" if upload else "", path="laterbased"),
    )
    return State(config=config)


async def test_a_verify_run_whose_state_refresh_fails_ends_as_failed_with_the_reason() -> None:
    state = backup_state(upload=False)
    unreadable_catalogue(state.config.backup_directory)
    outcome = await run_verify_job(state)
    assert outcome["result"] == "failed", outcome
    status = state.job("verify")
    assert status.running is None  # the next verify runs instead of being skipped
    assert status.last_run is not None and status.last_run.result == "failed"
    assert "File name too long" in (status.last_run.detail or ""), status.last_run
    assert (await run_verify_job(state))["result"] == "failed"  # not "skipped"


async def test_an_upload_run_whose_state_refresh_fails_fails_and_the_upload_loop_goes_on() -> None:
    state = backup_state(upload=True)
    manifest = unreadable_catalogue(state.config.backup_directory)
    wanted = asyncio.Event()
    wanted.set()
    catalogue = Catalogue(state.config.backup_directory)
    loop = asyncio.create_task(_upload_loop(state, catalogue, wanted))
    try:
        status = state.job("upload")
        await wait_for(lambda: status.runs["failed"] == 1 or loop.done(), "a failed upload run", 30)
        assert not loop.done(), loop.exception()
        assert status.running is None
        manifest.unlink()
        wanted.set()  # what the next scheduled dump does
        await wait_for(lambda: sum(status.runs.values()) == 2 or loop.done(), "a second run", 30)
        assert not loop.done(), loop.exception()
    finally:
        loop.cancel()
        await asyncio.gather(loop, return_exceptions=True)
