"""A configuration for tests that run parts of the daemon in-process without any server."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from laterbased.config import BackupConfig, Config, HttpConfig, StandbyConfig


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

