"""Exclusive, non-blocking ``flock`` lock files that name the process holding them.

Used for ``<state_dir>/laterbased.lock`` (one daemon per state directory) and
``<backup_dir>/.lock`` (one writer per backup directory). The kernel drops the lock when the
holder's descriptor closes, so it dies with the process, even on SIGKILL: no stale lock to
clean up by hand. The descriptor is close-on-exec, so a child (postgres, pg_dump, rclone)
never inherits it and cannot keep the lock after we are gone.

Blocking file I/O: call it through ``asyncio.to_thread`` from the event loop.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from laterbased.errors import RefuseToRun


class LockBusy(Exception):
    """Another process holds the lock; ``holder`` is the pid it wrote, or ``"?"``."""

    def __init__(self, path: Path, holder: str) -> None:
        super().__init__(f"{path} is locked by pid {holder}")
        self.path = path
        self.holder = holder


class HeldLock:
    """A lock taken with :func:`take_lock`; :meth:`release` it (or let the process end)."""

    def __init__(self, fd: int, path: Path) -> None:
        self._fd: int | None = fd
        self.path = path

    @property
    def held(self) -> bool:
        return self._fd is not None

    def release(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)  # closing the only descriptor drops the flock

    def __enter__(self) -> HeldLock:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.release()


def take_lock(path: Path) -> HeldLock:
    """Lock ``path`` (created 0600 if absent) for this process and write our pid into it.

    Raises :class:`LockBusy` naming the holder's pid when another open file description
    holds it: another process, or another lock taken in this same process.
    """
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode("ascii", errors="replace").strip() or "?"
        os.close(fd)
        raise LockBusy(path, holder) from None
    except BaseException:
        os.close(fd)
        raise
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    except BaseException:
        os.close(fd)
        raise
    return HeldLock(fd, path)


STATE_LOCK_FILE = "laterbased.lock"


def lock_state_dir(state_dir: Path) -> HeldLock:
    """Claim ``state_dir`` for this daemon (``<state_dir>/laterbased.lock``), creating it.

    Two daemons on one state directory would fight over one standby postgres (each takes
    the other's server for a foreign one) and one passfile. Raises :class:`RefuseToRun`
    naming the pid of the daemon that holds it.
    """
    state_dir = state_dir.absolute()
    try:
        state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        return take_lock(state_dir / STATE_LOCK_FILE)
    except LockBusy as exc:
        raise RefuseToRun(
            f"another laterbased (pid {exc.holder}) is already running with state_dir "
            f"{state_dir}; stop it first (systemctl stop laterbased) or give this one its "
            "own state_dir"
        ) from None
    except OSError as exc:
        raise RefuseToRun(
            f"cannot lock state_dir {state_dir}: {exc.strerror or exc}; make it writable "
            "for laterbased's user or point state_dir elsewhere"
        ) from None
