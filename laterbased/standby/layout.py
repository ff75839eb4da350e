"""Where the standby's files live, and making those places usable by the run-as user."""

from __future__ import annotations

import errno
import logging
import os
import stat
from dataclasses import dataclass
from pathlib import Path

from laterbased.config import Config
from laterbased.errors import RefuseToRun, UnsafePath
from laterbased.proc import RunAs

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


def _can_traverse(info: os.stat_result, run_as: RunAs) -> bool:
    mode = info.st_mode
    if info.st_uid == run_as.uid:
        return bool(mode & stat.S_IXUSR)
    if info.st_gid == run_as.gid:
        return bool(mode & stat.S_IXGRP)
    return bool(mode & stat.S_IXOTH)


def ensure_reachable(path: Path, run_as: RunAs | None, *, fix_up_to: Path | None = None) -> None:
    """Every directory above ``path`` must let ``run_as`` pass (x bit).

    Directories at or below ``fix_up_to`` (ours, e.g. the state directory) get o+x added
    (traverse, not list); any other blocking directory is refused with the fix to apply.
    """
    if run_as is None:
        return
    for directory in [path, *path.parents]:
        if directory == path and not directory.is_dir():
            continue
        info = directory.stat()
        if _can_traverse(info, run_as):
            continue
        ours = fix_up_to is not None and (directory == fix_up_to or fix_up_to in directory.parents)
        if ours:
            os.chmod(directory, stat.S_IMODE(info.st_mode) | stat.S_IXOTH)
            logger.info("made %s traversable for %s (o+x)", directory, run_as.name)
            continue
        raise RefuseToRun(
            f"{directory} does not let {run_as.name} through, so the standby cannot reach "
            f"{path}; fix it with: chmod o+x {directory}"
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
