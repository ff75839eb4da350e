"""Shared fixtures: real PostgreSQL servers (see pgserver.py)."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from pgserver import PgServer, find_pg_bindir
from pgserver import free_port as _free_port

from laterbased.proc import pids_with_cwd_under


@pytest.fixture(scope="session")
def pg_bindir() -> Path:
    """Directory of the PostgreSQL server binaries the tests use."""
    return find_pg_bindir()


@pytest.fixture(scope="session")
def primary(pg_bindir: Path) -> Iterator[PgServer]:
    """One real primary shared by the whole session. Do not stop it or change settings
    that need a restart; use ``make_primary`` for that."""
    server = PgServer(pg_bindir)
    try:
        yield server
    finally:
        server.cleanup()


@pytest.fixture
def make_primary(pg_bindir: Path) -> Iterator[Callable[..., PgServer]]:
    """Factory for private servers: ``make_primary(wal_level="logical",
    max_slot_wal_keep_size="1MB")``. All are removed at the end of the test."""
    servers: list[PgServer] = []

    def make(**settings: object) -> PgServer:
        server = PgServer(pg_bindir, **settings)
        servers.append(server)
        return server

    yield make
    for server in reversed(servers):
        server.cleanup()


@pytest.fixture
def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    return _free_port()


@pytest.fixture
def state_dir() -> Iterator[Path]:
    """A daemon's state_dir in the system temp dir (pytest's tmp_path is root-only, and the
    standby runs as the postgres user). Anything still running inside it is killed after
    the test, then it is removed."""
    path = Path(tempfile.mkdtemp(prefix="laterbased-state-"))
    try:
        yield path
    finally:
        for pid in pids_with_cwd_under(path):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        shutil.rmtree(path, ignore_errors=True)
