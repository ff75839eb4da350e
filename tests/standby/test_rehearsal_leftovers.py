"""A failover rehearsal killed while it cloned (``promote --rehearse`` got SIGKILL) leaves its
``pg_basebackup`` copying into ``<state_dir>/rehearsal-*``: the next start of the standby
worker stops that clone and removes its copy, and stops nothing it did not start."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from pgserver import PgServer
from standby_support import running_standby
from waiting import wait_for

from laterbased.proc import RunAs, pids_with_cwd_under, process_facts, resolve_run_as

pytestmark = pytest.mark.slow


def owned_directory(path: Path, run_as: RunAs | None) -> Path:
    path.mkdir(mode=0o700)
    if run_as is not None:
        os.chown(path, run_as.uid, run_as.gid)
    return path


@contextlib.contextmanager
def slow_clone(
    primary: PgServer, run_as: RunAs | None, cwd: Path, target: Path
) -> Iterator[subprocess.Popen[bytes]]:
    """``pg_basebackup`` run as a rehearsal runs it (the run-as user, working in the
    rehearsal's directory), throttled to the slowest rate so it is still copying when the
    worker starts. Killed with its WAL-streaming child at the end, whatever happened."""
    argv = [
        str(primary.bindir / "pg_basebackup"),
        "-d", f"host=127.0.0.1 port={primary.port} user={primary.replication_user}",
        "-D", str(target), "-X", "stream", "--checkpoint=fast", "--no-sync",
        "--max-rate=32k",
    ]
    env = {"PATH": os.environ.get("PATH", ""), "PGPASSWORD": primary.replication_password}
    identity = {}
    if run_as is not None:
        identity = {"user": run_as.uid, "group": run_as.gid, "extra_groups": []}
    clone = subprocess.Popen(  # noqa: S603 - a fixed argv
        argv, cwd=cwd, env=env, start_new_session=True,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, **identity,  # type: ignore[arg-type]
    )
    try:
        yield clone
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(clone.pid, signal.SIGKILL)
        clone.wait(timeout=30)


async def test_the_next_start_stops_the_clone_a_killed_rehearsal_left_and_nothing_else(
    make_primary: Callable[..., PgServer],
) -> None:
    primary = make_primary()
    run_as = resolve_run_as(None)
    elsewhere = Path(tempfile.mkdtemp(prefix="lb-not-a-rehearsal-"))
    if run_as is not None:
        os.chown(elsewhere, run_as.uid, run_as.gid)
    try:
        async with running_standby(primary, start=False) as standby:
            # What the daemon gives its state directory: the run-as user may pass through.
            standby.config.state_dir.chmod(0o711)
            work = owned_directory(standby.config.state_dir / "rehearsal-killed", run_as)
            with (
                slow_clone(primary, run_as, work, work / "data") as left,
                # Working in the rehearsal's directory, but writing somewhere else: not ours.
                slow_clone(primary, run_as, work, elsewhere / "data") as unrelated,
            ):
                await wait_for(
                    lambda: (work / "data").is_dir() and (elsewhere / "data").is_dir(),
                    "both clones copying",
                    30,
                )
                standby.start()
                await standby.wait_running()
                await wait_for(
                    lambda: left.poll() is not None, "the killed rehearsal's clone stopped", 60
                )
                assert not work.exists(), "the killed rehearsal's copy is still there"
                assert unrelated.poll() is None, "a pg_basebackup writing elsewhere was stopped"
                assert (elsewhere / "data").is_dir()
            # Only the unrelated clone was left to kill: no clone of the rehearsal runs on.
            clones = [
                pid
                for pid in pids_with_cwd_under(standby.config.state_dir)
                if (facts := process_facts(pid)) is not None and facts.program == "pg_basebackup"
            ]
            assert clones == []
    finally:
        shutil.rmtree(elsewhere, ignore_errors=True)
