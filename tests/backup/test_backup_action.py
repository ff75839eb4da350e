"""POST /api/backup on the running daemon runs only once the daemon holds the backup
directory: never beside another process that writes there, never before the start-up
clean-up of ``.partial/`` (which would delete the run's own files)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from daemon_process import DaemonProcess, primary_section, write_config
from daemon_support import TOKEN, post, stop_daemon
from pgserver import PgServer, free_port

from laterbased.records.catalogue import Catalogue

pytestmark = pytest.mark.slow


def backup_daemon_config(primary: PgServer, state_dir: Path) -> dict[str, Any]:
    return {
        "primary": primary_section(primary, superuser=True),
        "standby": {"enabled": False},
        "backup": {
            "directory": str(state_dir / "backups"),
            "databases": ["postgres"],
            "schedule": "0 3 * * *",
            "catch_up": False,
            "skip_unchanged": False,
        },
        "http": {"host": "127.0.0.1", "port": free_port(), "token": TOKEN},
        "state_dir": str(state_dir / "state"),
        "timezone": "UTC",
    }


async def test_backup_now_waits_while_another_process_holds_the_backup_directory(
    primary: PgServer, state_dir: Path
) -> None:
    config = backup_daemon_config(primary, state_dir)
    catalogue = Catalogue(Path(config["backup"]["directory"]))
    held = catalogue.lock()  # a `laterbased backup-now` of its own, say, is writing there
    config_path = write_config(state_dir / "laterbased.yaml", config)
    daemon = await DaemonProcess.start(config_path, config["http"]["port"])
    try:
        await daemon.wait_http()
        status, body = await post(daemon, "/api/backup")
        assert status == 409, f"a backup ran beside another writer: {status} {body}"
        assert "backup directory" in body["error"], body
        assert catalogue.list_backups() == []
        held.release()
        # Once the daemon holds the directory, the same request backs up.
        for _ in range(600):
            status, body = await post(daemon, "/api/backup")
            if status == 200:
                break
            await asyncio.sleep(0.1)
        assert (status, body.get("result")) == (200, "success"), body
        assert [r.database for r in catalogue.list_backups()] == ["postgres"]
        await stop_daemon(daemon)
    finally:
        held.release()
        await daemon.stop()
