"""libpq password files (``.pgpass`` format), written atomically with mode 0600.

libpq ignores a passfile that is group/world readable or not owned by the reading user,
so the file is created 0600 from the start and handed to the run-as user.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
from collections.abc import Iterable
from pathlib import Path

import aiofiles
import aiofiles.os

from laterbased.proc import RunAs, finish_uncancellable

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


async def write_passfile(path: Path, lines: Iterable[str], run_as: RunAs | None) -> None:
    """Atomically replace ``path`` with ``lines``: mode 0600 from creation, fsynced, renamed
    into place, owned by ``run_as`` when given. The file I/O runs off the event loop
    (aiofiles), so the daemon keeps answering while a slow disk syncs."""
    directory = path.parent
    temp = directory / f".{path.name}.{secrets.token_hex(6)}.tmp"
    content = "".join(f"{line}\n" for line in lines).encode("utf-8")

    def create(name: str, flags: int) -> int:
        # Runs in aiofiles' thread: 0600 and the owner are set before a byte is written.
        fd = os.open(name, flags | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        try:
            os.fchmod(fd, 0o600)  # the umask cannot widen it, but be explicit
            if run_as is not None:
                os.fchown(fd, run_as.uid, run_as.gid)
        except BaseException:
            os.close(fd)
            raise
        return fd

    async def write() -> None:
        try:
            async with aiofiles.open(temp, "wb", opener=create) as handle:
                await handle.write(content)
                await handle.flush()
                await _fsync(handle.fileno())
            await aiofiles.os.replace(temp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                await aiofiles.os.unlink(temp)
            raise
        await _fsync_directory(directory)
        logger.debug("wrote passfile %s", path)

    # A few milliseconds of work: finished even when the caller is cancelled meanwhile, or a
    # file opened in aiofiles' thread would be left open and its temporary file behind.
    await finish_uncancellable(asyncio.ensure_future(write()))


_fsync = aiofiles.os.wrap(os.fsync)


@aiofiles.os.wrap
def _fsync_directory(directory: Path) -> None:
    dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
