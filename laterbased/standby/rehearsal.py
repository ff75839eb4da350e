"""``laterbased promote --rehearse``: a failover drill that changes nothing real.

The standby is cloned with ``pg_basebackup`` *from the standby itself* (over TCP on its
own address, as ``primary.user``: a physical copy made while it keeps streaming; no stop,
no snapshot tooling, no load on the Resolve server, the same tool as the standby's own
clone). The copy is started on a free side port on loopback as a standby of nobody
(``primary_conninfo`` empty: it never connects to the primary or takes its slot), promoted
with ``pg_ctl promote``, every Resolve library is opened (``SM_Project`` read, a write
committed), then it is stopped and its directory removed, whatever happened.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import signal
import socket
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from laterbased.config import Config
from laterbased.core.lockfile import LockBusy, take_lock
from laterbased.errors import JobFailed
from laterbased.pg.binaries import find_bindir
from laterbased.pg.conninfo import build_conninfo
from laterbased.pg.passfile import passfile_line, write_passfile
from laterbased.proc import (
    Child,
    RunAs,
    child_environment,
    finish_uncancellable,
    resolve_run_as,
    run,
    spawn,
    stop_leftovers,
    stop_unrelated_process,
)
from laterbased.standby import configure, failover, safety
from laterbased.standby.layout import Layout

logger = logging.getLogger(__name__)

CLONE_TIMEOUT = 6 * 3600.0
READY_TIMEOUT = 300.0
PREFIX = "rehearsal-"
# Held in <state_dir> while a rehearsal runs: its copies are no leftovers while it lives (the
# kernel drops the lock when the rehearsal dies, SIGKILL included).
LOCK_FILE = "rehearsal.lock"
CLONE_STOP_STEPS = ((signal.SIGTERM, 10.0),)


@dataclass
class RehearsalReport:
    clone_seconds: float = 0.0
    source: str = "the standby"  # what was cloned
    source_note: str | None = None  # why not the standby
    # From starting the copy to every library opened on the promoted copy: what a real
    # failover costs (the real standby already runs, so this is an upper bound).
    failover_seconds: float = 0.0
    side_port: int = 0
    opened: dict[str, int] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return bool(self.opened) and not self.failed


def _free_loopback_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _make_workdir(state_dir: Path, run_as: RunAs | None) -> Path:
    """``<state_dir>/rehearsal-XXXX`` for the copy (same disk as the standby), 0700, the
    run-as user's (postgres refuses a data directory it does not own)."""
    path = Path(tempfile.mkdtemp(prefix=PREFIX, dir=state_dir))
    if run_as is not None:
        os.chown(path, run_as.uid, run_as.gid)
    return path


def _remove(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)


async def rehearse(config: Config) -> RehearsalReport:
    """Clone, promote on a side port, prove the libraries, remove. Raises JobFailed with
    the reason when a step fails; the copy is gone afterwards either way."""
    layout = Layout.from_config(config)
    data_dir = layout.data_dir
    if not await asyncio.to_thread((data_dir / "PG_VERSION").is_file):
        raise JobFailed(f"no standby in {data_dir}: nothing to rehearse with")
    major = await asyncio.to_thread(safety.cluster_major, data_dir)
    if await asyncio.to_thread(configure.is_promoted, data_dir, major):
        raise JobFailed(f"{data_dir} is already promoted: a rehearsal needs the standby")
    if safety.live_postmaster(data_dir) is None:
        raise JobFailed(f"the standby on {data_dir} is not running (start laterbased first)")
    bindir = await asyncio.to_thread(find_bindir, major, config.standby.bin_dir)
    run_as = resolve_run_as(config.standby.run_as)
    try:
        lock = await asyncio.to_thread(take_lock, config.state_dir / LOCK_FILE)
    except LockBusy as exc:
        raise JobFailed(f"another rehearsal is running (pid {exc.holder})") from None
    try:
        return await _rehearse_locked(config, bindir, major, run_as)
    finally:
        lock.release()


async def _rehearse_locked(
    config: Config, bindir: Path, major: str, run_as: RunAs | None
) -> RehearsalReport:
    await remove_leftovers(config.state_dir, run_as)
    work = await asyncio.to_thread(_make_workdir, config.state_dir, run_as)
    report = RehearsalReport(side_port=_free_loopback_port())
    child: Child | None = None
    try:
        copy = work / "data"
        socket_dir = work / "run"
        await asyncio.to_thread(socket_dir.mkdir, mode=0o700)
        if run_as is not None:
            await asyncio.to_thread(shutil.chown, socket_dir, run_as.uid, run_as.gid)
        passfile = work / "pgpass"
        await _clone(config, bindir, copy, passfile, run_as, report)
        started = time.monotonic()
        child = await _start_copy(config, bindir, major, copy, socket_dir, run_as, report)
        await _wait_accepting(bindir, socket_dir, report.side_port, config, child)
        result = await run(
            [str(bindir / "pg_ctl"), "promote", "-w", "-t", "60", "-D", str(copy)],
            run_as=run_as,
            log_name="rehearsal pg_ctl promote",
            timeout=90,
        )
        if result.returncode != 0:
            raise JobFailed("pg_ctl promote of the copy failed: "
                            + " | ".join(result.stderr_tail[-3:]))
        primary = config.primary
        proof = await failover.prove_libraries(
            host="127.0.0.1",
            port=report.side_port,
            user=primary.user,
            password=primary.password.reveal() if primary.password else None,
            maintenance_db=primary.database,
            connect_timeout=primary.connect_timeout,
            write=True,
        )
        report.failover_seconds = time.monotonic() - started
        report.opened, report.failed = proof.opened, proof.failed
        return report
    finally:
        if child is not None:
            await finish_uncancellable(asyncio.ensure_future(
                child.stop(((signal.SIGINT, 30.0), (signal.SIGQUIT, 10.0)))
            ))
        await finish_uncancellable(asyncio.ensure_future(asyncio.to_thread(_remove, work)))
        logger.info("rehearsal: removed %s", work)


async def clean_after_killed_rehearsal(state_dir: Path, run_as: RunAs | None) -> None:
    """At the daemon's start: what a killed rehearsal left (:func:`remove_leftovers`), unless
    a rehearsal is running right now (its lock is held)."""
    try:
        lock = await asyncio.to_thread(take_lock, state_dir / LOCK_FILE)
    except LockBusy:
        return
    try:
        await remove_leftovers(state_dir, run_as)
    finally:
        lock.release()


async def remove_leftovers(state_dir: Path, run_as: RunAs | None) -> None:
    """A rehearsal killed before its cleanup (SIGKILL, power cut) left its copy in
    ``<state_dir>/rehearsal-*``, perhaps with its clone still copying or its postgres
    running: stop that ``pg_basebackup`` (the run-as user's, working in that directory and
    writing into it) and that postgres (only when it is provably the copy's, as for the
    standby), then remove the directory. The caller holds :data:`LOCK_FILE`."""
    leftovers = await asyncio.to_thread(lambda: sorted(state_dir.glob(PREFIX + "*")))
    uid = run_as.uid if run_as is not None else os.geteuid()
    for work in leftovers:
        copy = work / "data"
        await stop_leftovers(
            work, "pg_basebackup", uid, CLONE_STOP_STEPS, "rehearsal pg_basebackup",
            target=("-D", "--pgdata"),
        )
        pid = await asyncio.to_thread(safety.postmaster_to_stop, copy, run_as)
        if pid is not None:
            logger.warning("rehearsal: stopping the postgres (pid %s) a killed rehearsal "
                           "left running on %s", pid, copy)
            stopped = await stop_unrelated_process(
                pid, ((signal.SIGINT, 30.0), (signal.SIGQUIT, 10.0)), "rehearsal postgres"
            )
            if not stopped:
                raise JobFailed(f"the postgres (pid {pid}) on {copy} survives SIGKILL")
        await asyncio.to_thread(_remove, work)
        logger.warning("rehearsal: removed %s, left by a rehearsal that was killed", work)


async def _clone(
    config: Config,
    bindir: Path,
    copy: Path,
    passfile: Path,
    run_as: RunAs | None,
    report: RehearsalReport,
) -> None:
    """pg_basebackup from the standby: over its private socket first (a ``local
    replication`` line, as Linux primaries have), then over TCP on its own address (a
    ``host replication`` line for loopback). A standby whose pg_hba.conf (a Windows
    primary's copy) admits neither is cloned from the primary instead, which admits this
    host for replication (the standby streams that way), and the report says so."""
    from laterbased.standby.promote import local_host

    layout = Layout.from_config(config)
    port = config.standby.port
    primary = config.primary
    password = primary.password.reveal() if primary.password else ""
    lines = [passfile_line("*", port, "*", primary.user, password)]
    if primary.host is not None:
        lines.append(passfile_line(primary.host, primary.port, "*", primary.user, password))
    await write_passfile(passfile, lines, run_as)
    sources: list[tuple[str, int, str, str]] = [
        (str(layout.socket_dir), port, "prefer", "the standby"),
        (local_host(config), port, "prefer", "the standby"),
    ]
    if primary.host is not None:
        sources.append((primary.host, primary.port, primary.sslmode, "the primary"))
    refusals: list[str] = []
    for host, source_port, sslmode, what in sources:
        conninfo = build_conninfo(
            host=host,
            port=source_port,
            user=primary.user,
            passfile=str(passfile),
            application_name="laterbased_rehearsal",
            sslmode=sslmode,
            connect_timeout=max(1, int(primary.connect_timeout)),
        )
        started = time.monotonic()
        result = await run(
            [str(bindir / "pg_basebackup"), "-d", conninfo, "-D", str(copy), "-X", "stream",
             "--checkpoint=fast", "--no-sync"],
            env=child_environment({"PGPASSFILE": str(passfile)}),
            run_as=run_as,
            # In the rehearsal's directory: a clone a killed rehearsal left running is known
            # by it (remove_leftovers).
            cwd=str(copy.parent),
            log_name="rehearsal pg_basebackup",
            timeout=CLONE_TIMEOUT,
        )
        if result.returncode == 0:
            report.clone_seconds = time.monotonic() - started
            report.source = what
            if refusals:
                report.source_note = (
                    f"the standby's pg_hba.conf admits no replication connection from this "
                    f"host (add 'local replication {primary.user} md5' to "
                    f"{layout.data_dir / 'pg_hba.conf'} to clone the standby instead)"
                )
            logger.info("rehearsal: %s cloned into %s seconds=%.1f", what, copy,
                        report.clone_seconds)
            return
        tail = " | ".join(result.stderr_tail[-3:])
        await asyncio.to_thread(shutil.rmtree, copy, True)
        if "pg_hba.conf" not in tail and "authentication failed" not in tail:
            raise JobFailed(f"cloning {what} failed: {tail}")
        refusals.append(f"{what}: {tail}")
    raise JobFailed(
        "neither the standby nor the primary admits a replication connection from this "
        "host: " + " | ".join(refusals)
    )


async def _start_copy(
    config: Config,
    bindir: Path,
    major: str,
    copy: Path,
    socket_dir: Path,
    run_as: RunAs | None,
    report: RehearsalReport,
) -> Child:
    """Start the copy as a standby of nobody on the side port (loopback only)."""
    settings: dict[str, str] = {}
    for name in (configure.MAIN_CONF, configure.AUTO_CONF):
        path = copy / name
        if await asyncio.to_thread(path.exists):
            settings.update(configure.parse_settings(await asyncio.to_thread(path.read_text,
                                                                             "utf-8")))
    overrides = configure.server_overrides(
        major,
        settings,
        data_dir=copy,
        port=report.side_port,
        listen_addresses="127.0.0.1",
        socket_dir=socket_dir,
    )
    if configure.uses_standby_signal(major):
        await asyncio.to_thread((copy / configure.STANDBY_SIGNAL).touch)
        # Never stream from the primary (nor take our slot there): a copy of nobody.
        overrides["primary_conninfo"] = ""
        overrides["primary_slot_name"] = ""
    else:
        await asyncio.to_thread(
            (copy / configure.RECOVERY_CONF).write_text,
            "standby_mode = 'on'\nrecovery_target_timeline = 'latest'\n",
        )
    if run_as is not None:
        for name in (configure.STANDBY_SIGNAL, configure.RECOVERY_CONF):
            with contextlib.suppress(FileNotFoundError):
                await asyncio.to_thread(shutil.chown, copy / name, run_as.uid, run_as.gid)
    argv = configure.server_argv(bindir / "postgres", copy, overrides)
    return await spawn(argv, run_as=run_as, cwd=copy, log_name="rehearsal postgres")


async def _wait_accepting(
    bindir: Path, socket_dir: Path, port: int, config: Config, child: Child
) -> None:
    deadline = time.monotonic() + READY_TIMEOUT
    while time.monotonic() < deadline:
        if child.returncode is not None:
            raise JobFailed(f"the copy's postgres exited with status {child.returncode}")
        result = await run(
            [str(bindir / "pg_isready"), "-q", "-h", str(socket_dir), "-p", str(port),
             "-t", "5", "-U", config.primary.user, "-d", config.primary.database],
            log_name="pg_isready",
            timeout=10,
        )
        if result.returncode == 0:
            return
        await asyncio.sleep(0.2)
    raise JobFailed(f"the copy did not accept connections within {READY_TIMEOUT:.0f}s")
