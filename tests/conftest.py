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

from laterbased.pg.binaries import major_from_version_string, tool_version
from laterbased.proc import pids_with_cwd_under


def installed_majors() -> list[int]:
    """The PostgreSQL majors the server-touching tests run on: every major installed under
    /usr/lib/postgresql (13 is Resolve 18-20's, 15 is Debian's), or the comma list in
    LATERBASED_TEST_PG_MAJORS (to run one major while developing), or the single major of
    LATERBASED_TEST_PG_BINDIR."""
    wanted = os.environ.get("LATERBASED_TEST_PG_MAJORS", "").strip()
    if wanted:
        return sorted({int(part) for part in wanted.split(",") if part.strip()})
    if os.environ.get("LATERBASED_TEST_PG_BINDIR"):
        return [bindir_major(find_pg_bindir())]
    found = sorted(
        int(path.parent.parent.name)
        for path in Path("/usr/lib/postgresql").glob("*/bin/initdb")
        if path.parent.parent.name.isdigit()
    )
    return found or [bindir_major(find_pg_bindir())]


def bindir_major(bindir: Path) -> int:
    return int(major_from_version_string(tool_version(bindir / "postgres")))


def bindir_for_major(major: int) -> Path:
    configured = os.environ.get("LATERBASED_TEST_PG_BINDIR")
    if configured and bindir_major(Path(configured)) == major:
        return Path(configured)
    path = Path(f"/usr/lib/postgresql/{major}/bin")
    if not (path / "initdb").exists():
        raise RuntimeError(f"PostgreSQL {major} is not installed: run 'sudo bash scripts/setup'")
    return path


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "pg_majors(*majors): run this server test only on these PostgreSQL majors (say why "
        "next to the marker: a feature only one major has)",
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """A test marked ``pg_majors(15)`` is not collected for the other majors: deselected,
    not skipped, so a skip always means something went wrong."""
    keep: list[pytest.Item] = []
    dropped: list[pytest.Item] = []
    for item in items:
        marker = item.get_closest_marker("pg_majors")
        callspec = getattr(item, "callspec", None)
        major = callspec.params.get("pg_major") if callspec is not None else None
        if marker is not None and major is not None and major not in marker.args:
            dropped.append(item)
        else:
            keep.append(item)
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = keep


@pytest.fixture(scope="session", params=installed_majors(), ids=lambda major: f"pg{major}")
def pg_major(request: pytest.FixtureRequest) -> int:
    """The PostgreSQL major of this run of a server test: every server test runs once per
    installed major (13, what Resolve ships, and 15)."""
    major: int = request.param
    return major


@pytest.fixture(scope="session")
def pg_bindir(pg_major: int) -> Path:
    """Directory of the PostgreSQL server binaries of this run's major."""
    return bindir_for_major(pg_major)


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
