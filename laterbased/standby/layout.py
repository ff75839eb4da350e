"""Where the standby's files live, and making those places usable by the run-as user."""

from __future__ import annotations

import errno
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from laterbased.config import Config
from laterbased.errors import UnsafePath
from laterbased.proc import RunAs, ensure_reachable

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Layout:
    data_dir: Path
    # Next to the data directory (same file system, so the final rename is atomic).
    staging_dir: Path
    # Owned by the run-as user, 0700: the passfile and the standby's unix socket. The socket
    # is reachable by that user and root only, whatever pg_hba.conf the primary had.
    runtime_dir: Path

    @property
    def passfile(self) -> Path:
        return self.runtime_dir / "primary.pgpass"

    @property
    def socket_dir(self) -> Path:
        return self.runtime_dir

    @classmethod
    def from_config(cls, config: Config) -> Layout:
        data_dir = config.standby_data_dir.absolute()
        return cls(
            data_dir=data_dir,
            staging_dir=data_dir.with_name(f".{data_dir.name}.laterbased-staging"),
            runtime_dir=config.state_dir.absolute() / "standby-run",
        )


def prepare_directories(layout: Layout, state_dir: Path, run_as: RunAs | None) -> None:
    """Create the state and runtime directories and the data directory's parent."""
    state_dir = state_dir.absolute()
    state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    layout.runtime_dir.mkdir(exist_ok=True, mode=0o700)
    try:
        # Never through a symbolic link: chmod/chown would hand its target to run_as.
        fd = os.open(layout.runtime_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    except OSError as exc:
        if exc.errno not in (errno.ELOOP, errno.ENOTDIR):
            raise
        raise UnsafePath(
            f"{layout.runtime_dir} is a symbolic link or not a directory; laterbased never "
            f"follows one there (it would chmod and chown its target). Remove it (rm "
            f"{layout.runtime_dir}) and start laterbased again"
        ) from None
    try:
        os.fchmod(fd, 0o700)
        if run_as is not None:
            os.fchown(fd, run_as.uid, run_as.gid)
    finally:
        os.close(fd)
    ensure_reachable(layout.runtime_dir, run_as, fix_up_to=state_dir)
    layout.data_dir.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    ensure_reachable(layout.data_dir.parent, run_as, fix_up_to=state_dir)
