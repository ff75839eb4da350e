"""Rough edges found by using laterbased as its README says, as an operator would at 3 a.m."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from laterbased.config import BackupConfig, Config, HttpConfig, StandbyConfig
from laterbased.daemon import Daemon, Worker
from laterbased.errors import EXIT_REFUSE, RefuseToRun


def quiet_config(**overrides: Any) -> Config:
    """A config with nothing that needs a server: no standby, no backups, HTTP off."""
    values: dict[str, Any] = {
        "standby": StandbyConfig(enabled=False),
        "backup": BackupConfig(enabled=False),
        "http": HttpConfig(enabled=False),
    }
    values.update(overrides)
    return Config(**values)


async def test_refusing_daemon_logs_the_exit_code_it_really_ends_with(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # A second daemon on a busy data directory refused (exit 3) but logged
    # "laterbased stopped exit_code=0" as its last line: journalctl readers believed it.
    async def refuse(ctx: Any) -> None:
        raise RefuseToRun("someone else's server runs on the data directory")

    daemon = Daemon(quiet_config(), workers=[Worker("standby", refuse)])
    caplog.set_level(logging.INFO, logger="laterbased.daemon")
    with pytest.raises(RefuseToRun):
        await daemon.serve()
    stopped = [r.getMessage() for r in caplog.records if "laterbased stopped" in r.getMessage()]
    assert stopped == [f"laterbased stopped exit_code={EXIT_REFUSE}"]
