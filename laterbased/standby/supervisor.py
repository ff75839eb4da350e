"""The standby worker: slot → bootstrap if needed → run postgres → restart it when it dies.

Everything it learns goes into ``state.standby`` (phase, role, pid, restarts by reason,
progress, a message a human can act on). On cancellation (daemon shutdown) the postgres
child is stopped fast → immediate → SIGKILL, and no process of it is left behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import time
from pathlib import Path

import asyncpg

from laterbased.config import Config
from laterbased.core.context import WorkerContext
from laterbased.core.state import StandbyState, State
from laterbased.errors import JobFailed, RefuseToRun
from laterbased.pg import control_file
from laterbased.pg.binaries import find_bindir
from laterbased.pg.connect import PgUnavailable
from laterbased.proc import (
    Child,
    RunAs,
    child_environment,
    finish_uncancellable,
    resolve_run_as,
    run,
    spawn,
    stop_unrelated_process,
)
from laterbased.standby import bootstrap, configure, failover, rehearsal, safety, source
from laterbased.standby.layout import Layout, prepare_directories
from laterbased.standby.promote import mark_promoted, register_actions
from laterbased.standby.slot_guard import SlotGuard

logger = logging.getLogger(__name__)

RESTART_BASE_DELAY = 1.0
# A postgres that ran this long before dying is restarted after the base delay again.
RESTART_RESET_AFTER = 120.0
# Consecutive liveness checks without any answer before the postmaster counts as stuck.
STUCK_CHECKS = 3
PING_TIMEOUT = 5
STUCK_QUIT_WAIT = 5.0
LEFTOVER_WAIT = 30.0


def exit_reason(returncode: int) -> tuple[str, str]:
    """(counter label, human description) for an unexpected exit of the postmaster."""
    if returncode < 0:
        name = signal.Signals(-returncode).name if -returncode in signal.valid_signals() else ""
        return "killed", f"killed by signal {-returncode} {name}".rstrip()
    if returncode == 0:
        return "exited", "exited on its own (status 0: stopped by someone else?)"
    return "crash", f"exited with status {returncode}"


class StandbySupervisor:
    def __init__(self, ctx: WorkerContext) -> None:
        self.ctx = ctx
        self.state: StandbyState = ctx.state.standby
        self.config: Config = ctx.config
        self.layout = Layout.from_config(self.config)
        self.run_as: RunAs | None = None
        self.major = ""
        self.bindir = Path()
        self.slot_guard = SlotGuard()
        self._told_other_cluster = False
        self._told_failover_problem: str | None = None
        standby = self.config.standby
        self._starting_endpoint: tuple[int, str] = (standby.port, standby.listen_addresses)

    # --- the worker -----------------------------------------------------------------------

    async def run(self) -> None:
        st = self.state
        st.enabled = True
        st.phase = "waiting"
        try:
            self.run_as = resolve_run_as(self.config.standby.run_as)
            await asyncio.to_thread(
                prepare_directories, self.layout, self.config.state_dir, self.run_as
            )
            await asyncio.to_thread(bootstrap.clean_leftovers, self.layout.data_dir)
            await self._clean_after_killed_rehearsal()
            # Back to the data directory's checks when it turned out to hold another
            # cluster than the accepted primary (accept-primary while it ran).
            while await self._ensure_cluster():
                if not await self._supervise():
                    break
        except RefuseToRun as exc:
            st.phase = "failed"
            st.message = str(exc)
            raise
        finally:
            st.pid = None
            st.port = None
            if st.phase != "failed":
                st.phase = "stopped"

    async def _clean_after_killed_rehearsal(self) -> None:
        """A rehearsal killed mid-way (``promote --rehearse`` got SIGKILL) left its clone
        copying or its copy running: stop them and free the disk now, not at the next
        rehearsal. A failure here is told, but never keeps the standby from running."""
        try:
            await rehearsal.clean_after_killed_rehearsal(self.config.state_dir, self.run_as)
        except (JobFailed, OSError) as exc:
            logger.error("could not clean up after a killed rehearsal: %s", exc)
            self.ctx.state.record_event("error", f"cleaning up after a rehearsal: {exc}")

    # --- getting a data directory -----------------------------------------------------------

    async def _ensure_cluster(self) -> bool:
        """Return True once ``data_dir`` holds a usable cluster: checked, configured, or
        freshly cloned (retried with backoff while the primary is away or the clone fails);
        False when the daemon stops meanwhile."""
        delay = RESTART_BASE_DELAY
        data_dir = self.layout.data_dir
        while True:
            # A reload during the retries (the operator fixed the password or the host)
            # counts from the next attempt on.
            self._take_config(self.ctx.config)
            kind = await asyncio.to_thread(safety.classify, data_dir)
            if kind is safety.DataDirKind.FOREIGN:
                raise RefuseToRun(
                    f"standby data directory {data_dir} is not empty and is not a PostgreSQL "
                    "data directory; refusing to touch it. Point standby.data_dir (PGDATA) at "
                    "an empty or absent directory"
                )
            if kind is safety.DataDirKind.CLUSTER:
                if await self._adopt_cluster():
                    return True
                continue  # moved aside: clone afresh
            try:
                await self._bootstrap_once()
                delay = RESTART_BASE_DELAY
                continue
            except (PgUnavailable, JobFailed, OSError, asyncpg.PostgresError) as exc:
                self.state.phase = "waiting"
                self.state.message = f"bootstrap failed, retrying in {delay:.0f}s: {exc}"
                self.ctx.state.record_event("error", f"standby bootstrap failed: {exc}")
                logger.error("bootstrap failed; retrying in %.0fs: %s", delay, exc)
            if await self._sleep_unless_reloaded(delay):
                return False
            if self.ctx.config is not self.config:
                delay = RESTART_BASE_DELAY  # new settings: start the backoff afresh
            else:
                delay = min(delay * 2, self.config.standby.bootstrap_retry_max)

    async def _sleep_unless_reloaded(self, seconds: float) -> bool:
        """Sleep ``seconds``, cut short by a reload; True when the daemon is stopping."""
        if self.ctx.config is not self.config:
            # The reload came while the attempt that just failed ran (a slow connect to
            # the old host): waiting for the next reload would sleep the whole backoff.
            return self.ctx.stopping.is_set()
        async with asyncio.TaskGroup() as group:
            waiters = {
                group.create_task(self.ctx.wait_reload()),
                group.create_task(self.ctx.stopping.wait()),
            }
            await asyncio.wait(waiters, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
            for waiter in waiters:
                waiter.cancel()
        return self.ctx.stopping.is_set()

    async def _bootstrap_once(self) -> None:
        st = self.state
        st.phase = "waiting"
        st.message = f"connecting to primary {self.config.primary.host}:{self.config.primary.port}"
        facts = await source.inspect_primary(self.config, ensure_slot=True)
        await self._find_binaries(facts.major)
        await source.write_primary_passfile(self.config, self.layout.passfile, self.run_as)
        st.phase = "bootstrapping"
        st.message = "starting base backup"
        self.ctx.state.record_event(
            "info", f"standby bootstrap from {self.config.primary.host} started"
        )
        plan = bootstrap.BootstrapPlan(
            bindir=self.bindir,
            major=self.major,
            data_dir=self.layout.data_dir,
            link=source.primary_link(self.config, self.layout.passfile),
            checkpoint=self.config.standby.checkpoint,
            run_as=self.run_as,
        )
        await bootstrap.bootstrap(plan, st)
        st.message = "bootstrap finished"
        self.ctx.state.record_event("info", "standby bootstrap finished")

    async def _find_binaries(self, major: str) -> None:
        self.major = major
        self.bindir = await asyncio.to_thread(find_bindir, major, self.config.standby.bin_dir)

    async def _adopt_cluster(self) -> bool:
        """Safety checks on an existing cluster. False when it was moved aside."""
        data_dir = self.layout.data_dir
        await asyncio.to_thread(safety.check_ownership, data_dir, self.run_as)
        await self._stop_left_postmaster()
        major = await asyncio.to_thread(safety.cluster_major, data_dir)
        if await asyncio.to_thread(configure.is_promoted, data_dir, major):
            logger.warning(
                "standby data directory %s was promoted: running it as a primary (no "
                "replication, no re-clone). To make it a standby again, move it aside",
                data_dir,
            )
            self.state.role = "primary"
            await self._find_binaries(major)
            return True
        self.state.role = "replica"
        try:
            facts = await source.inspect_primary(self.config, ensure_slot=True)
        except (PgUnavailable, asyncpg.PostgresError) as exc:
            logger.warning(
                "cannot check the primary (%s); starting the existing standby without "
                "checking its system identifier or slot",
                exc,
            )
            facts = None
        if facts is not None:
            mismatch = None
            if facts.major != major:
                mismatch = (
                    f"the standby data directory {data_dir} is PostgreSQL {major} but the "
                    f"primary is PostgreSQL {facts.major} (upgraded?)"
                )
            elif facts.system_identifier is not None:
                ours = await asyncio.to_thread(control_file.system_identifier, data_dir)
                if ours is None:
                    raise RefuseToRun(
                        f"{data_dir}/global/pg_control is unreadable or truncated: damaged "
                        "data directory"
                    )
                if ours != facts.system_identifier:
                    mismatch = (
                        f"the standby data directory {data_dir} belongs to another cluster: "
                        f"system identifier {ours}, primary has {facts.system_identifier}"
                    )
            if mismatch is not None:
                if not self.config.standby.reclone_on_mismatch:
                    raise RefuseToRun(
                        f"{mismatch}. Refusing to start it. Move it aside yourself, or set "
                        "standby.reclone_on_mismatch: true to have it moved aside (never "
                        "deleted) and cloned afresh"
                    )
                aside = await asyncio.to_thread(safety.move_aside, data_dir, "mismatch")
                logger.warning("%s; moved it aside to %s and cloning afresh", mismatch, aside)
                self.ctx.state.record_event("warning", f"{mismatch}; moved aside to {aside}")
                return False
        await self._find_binaries(major)
        await source.write_primary_passfile(self.config, self.layout.passfile, self.run_as)
        link = source.primary_link(self.config, self.layout.passfile)
        await asyncio.to_thread(
            bootstrap.write_primary_link, data_dir, major, link, self.run_as
        )
        return True

    # --- running postgres -----------------------------------------------------------------------

    def _endpoint(self, held: tuple[int, str] | None = None) -> tuple[int, str]:
        """(port, listen_addresses) postgres should run on: the standby's own, or once
        promoted the failover plan's, unless this host cannot listen there right now (then
        the standby's own, with ``failover_problem`` saying why). ``held``: the endpoint of
        the running postgres, whose own sockets do not count as "in use". Blocking (binds)."""
        standby = self.config.standby
        own = (standby.port, standby.listen_addresses)
        wanted = (standby.promoted_port, standby.promoted_listen_addresses)
        if self.state.role != "primary" or wanted == own:
            self.state.failover_problem = None
            return own
        problems = []
        for address in wanted[1].split(","):
            address = {"*": "0.0.0.0", "localhost": "127.0.0.1"}.get(address, address)  # noqa: S104
            if held is not None and held[0] == wanted[0] and (
                address in held[1].split(",") or held[1] == "*"
            ):
                continue  # our running postgres listens there already
            problem = failover.bind_problem(address, wanted[0])
            if problem is not None:
                problems.append(problem)
        if not problems:
            self.state.failover_problem = None
            return wanted
        message = (
            f"cannot move the promoted server to the failover endpoint "
            f"{','.join(standby.failover_address)} port {standby.promoted_port}: "
            f"{'; '.join(problems)}; it keeps listening on {own[1]} port {own[0]}, which no "
            "workstation reaches. Free the port (or fix standby.failover_address) and "
            "restart laterbased"
        )
        self.state.failover_problem = message
        if self._told_failover_problem != message:
            self._told_failover_problem = message
            logger.error("%s", message)
            self.ctx.state.record_event("error", message)
        return held or own

    def _argv(self) -> list[str]:
        data_dir = self.layout.data_dir
        primary_settings: dict[str, str] = {}
        for name in (configure.MAIN_CONF, configure.AUTO_CONF):
            path = data_dir / name
            if path.exists():
                primary_settings.update(configure.parse_settings(path.read_text("utf-8")))
        port, listen_addresses = self._endpoint()
        self._starting_endpoint = (port, listen_addresses)
        overrides = configure.server_overrides(
            self.major,
            primary_settings,
            data_dir=data_dir,
            port=port,
            listen_addresses=listen_addresses,
            socket_dir=self.layout.socket_dir,
        )
        return configure.server_argv(self.bindir / "postgres", data_dir, overrides)

    async def _supervise(self) -> bool:
        """Run postgres, restarting it when it dies; False when the daemon stops, True when
        the data directory must be checked again (it holds another cluster than the
        accepted primary and standby.reclone_on_mismatch allows a fresh clone)."""
        st = self.state
        # The first restart after a healthy run is immediate (a kill -9 costs only crash
        # recovery); only a crash loop backs off: 0, 1, 2, 4 … restart_backoff_max seconds.
        delay = 0.0
        while True:
            started = time.monotonic()
            reason, description = await self._run_once()
            if reason == "reclone":
                return True
            if reason == "endpoint":
                # Not a failure: a promoted server moving to the failover endpoint.
                logger.warning("standby postgres %s", description)
                self.ctx.state.record_event("warning", f"promoted server {description}")
                continue
            ran = time.monotonic() - started
            if ran > RESTART_RESET_AFTER:
                delay = 0.0
            st.restarts[reason] += 1
            st.last_exit = description
            st.phase = "restarting"
            st.message = f"postgres {description}; restarting in {delay:.0f}s"
            self.ctx.state.record_event(
                "warning", f"standby postgres {description}; restart #{sum(st.restarts.values())}"
            )
            logger.warning(
                "standby postgres %s after %.0fs; restarting in %.0fs reason=%s",
                description,
                ran,
                delay,
                reason,
            )
            if await self.ctx.sleep(delay):
                return False
            delay = min(max(delay * 2, RESTART_BASE_DELAY), self.config.standby.restart_backoff_max)

    async def _run_once(self) -> tuple[str, str]:
        """Start postgres, watch it until it must be restarted; (reason, description)."""
        data_dir = self.layout.data_dir
        if self.ctx.config is not self.config:
            # A reload while no postgres ran (restart backoff, or it died at that moment).
            await self._apply_reload(self.ctx.config, None)
        await self._stop_left_postmaster()
        await self._kill_leftovers()
        argv = await asyncio.to_thread(self._argv)
        port, listen_addresses = self._starting_endpoint  # what _argv just used
        self.state.system_identifier = await asyncio.to_thread(
            control_file.system_identifier, data_dir
        )
        self.state.phase = "starting"
        self.state.message = "starting postgres"
        child = await spawn(
            argv,
            env=child_environment({"PGPASSFILE": str(self.layout.passfile)}),
            run_as=self.run_as,
            cwd=data_dir,
            log_name="standby postgres",
        )
        self.state.pid = child.pid
        self.state.port = port
        self.state.listen_addresses = listen_addresses
        self.state.started_at = time.time()
        outcome: tuple[str, str] | None = None
        try:
            outcome = await self._watch(child)
            return outcome
        finally:
            self.state.phase = "stopping"
            timeout = self.config.standby.stop_timeout
            steps: tuple[tuple[signal.Signals, float], ...]
            if outcome is not None and outcome[0] == "stuck":
                # It answers nothing, so it will not run a fast shutdown either.
                steps = ((signal.SIGQUIT, min(timeout, STUCK_QUIT_WAIT)),)
            else:
                steps = ((signal.SIGINT, timeout), (signal.SIGQUIT, timeout))

            async def stop_and_sweep() -> None:
                await child.stop(steps)
                # Backends start sessions of their own: after a postmaster crash they
                # outlive its process group and must be found and killed separately.
                await self._kill_leftovers()

            # One task, awaited to the end even through a second cancellation (the
            # daemon's task group aborting): no backend may outlive the daemon.
            await finish_uncancellable(asyncio.ensure_future(stop_and_sweep()))
            self.state.pid = None
            self.state.port = None
            self.state.listen_addresses = None

    async def _stop_left_postmaster(self) -> None:
        """Stop a postmaster an earlier laterbased left on our data directory (it was
        SIGKILLed, or OOM-killed, and its postgres runs on unsupervised); refuse one that
        is not ours. Stopped, not adopted: its output went to the dead daemon, we cannot
        wait for its exit status, and it runs with that daemon's settings. A fast shutdown
        of a standby loses nothing: replay resumes from the slot."""
        data_dir = self.layout.data_dir
        pid = await asyncio.to_thread(safety.postmaster_to_stop, data_dir, self.run_as)
        if pid is None:
            return
        message = (
            f"a standby postgres (pid {pid}) left running on {data_dir} by an earlier "
            "laterbased (killed without a clean stop?) is ours: stopping it before starting "
            "our own"
        )
        logger.warning("%s", message)
        self.ctx.state.record_event("warning", message)
        self.state.message = f"stopping leftover postgres pid {pid}"
        timeout = self.config.standby.stop_timeout
        stopped = await stop_unrelated_process(
            pid, ((signal.SIGINT, timeout), (signal.SIGQUIT, timeout)), "standby postgres"
        )
        if not stopped:
            raise JobFailed(f"leftover postgres pid {pid} on {data_dir} survives SIGKILL")
        logger.info("leftover standby postgres pid=%s stopped", pid)

    async def _kill_leftovers(self) -> None:
        uid = self.run_as.uid if self.run_as is not None else os.geteuid()
        deadline = time.monotonic() + LEFTOVER_WAIT
        while pids := await asyncio.to_thread(safety.server_leftovers, self.layout.data_dir, uid):
            if time.monotonic() > deadline:
                raise JobFailed(
                    f"postgres processes {pids} in {self.layout.data_dir} survive SIGKILL"
                )
            logger.warning("killing leftover postgres processes pids=%s", pids)
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            await asyncio.sleep(0.1)

    async def _watch(self, child: Child) -> tuple[str, str]:
        interval = max(0.5, min(self.config.monitor.interval, 10.0))
        silent = 0
        async with asyncio.TaskGroup() as group:
            exit_task = group.create_task(child.wait())
            reload_task = group.create_task(self.ctx.wait_reload())
            wake_task = group.create_task(self.state.wake.wait())
            try:
                while True:
                    await asyncio.wait(
                        {exit_task, reload_task, wake_task},
                        # A starting server is asked soon: a promotion waits for it.
                        timeout=min(interval, 0.5) if self.state.phase == "starting" else interval,
                        return_when=asyncio.FIRST_COMPLETED,
                    )
                    if exit_task.done():
                        return exit_reason(exit_task.result())
                    if wake_task.done():
                        self.state.wake.clear()
                        wake_task = group.create_task(self.state.wake.wait())
                        moved = await self._move_to_failover_endpoint()
                        if moved is not None:
                            return "endpoint", moved
                        continue
                    if reload_task.done():
                        await self._apply_reload(reload_task.result(), child)
                        reload_task = group.create_task(self.ctx.wait_reload())
                        continue
                    answer = await self._ping()
                    if answer == 2 and not exit_task.done():
                        silent += 1
                        self.state.message = (
                            f"postgres pid {child.pid} does not answer ({silent}/{STUCK_CHECKS})"
                        )
                        if silent >= STUCK_CHECKS:
                            return "stuck", (
                                f"pid {child.pid} alive but not answering for "
                                f"{silent} checks ({silent * interval:.0f}s)"
                            )
                        continue
                    silent = 0
                    if await self._observe(answer):
                        return "reclone", (
                            f"stopped: its data directory holds cluster "
                            f"{self.state.system_identifier}, not the accepted primary "
                            f"{self.ctx.state.accepted_system_identifier}"
                        )
                    moved = await self._move_to_failover_endpoint()
                    if moved is not None:
                        return "endpoint", moved
            finally:
                exit_task.cancel()
                reload_task.cancel()
                wake_task.cancel()

    async def _move_to_failover_endpoint(self) -> str | None:
        """Once promoted: a description when postgres must restart on the failover
        endpoint (standby.failover_address, failover_port), else None."""
        st = self.state
        if st.role != "primary" or st.port is None or st.listen_addresses is None:
            return None
        held = (st.port, st.listen_addresses)
        wanted = await asyncio.to_thread(self._endpoint, held)
        if wanted == held:
            return None
        return (
            f"restarting on the failover endpoint: listen_addresses {wanted[1]} port "
            f"{wanted[0]} (was {held[1]} port {held[0]})"
        )

    async def _ping(self) -> int:
        """pg_isready on our socket: 0 accepting, 1 rejecting (starting), 2 no answer."""
        result = await run(
            [
                str(self.bindir / "pg_isready"),
                "-q",
                "-h",
                str(self.layout.socket_dir),
                "-p",
                str(self.state.port or self.config.standby.port),
                "-t",
                str(PING_TIMEOUT),
                # A role that exists (it came from the primary): a ping as "root" would
                # leave a FATAL line in the server log at every check.
                "-U",
                self.config.primary.user,
                "-d",
                self.config.primary.database,
            ],
            log_name="pg_isready",
            timeout=PING_TIMEOUT + 5,
        )
        return result.returncode

    async def _observe(self, answer: int) -> bool:
        """Follow what a liveness check showed; True when postgres must stop for a re-clone."""
        st = self.state
        promoted = await asyncio.to_thread(configure.is_promoted, self.layout.data_dir, self.major)
        if promoted and st.role != "primary":
            mark_promoted(self.ctx.state, how="noticed: the standby marker is gone")
        if answer == 1:
            st.message = "postgres is starting (not accepting connections yet)"
            return False
        if answer != 0:
            return False
        if st.role == "replica" and self._follows_another_cluster():
            return self.config.standby.reclone_on_mismatch
        if st.role == "replica":
            # Someone dropped our slot on the primary while we stream: put it back.
            await self.slot_guard.check(self.ctx.state, self.config)
        target = "promoted" if st.role == "primary" else "running"
        if st.phase != target:
            st.phase = target
            st.message = (
                "running as primary (promoted)" if target == "promoted" else "streaming standby"
            )
            logger.info(
                "standby postgres accepting connections pid=%s port=%s role=%s",
                st.pid,
                st.port,
                st.role,
            )
        return False

    def _follows_another_cluster(self) -> bool:
        """The primary now answers as the accepted cluster (accept-primary), and our data
        directory holds another one: it can never stream from it again. Told once."""
        shared = self.ctx.state
        accepted, ours = shared.accepted_system_identifier, self.state.system_identifier
        if accepted is None or ours is None or ours == accepted:
            self._told_other_cluster = False
            return False
        if shared.primary.system_identifier != accepted:
            return False  # the primary is a stranger (or unknown): keep our copy as it is
        if not self._told_other_cluster:
            self._told_other_cluster = True
            if self.config.standby.reclone_on_mismatch:
                message = (
                    f"the standby data directory holds cluster {ours}, not the accepted "
                    f"primary {accepted}: stopping it to move it aside and clone afresh "
                    "(standby.reclone_on_mismatch)"
                )
            else:
                message = (
                    f"the standby data directory holds cluster {ours}, not the accepted "
                    f"primary {accepted}: it cannot follow it. Set "
                    "standby.reclone_on_mismatch: true, or stop laterbased and move "
                    f"{self.layout.data_dir} aside"
                )
            logger.warning("%s", message)
            self.ctx.state.record_event("warning", message)
        return True

    def _take_config(self, new: Config) -> Config:
        """Use ``new`` from now on (logging what only a restart applies); the old one."""
        old = self.config
        if new is old:
            return old
        self.config = new
        for label, before, after in (
            ("standby.data_dir", old.standby_data_dir, new.standby_data_dir),
            ("standby.run_as", old.standby.run_as, new.standby.run_as),
            ("state_dir", old.state_dir, new.state_dir),
        ):
            if before != after:
                logger.warning("reload: %s changed; takes effect after a restart of laterbased",
                               label)
        return old

    async def _apply_reload(self, new: Config, child: Child | None) -> None:
        """Apply a reload to the standby: to the running ``child``, or, when None, to
        the files the next postgres start reads."""
        old = self._take_config(new)
        for label, was, now in (
            ("standby.port", str(old.standby.port), str(new.standby.port)),
            ("standby.listen_addresses", old.standby.listen_addresses,
             new.standby.listen_addresses),
        ):
            if was != now and child is not None:
                logger.warning("reload: %s changed; the standby postgres uses it from its next "
                               "start (restart laterbased to apply it now)", label)
        link_before = (old.primary, old.standby.slot_name, old.standby.application_name)
        link_after = (new.primary, new.standby.slot_name, new.standby.application_name)
        if link_before == link_after:
            return
        if self.state.role == "primary":
            logger.info("reload: primary connection changed, ignored: this server was promoted")
            return
        if new.standby.slot_name != old.standby.slot_name:
            try:
                await source.inspect_primary(new, ensure_slot=True)
            except (PgUnavailable, asyncpg.PostgresError) as exc:
                logger.warning("reload: cannot create slot %s now (%s); the standby will "
                               "retry connecting", new.standby.slot_name, exc)
            # Not dropped for the operator: an abandoned slot keeps WAL on the primary.
            message = (
                f"replication slot {old.standby.slot_name} is no longer used by this standby "
                f"but still holds WAL on the primary: drop it with SELECT "
                f"pg_drop_replication_slot('{old.standby.slot_name}') once nothing needs it"
            )
            logger.warning("reload: %s", message)
            self.ctx.state.record_event("warning", message)
        await source.write_primary_passfile(new, self.layout.passfile, self.run_as)
        link = source.primary_link(new, self.layout.passfile)
        await asyncio.to_thread(
            bootstrap.write_primary_link, self.layout.data_dir, self.major, link, self.run_as
        )
        if child is None:
            logger.info("reload: standby follows %s:%s slot=%s from its next start",
                        new.primary.host, new.primary.port, new.standby.slot_name)
        elif configure.reloads_primary_conninfo(self.major):
            # What pg_reload_conf() does, without needing a superuser login.
            with contextlib.suppress(ProcessLookupError):
                os.kill(child.pid, signal.SIGHUP)
            logger.info("reload: standby now follows %s:%s slot=%s", new.primary.host,
                        new.primary.port, new.standby.slot_name)
            self.ctx.state.record_event("info", "standby primary connection reloaded")
        else:
            logger.warning("reload: PostgreSQL %s applies a new primary connection only after a "
                           "restart; restart laterbased", self.major)


async def run_standby(ctx: WorkerContext) -> None:
    """The ``standby`` worker registered in daemon.configured_workers."""
    await StandbySupervisor(ctx).run()


def offer_actions(state: State) -> None:
    """Before any worker starts: the standby answers ``promote`` (POST /api/promote), and
    a data directory promoted before this start makes the daemon serve the new world from
    its first moment (dumps from it, the old primary "gone (promoted away)"), instead of
    after the supervisor's first look at it."""
    register_actions(state)
    data_dir = Layout.from_config(state.config).data_dir
    try:
        # Two small local files, once, before the event loop has anything else to do.
        major = (data_dir / "PG_VERSION").read_text("utf-8").strip()
    except (OSError, UnicodeDecodeError):
        return
    if configure.is_promoted(data_dir, major):
        state.standby.role = "primary"
