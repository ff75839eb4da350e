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


# Under CI=true a skipped test is a failure: a skip there means a promise went unchecked.
# Only these may skip in CI, each for a reason CI's machine may really have. Keys are test
# ids without the parameters ("tests/x.py::test_name"). Add one only with its reason.
_NO_MOUNT = "mounting needs CAP_SYS_ADMIN, which an unprivileged CI container lacks"
CI_ALLOWED_SKIPS: dict[str, str] = {
    **{
        f"tests/standby/test_standby_ownership.py::{name}": _NO_MOUNT
        for name in (
            "test_a_bind_mounted_data_dir_on_the_same_file_system_is_cloned_once_in_place",
            "test_a_daemon_killed_mid_bootstrap_on_a_mount_point_keeps_lost_and_found",
            "test_a_mount_point_that_appears_during_the_clone_gets_the_clone_moved_in",
            "test_an_interrupted_move_into_a_mount_point_removes_only_what_it_moved",
        )
    },
    "tests/standby/test_standby_supervisor.py::test_bootstrap_into_a_mount_point_uses_inner_staging":
        _NO_MOUNT,
}


def _test_id_without_parameters(nodeid: str) -> str:
    return nodeid.split("[", 1)[0]


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):  # type: ignore[no-untyped-def]
    """CI=true: a skip not in CI_ALLOWED_SKIPS is reported as a failure, with its reason."""
    outcome = yield
    report: pytest.TestReport = outcome.get_result()
    if os.environ.get("CI") != "true" or not report.skipped:
        return
    if hasattr(report, "wasxfail"):
        return
    if _test_id_without_parameters(item.nodeid) in CI_ALLOWED_SKIPS:
        return
    reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
    report.outcome = "failed"
    report.longrepr = (
        f"skipped under CI=true ({reason}); a skip in CI hides an unchecked promise: make it "
        "run in CI, or add it to CI_ALLOWED_SKIPS in tests/conftest.py with the reason"
    )


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
