"""The local token: how ``backup-now`` and ``promote`` on this host reach the running daemon.

The daemon writes a fresh random token into ``<state_dir>/http-local-token`` at every start
(mode 0600, or 0640 with the run-as user's group when the daemon runs as root), and
``POST /api/<action>`` accepts it beside the configured ``http.token``. So the commands work
for whoever may read the state directory's token (root and the run-as user), without an
``http.token`` to configure, while a browser or another host still needs the configured one.

Blocking file I/O: the daemon calls :func:`write_local_token` through ``asyncio.to_thread``.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import secrets
import stat
from pathlib import Path

from laterbased.config import Config

LOCAL_TOKEN_FILE = "http-local-token"  # noqa: S105 - a file name, not a secret


def local_token_path(state_dir: Path) -> Path:
    return state_dir.absolute() / LOCAL_TOKEN_FILE


def write_local_token(state_dir: Path, group: int | None) -> str:
    """A new token, written atomically; ``group`` (a gid) may read it too (mode 0640)."""
    token = secrets.token_urlsafe(32)
    path = local_token_path(state_dir)
    temporary = path.with_name(f".{LOCAL_TOKEN_FILE}.{secrets.token_hex(4)}")
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    fd = os.open(temporary, flags, 0o600)
    try:
        if group is not None:
            os.fchown(fd, -1, group)
            os.fchmod(fd, 0o640)
        os.write(fd, f"{token}\n".encode("ascii"))
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        with contextlib.suppress(OSError):
            temporary.unlink()
        raise
    os.close(fd)
    # rename replaces a symbolic link planted at the name instead of following it.
    os.replace(temporary, path)
    return token


def read_local_token(state_dir: Path) -> str:
    """The running daemon's local token; raises ``OSError`` (absent, not readable)."""
    fd = os.open(local_token_path(state_dir), os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    with os.fdopen(fd, "rb") as handle:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(f"{local_token_path(state_dir)} is not a regular file")
        return handle.read(4096).decode("ascii", errors="replace").strip()


def client_token(config: Config) -> tuple[str | None, str]:
    """The token a command on this host presents, and, when there is none, why not.

    The configured ``http.token`` when set, else the daemon's local token.
    """
    if config.http.token:
        return config.http.token.reveal(), ""
    path = local_token_path(config.state_dir)
    try:
        token = read_local_token(config.state_dir)
    except PermissionError:
        owner = _owner(path)
        return None, (
            f"this user may not read the daemon's local token {path}: run the command as "
            f"root or as {owner} (sudo -u {owner} laterbased ...), or set http.token "
            "(LATERBASED_HTTP_TOKEN_FILE)"
        )
    except OSError as exc:
        return None, (
            f"the daemon's local token {path} cannot be read ({exc.strerror or exc}): is "
            "state_dir the daemon's? Use the daemon's configuration, or set http.token "
            "(LATERBASED_HTTP_TOKEN_FILE)"
        )
    return (token or None), "" if token else f"the daemon's local token {path} is empty"


def _owner(path: Path) -> str:
    try:
        return pwd.getpwuid(path.stat().st_uid).pw_name
    except (OSError, KeyError):
        return "the daemon's user"
