"""libpq password files (``.pgpass`` format), written atomically with mode 0600.

libpq ignores a passfile that is group/world readable or not owned by the reading user,
so the file is created 0600 from the start and handed to the run-as user.
"""

from __future__ import annotations

import logging
import os
import secrets
from collections.abc import Iterable
from pathlib import Path

from laterbased.proc import RunAs

logger = logging.getLogger(__name__)


def _escape_field(value: str, field: str) -> str:
    if "\n" in value or "\r" in value:
        raise ValueError(f"a passfile {field} cannot contain a line break")
    return value.replace("\\", "\\\\").replace(":", "\\:")


def passfile_line(host: str, port: int | str, database: str, user: str, password: str) -> str:
    """One ``host:port:database:user:password`` line, ``\\`` and ``:`` escaped per libpq.

    ``*`` in the first four fields matches anything, as libpq defines it.
    """
    fields = (
        (host, "host"),
        (str(port), "port"),
        (database, "database"),
        (user, "user"),
        (password, "password"),
    )
    return ":".join(_escape_field(value, name) for value, name in fields)


def write_passfile(path: Path, lines: Iterable[str], run_as: RunAs | None) -> None:
    """Atomically replace ``path`` with ``lines``: mode 0600 from creation, fsynced, renamed
    into place, owned by ``run_as`` when given. Blocking: call via ``asyncio.to_thread``.
    """
    directory = path.parent
    temp = directory / f".{path.name}.{secrets.token_hex(6)}.tmp"
    content = "".join(f"{line}\n" for line in lines).encode("utf-8")
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        try:
            os.fchmod(fd, 0o600)  # the umask cannot widen it, but be explicit
            if run_as is not None:
                os.fchown(fd, run_as.uid, run_as.gid)
            view = memoryview(content)
            while view:
                written = os.write(fd, view)
                view = view[written:]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(temp, path)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    logger.debug("wrote passfile %s", path)
