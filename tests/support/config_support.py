"""Configurations for tests that run parts of the daemon in-process: one without any
server, and the primary section aimed at a test server."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from pgserver import PgServer

from laterbased.config import (
    BackupConfig,
    Config,
    HttpConfig,
    PrimaryConfig,
    Secret,
    StandbyConfig,
)


def primary_config(
    server: PgServer, *, superuser: bool = False, connect_timeout: float = 2.0
) -> PrimaryConfig:
    """``server`` as the primary, logged into as its replication user (what laterbased is
    given in production) or, with ``superuser``, as Resolve's own superuser login."""
    return PrimaryConfig(
        host=server.host,
        port=server.port,
        user=server.superuser if superuser else server.replication_user,
        password=Secret(server.superuser_password if superuser else server.replication_password),
        connect_timeout=connect_timeout,
    )


def quiet_config(**overrides: Any) -> Config:
    """A config with nothing that needs a server: no standby, no backups, HTTP off."""
    values: dict[str, Any] = {
        "standby": StandbyConfig(enabled=False),
        "backup": BackupConfig(enabled=False),
        "http": HttpConfig(enabled=False),
        # A private state_dir: the daemon locks its state_dir (one daemon per directory).
        "state_dir": Path(tempfile.mkdtemp(prefix="lb-quiet-")),
    }
    values.update(overrides)
    return Config(**values)

