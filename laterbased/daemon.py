"""The daemon: one process, long-lived workers in a TaskGroup, signals, systemd notify.

Phases, like uvicorn's server: :meth:`Daemon.startup` (bind HTTP, tell systemd we are
ready), :meth:`Daemon.main_loop` (run workers until asked to stop) and
:meth:`Daemon.shutdown` (cancel workers, which stop their children in ``finally``; close
HTTP last so health answers until the end).
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, replace

from laterbased.config import Config, secrets_of
from laterbased.core.context import WorkerContext, WorkerFunction
from laterbased.core.local_token import write_local_token
from laterbased.core.lockfile import HeldLock, lock_state_dir
from laterbased.core.sdnotify import Notifier
from laterbased.core.state import State
from laterbased.errors import ConfigError, LaterbasedError, RefuseToRun
from laterbased.logs import masker
from laterbased.proc import resolve_run_as
from laterbased.web.server import HttpServer, RouteAdder, build_app

logger = logging.getLogger(__name__)

# A worker that crashed is restarted after this delay, doubling up to the cap; a worker that
# ran this long before crashing starts again from the base delay.
RESTART_BASE_DELAY = 1.0
RESTART_MAX_DELAY = 60.0
RESTART_RESET_AFTER = 120.0


# A stop that takes longer than this says, every so often, which worker it still waits for
# and where that worker is (a stop that never ends must explain itself in the log).
SLOW_STOP_REPORT_EVERY = 15.0


def where_it_waits(task: asyncio.Task[object]) -> str:
    """The chain of awaits a suspended task is in, innermost last (file:line function)."""
    places: list[str] = []
    awaited: object = task.get_coro()
    for _ in range(64):  # a chain is short; the bound only guards against a cycle
        if isinstance(awaited, asyncio.Task):
            awaited = awaited.get_coro()
        frame = getattr(awaited, "cr_frame", None) or getattr(awaited, "gi_frame", None)
        if frame is None:
            if awaited is not None and not places:
                places.append(type(awaited).__name__)
            break
        code = frame.f_code
        places.append(f"{os.path.basename(code.co_filename)}:{frame.f_lineno} {code.co_name}")
        awaited = getattr(awaited, "cr_await", None) or getattr(awaited, "gi_yieldfrom", None)
    return " -> ".join(places) or "-"


async def report_slow_stop(tasks: list[asyncio.Task[None]]) -> None:
    waited = 0.0
    while True:
        await asyncio.sleep(SLOW_STOP_REPORT_EVERY)
        waited += SLOW_STOP_REPORT_EVERY
        for task in tasks:
            if not task.done():
                logger.warning(
                    "stopping: still waiting after %.0fs for %s at %s",
                    waited,
                    task.get_name(),
                    where_it_waits(task),
                )


# Re-reads the configuration from wherever it came from (YAML, env file, environment).
ConfigLoader = Callable[[], Config]


@dataclass(frozen=True)
class Worker:
    name: str
    run: WorkerFunction
    # Registers the operator actions this worker answers (POST /api/<action>) in state;
    # called before HTTP starts, so an action is there from the daemon's first answer.
    offer_actions: Callable[[State], None] | None = None


def configured_workers(config: Config) -> list[Worker]:
    """The workers this configuration asks for (each issue's module adds itself here)."""
    workers: list[Worker] = []
    if config.standby.enabled:
        from laterbased.standby.supervisor import offer_actions, run_standby

        workers.append(Worker("standby", run_standby, offer_actions))
    if config.primary.host is not None:
        from laterbased.monitor.worker import run_monitor

        workers.append(Worker("monitor", run_monitor))
    if config.notify.webhook_url or config.notify.command:
        from laterbased.health.notify import notify_worker

        workers.append(Worker("notify", notify_worker))
    if config.backup.enabled:
        from laterbased.backup.runner import backup_worker, offer_actions

        workers.append(Worker("backups", backup_worker, offer_actions))
    if config.pitr.enabled:
        from laterbased.archive.worker import run_archive

        workers.append(Worker("archive", run_archive))
    if config.backup.enabled and config.upload.enabled:
        from laterbased.offsite.upload import check_upload_tools

        workers.append(Worker("upload-check", check_upload_tools))
    return workers


def configured_routes(config: Config) -> list[RouteAdder]:
    """The web part's routes beyond the core ones: monitoring pages and the operator actions
    (POST /api/<action>, answered by whichever worker registered the action in state)."""
    from laterbased.web import add_monitoring_routes
    from laterbased.web.actions import add_action_routes

    return [add_monitoring_routes, add_action_routes]


class Daemon:
    def __init__(
        self,
        config: Config,
        *,
        loader: ConfigLoader | None = None,
        workers: list[Worker] | None = None,
    ) -> None:
        self.state = State(config=config)
        self.loader = loader
        self.workers = configured_workers(config) if workers is None else workers
        self.notifier = Notifier()
        self.stopping = asyncio.Event()
        self.ready = asyncio.Event()  # set once every worker is started and HTTP answers
        self.context = WorkerContext(state=self.state, stopping=self.stopping)
        self.http: HttpServer | None = None
        self.state_lock: HeldLock | None = None
        self.exit_code = 0
        self.fatal: LaterbasedError | None = None
        # Set by the CLI, whose process ends when serve() returns (not by the demo or tests).
        self.process_exits_after = False
        # SIGHUPs queue here from the first moment; the reload loop handles them in order.
        self._reload_requests: asyncio.Queue[None] = asyncio.Queue()
        masker.set_secrets(secrets_of(config))

    # --- phases -------------------------------------------------------------------------

    async def startup(self) -> None:
        config = self.state.config
        os.umask(0o077)  # backups, manifests, passfiles: nobody else may read them
        # First of all: a second daemon on this state_dir stops here (exit 3), before it
        # takes the port or touches the standby that the first one supervises.
        self.state_lock = await asyncio.to_thread(lock_state_dir, config.state_dir)
        for worker in self.workers:
            if worker.offer_actions is not None:
                worker.offer_actions(self.state)
        if config.http.enabled:
            try:
                self.state.local_token = await asyncio.to_thread(
                    write_local_token, config.state_dir, _token_group(config)
                )
            except OSError as exc:
                logger.warning(
                    "cannot write the local token into %s (%s): backup-now and promote on "
                    "this host need http.token",
                    config.state_dir,
                    exc.strerror or exc,
                )
            app = build_app(self.state, configured_routes(config))
            self.http = HttpServer(app, config.http.host, config.http.port)
            await self.http.start()

    async def main_loop(self) -> None:
        if self.stopping.is_set():  # a SIGTERM during start-up: start nothing
            return
        # Cancelled however the group ends (a stop, or an error out of it).
        reporter: asyncio.Task[None] | None = None
        try:
            async with asyncio.TaskGroup() as group:
                tasks = [
                    group.create_task(self._supervise(worker), name=f"worker:{worker.name}")
                    for worker in self.workers
                ]
                tasks.append(group.create_task(self._reload_loop(), name="reload"))
                if self.notifier.watchdog_interval:
                    tasks.append(group.create_task(self._watchdog_loop(), name="watchdog"))
                self.state.ready = True
                self.ready.set()
                # Everything built during start-up lives as long as the daemon: move it out
                # of the collector's sight, so a full collection never walks it again (those
                # walks showed up as 40-50 ms event-loop stalls under /healthz).
                gc.freeze()
                self.notifier.ready(self._status_line())
                logger.info(
                    "laterbased ready workers=%s http=%s",
                    ",".join(w.name for w in self.workers) or "-",
                    f"{self.http.host}:{self.http.port}" if self.http else "off",
                )
                await self.stopping.wait()
                self.notifier.stopping()
                logger.info("stopping: cancelling workers")
                for task in tasks:
                    task.cancel()
                # Outside the group: it must not keep the group (and the daemon) alive.
                reporter = asyncio.create_task(report_slow_stop(tasks), name="slow-stop report")
        finally:
            if reporter is not None:
                reporter.cancel()

    async def shutdown(self) -> None:
        self.state.ready = False
        if self.http is not None:
            await self.http.stop()
        # The code the process really ends with: a refusal raised after this line exits 3.
        code = self.fatal.exit_code if self.fatal is not None else self.exit_code
        logger.info("laterbased stopped exit_code=%s", code)

    async def serve(self) -> int:
        """Run all phases; the return value is the process exit code.

        Signal handlers cover every phase: a SIGTERM while HTTP binds or while shutting
        down, or a SIGHUP before the workers run, is handled, never the default action
        (which would kill the process and leave the standby postgres behind).
        """
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self._on_stop_signal, signum)
        loop.add_signal_handler(signal.SIGHUP, self._on_reload_signal)
        try:
            await self.startup()
            try:
                await self.main_loop()
            finally:
                await self.shutdown()
        finally:
            for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                loop.remove_signal_handler(signum)
                if self.process_exits_after:
                    # The process ends right after this; a late SIGTERM must not turn a
                    # clean exit 0 into "killed by signal 15".
                    signal.signal(signum, signal.SIG_IGN)
            if self.state_lock is not None:
                self.state_lock.release()
        if self.fatal is not None:
            raise self.fatal
        return self.exit_code

    # --- workers ------------------------------------------------------------------------

    async def _supervise(self, worker: Worker) -> None:
        delay = RESTART_BASE_DELAY
        while not self.stopping.is_set():
            started = time.monotonic()
            try:
                try:
                    await worker.run(self.context)
                except* RefuseToRun as group:
                    # A refusal raised inside a worker's own task group arrives wrapped in
                    # an exception group; it is still a refusal, not a crash to retry.
                    raise group.exceptions[0] from None
                return  # a worker that returns has nothing (more) to do
            except RefuseToRun as exc:
                logger.critical("worker %s refuses to continue: %s", worker.name, exc)
                self.state.record_event("critical", f"{worker.name}: {exc}")
                self.fatal = exc
                self.stopping.set()
                return
            except Exception as exc:
                self.state.worker_restarts[worker.name] += 1
                self.state.record_event("error", f"{worker.name} crashed: {exc}")
                if time.monotonic() - started > RESTART_RESET_AFTER:
                    delay = RESTART_BASE_DELAY
                logger.exception(
                    "worker %s crashed; restarting in %.0fs", worker.name, delay
                )
            if await self.context.sleep(delay):
                return
            delay = min(delay * 2, RESTART_MAX_DELAY)

    async def _watchdog_loop(self) -> None:
        interval = self.notifier.watchdog_interval or 1.0
        while True:
            self.notifier.watchdog()
            await asyncio.sleep(interval)

    # --- signals ------------------------------------------------------------------------

    def _on_stop_signal(self, signum: int) -> None:
        if self.stopping.is_set():
            logger.info("second %s: already stopping", signal.Signals(signum).name)
            return
        logger.info("received %s: shutting down", signal.Signals(signum).name)
        self.stopping.set()

    def _on_reload_signal(self) -> None:
        logger.info("received SIGHUP: reloading configuration")
        self._reload_requests.put_nowait(None)

    async def _reload_loop(self) -> None:
        while True:
            await self._reload_requests.get()
            self.reload()

    def reload(self) -> bool:
        """Re-read the configuration; keep the old one when the new one is invalid."""
        self.notifier.reloading()
        if self.loader is None:
            logger.warning("reload: no configuration source to re-read")
            self.notifier.ready(self._status_line())
            return False
        try:
            new = self.loader()
        except ConfigError as exc:
            for problem in exc.problems:
                logger.error("reload rejected: %s", problem)
            logger.error("reload rejected: keeping the previous configuration")
            self.state.record_event("error", "configuration reload rejected")
            self.notifier.ready(self._status_line())
            return False
        old = self.state.config
        if old.http.token != new.http.token:
            # web/actions.py reads the token of the current configuration at each request.
            logger.info("reload: http.token changed; applied now (the old token is refused)")
        for label, before, after in (
            ("http", replace(old.http, token=None), replace(new.http, token=None)),
            ("standby.enabled", old.standby.enabled, new.standby.enabled),
            ("backup.enabled", old.backup.enabled, new.backup.enabled),
            ("state_dir", old.state_dir, new.state_dir),
        ):
            if before != after:
                logger.warning("reload: %s changed; this takes effect after a restart", label)
        masker.set_secrets(secrets_of(old) + secrets_of(new))
        self.state.config = new
        self.context._announce_reload()
        logger.info("reload applied")
        self.notifier.ready(self._status_line())
        return True

    def _status_line(self) -> str:
        return "running" if self.state.ready else "starting"


def _token_group(config: Config) -> int | None:
    """The group that may read the local token besides its owner: the run-as user's, when
    the daemon runs as root (so ``sudo -u postgres laterbased backup-now`` works too)."""
    if os.geteuid() != 0:
        return None
    try:
        run_as = resolve_run_as(config.standby.run_as)
    except RefuseToRun:
        return None  # no postgres user and none configured: root alone
    return run_as.gid if run_as is not None else None


def use_pidfd_child_watcher() -> bool:
    """On Python 3.11, wait for children with pidfds instead of a thread per child.

    The default watcher starts a thread for every child process (a pg_isready every
    monitor interval, each rclone call), and those thread starts showed up as event-loop
    stalls. Python 3.12 does this by itself (and deprecates the call).
    """
    if sys.version_info >= (3, 12) or not hasattr(os, "pidfd_open"):
        return False
    try:
        os.close(os.pidfd_open(os.getpid()))
    except OSError:  # kernel < 5.3 or a seccomp policy without pidfd_open
        return False
    watcher = asyncio.PidfdChildWatcher()
    watcher.attach_loop(asyncio.get_running_loop())  # set_child_watcher does not attach it
    asyncio.get_event_loop_policy().set_child_watcher(watcher)
    return True


async def run_daemon(config: Config, loader: ConfigLoader | None = None) -> int:
    use_pidfd_child_watcher()
    daemon = Daemon(config, loader=loader)
    daemon.process_exits_after = True
    return await daemon.serve()
