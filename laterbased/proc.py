"""Running child processes: one-shot commands and long-running supervised children.

Every child gets its own session (so its whole process group can be signalled), an
environment without our secrets, and its output streamed line by line into the log.
Nothing started here is left running or unreaped, whether the caller finishes, times out
or is cancelled.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import pwd
import re
import select
import signal
import stat
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from subprocess import DEVNULL, PIPE, STDOUT
from types import TracebackType
from typing import IO, Any, Self

from laterbased.errors import RefuseToRun

logger = logging.getLogger(__name__)

STDERR_TAIL_LINES = 20
# How long a process group gets to exit after SIGTERM before it is killed.
DEFAULT_TERM_GRACE = 5.0
# After the leader exits, a descendant may still hold our pipe open; do not wait for it forever.
PIPE_DRAIN_GRACE = 2.0
# How often a child's exit is looked for (see wait_exit): first soon, then every 0.25 s.
EXIT_POLL_FIRST = 0.005
EXIT_POLL_MAX = 0.25
DEFAULT_STOP_STEPS: tuple[tuple[signal.Signals, float], ...] = (
    (signal.SIGTERM, 10.0),
    (signal.SIGKILL, 5.0),
)

_SECRET_NAMES = frozenset({"REPL_PASSWORD", "PGPASSWORD", "PGADMIN_PASSWORD", "PGPASSFILE"})
_SECRET_PATTERNS = (
    re.compile(r".*_PASSWORD(_FILE)?$"),
    re.compile(r"^RCLONE_REMOTE_.*"),
    re.compile(r"^RCLONE_CONFIG_.*"),
    re.compile(r"^LATERBASED_.*"),
    re.compile(r".*_TOKEN(_FILE)?$"),
    re.compile(r".*_SECRET.*"),
    re.compile(r"^NOTIFY_SOCKET$"),
    re.compile(r"^WATCHDOG_.*"),
)


def _is_secret_name(name: str) -> bool:
    upper = name.upper()
    return upper in _SECRET_NAMES or any(p.match(upper) for p in _SECRET_PATTERNS)


def child_environment(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """Return a copy of our environment fit for a child: secrets removed, ``extra`` on top.

    Removed: passwords (``*_PASSWORD``, ``*_PASSWORD_FILE``, ``PGPASSWORD``, ``PGPASSFILE``),
    tokens and secrets, rclone remote definitions, every ``LATERBASED_*`` setting, and the
    systemd notification variables (a child must never report readiness as us).
    Values in ``extra`` are added after filtering, so a caller may pass a secret on purpose.
    """
    env = {k: v for k, v in os.environ.items() if not _is_secret_name(k)}
    if extra:
        env.update(extra)
    return env


@dataclass(frozen=True)
class RunAs:
    """An OS user a child process runs as."""

    name: str
    uid: int
    gid: int
    home: str


def resolve_run_as(name: str | None) -> RunAs | None:
    """Decide which OS user PostgreSQL children run as.

    * not root, no name (or our own name): ``None`` (run as ourselves);
    * root, no name: the ``postgres`` OS user, because PostgreSQL refuses to run as root;
    * a name: that user; unknown users, ``root``, or switching users without being root
      raise :class:`RefuseToRun`.
    """
    is_root = os.geteuid() == 0
    if name is None:
        if not is_root:
            return None
        try:
            entry = pwd.getpwnam("postgres")
        except KeyError:
            raise RefuseToRun(
                "refusing to run PostgreSQL as root: set standby.run_as to an unprivileged "
                "OS user (no 'postgres' user exists on this machine; create one with "
                "'useradd --system --home-dir /var/lib/postgresql postgres')"
            ) from None
        return _run_as_from_pwd(entry)
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        raise RefuseToRun(
            f"standby.run_as: OS user {name!r} does not exist; create it or pick another"
        ) from None
    if entry.pw_uid == 0:
        raise RefuseToRun(
            f"standby.run_as: {name!r} is root; PostgreSQL refuses to run as root, "
            "pick an unprivileged user such as 'postgres'"
        )
    if not is_root:
        if entry.pw_uid == os.geteuid():
            return None
        raise RefuseToRun(
            f"standby.run_as={name!r} needs root to switch users, but laterbased runs as "
            f"uid {os.geteuid()}; run as root or remove standby.run_as"
        )
    return _run_as_from_pwd(entry)


def _run_as_from_pwd(entry: pwd.struct_passwd) -> RunAs:
    return RunAs(name=entry.pw_name, uid=entry.pw_uid, gid=entry.pw_gid, home=entry.pw_dir)


@dataclass(frozen=True)
class CompletedRun:
    """Result of :func:`run`. ``stdout`` is empty unless it was captured."""

    returncode: int
    stdout: bytes
    stderr_tail: list[str]


def pid_alive(pid: int) -> bool:
    """True when a process with ``pid`` exists and is not a zombie (EPERM counts as alive)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # kill(0) succeeds on zombies; an unreaped corpse is not a running server.
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    state = stat.rpartition(")")[2].split()
    return not (state and state[0] in ("Z", "X"))


def read_postmaster_pid(data_dir: Path) -> int | None:
    """PID on the first line of ``data_dir/postmaster.pid``, or None if absent/unreadable."""
    try:
        with open(data_dir / "postmaster.pid", encoding="ascii", errors="replace") as handle:
            first = handle.readline().strip()
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as exc:
        logger.warning("cannot read %s: %s", data_dir / "postmaster.pid", exc)
        return None
    try:
        pid = int(first)
    except ValueError:
        return None
    return pid if pid > 0 else None


def _exec_kwargs(
    env: Mapping[str, str] | None, run_as: RunAs | None, cwd: str | Path | None
) -> dict[str, Any]:
    child_env = dict(env) if env is not None else child_environment()
    kwargs: dict[str, Any] = {"start_new_session": True}
    if run_as is not None:
        child_env.update(HOME=run_as.home, USER=run_as.name, LOGNAME=run_as.name)
        kwargs.update(user=run_as.uid, group=run_as.gid, extra_groups=[])
        if cwd is None:
            # Our own cwd may be unreadable for that user; postgres would complain.
            cwd = run_as.home if os.path.isdir(run_as.home) else "/"
    kwargs["env"] = child_env
    kwargs["cwd"] = cwd
    return kwargs


async def wait_exit(process: asyncio.subprocess.Process) -> int:
    """Return the exit status of ``process`` as soon as it has exited.

    Not ``process.wait()``: on Python 3.11 it returns only once every pipe of the child is
    closed, and a process the child left behind (a postgres backend that outlived its
    postmaster, or one stopped in a debugger) can hold the child's output open for minutes;
    a supervisor would miss the crash and a stop would hang meanwhile. ``returncode`` is set
    as soon as the child watcher reaps the child, so it is polled, briefly at first (most
    children are short), then at most every EXIT_POLL_MAX seconds.
    """
    delay = EXIT_POLL_FIRST
    while (returncode := process.returncode) is None:
        await asyncio.sleep(delay)
        delay = min(delay * 2, EXIT_POLL_MAX)
    return returncode


def _close_pipes(process: asyncio.subprocess.Process) -> None:
    """Close our ends of the exited child's pipes, even if a descendant still holds theirs
    (else the transport, and its file descriptors, live until garbage collection)."""
    transport = getattr(process, "_transport", None)
    if transport is not None and process.returncode is not None:
        transport.close()


def _signal_group(pgid: int, sig: signal.Signals) -> bool:
    """Send ``sig`` to a process group; False when the group no longer exists."""
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        return False
    except PermissionError as exc:
        logger.warning("cannot signal process group %s with %s: %s", pgid, sig.name, exc)
        return False
    return True


async def _stop_group(
    process: asyncio.subprocess.Process, steps: Sequence[tuple[signal.Signals, float]]
) -> int:
    """Signal the group of ``process`` step by step, end with SIGKILL, reap the leader."""
    pgid = process.pid
    for sig, timeout in steps:
        if process.returncode is not None:
            break
        _signal_group(pgid, sig)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await wait_exit(process)
    if process.returncode is None:
        logger.warning("process %s did not exit in time; sending SIGKILL to its group", pgid)
    # Also reaches descendants that outlived the leader in its group.
    _signal_group(pgid, signal.SIGKILL)
    return await wait_exit(process)


async def finish_uncancellable(awaitable: asyncio.Future[Any] | asyncio.Task[Any]) -> None:
    """Await ``awaitable`` to the end even if we are cancelled again meanwhile.

    Cleanup (killing and reaping a child) must complete; a repeated cancellation is
    re-raised once the cleanup is done.
    """
    cancelled = False
    while not awaitable.done():
        try:
            await asyncio.shield(awaitable)
        except asyncio.CancelledError:
            if awaitable.done():
                break
            cancelled = True
    if not awaitable.cancelled() and awaitable.exception() is not None:
        logger.error("cleanup of a child process failed: %s", awaitable.exception())
    if cancelled:
        raise asyncio.CancelledError


# A line ends at \n, \r\n or a lone \r: progress meters (pg_basebackup --progress) rewrite
# one line with \r, even into a pipe.
_LINE_END = re.compile(rb"\r\n|\r|\n")
# Output without any line end is cut into lines of this size instead of growing without bound.
MAX_LINE_BYTES = 1 << 16


def split_lines(buffer: bytes, *, final: bool) -> tuple[list[bytes], bytes]:
    """Split ``buffer`` into complete lines and the unfinished rest.

    Unless ``final``, a trailing \r stays in the rest: it may be the first half of \r\n.
    """
    parts = _LINE_END.split(buffer)
    rest = parts.pop()
    if not final and parts and buffer.endswith(b"\r"):
        rest = parts.pop() + b"\r"
    if final and rest:
        parts.append(rest)
        rest = b""
    while len(rest) > MAX_LINE_BYTES:
        parts.append(rest[:MAX_LINE_BYTES])
        rest = rest[MAX_LINE_BYTES:]
    return parts, rest


# A long-running child's message repeated within this many seconds is logged once, then
# as one "(repeated N times in the last minute)" line a minute while it goes on.
REPEAT_WINDOW = 60.0
# Distinct messages remembered at once; past that, new ones are simply logged.
REPEAT_MEMORY = 1000
# "2026-11-26 13:00:00.123 UTC [4242] FATAL:  could not connect ..." -> the part after the
# prefix (whatever log_line_prefix the primary's configuration carries): severity + text.
_PG_MESSAGE = re.compile(
    r"\b((?:DEBUG[1-5]?|LOG|INFO|NOTICE|WARNING|ERROR|FATAL|PANIC|DETAIL|HINT|CONTEXT|"
    r"STATEMENT|LOCATION):\s.*)$"
)


# PostgreSQL's severities as ours: a standby's FATAL (it cannot reach the primary, its
# replication broke) must not hide among INFO lines. Lower ones keep the child's level.
_PG_LEVELS = {
    "WARNING": logging.WARNING,
    "ERROR": logging.ERROR,
    "FATAL": logging.ERROR,
    "PANIC": logging.CRITICAL,
}
# Lines that belong to the message before them.
_PG_CONTINUATIONS = ("DETAIL", "HINT", "CONTEXT", "STATEMENT", "LOCATION")
# FATALs of an ordinary start or stop: a client turned away while starting up or shutting
# down (our own liveness check among them), sessions ended by a fast shutdown.
_PG_ROUTINE = (
    "the database system is starting up",
    "the database system is shutting down",
    "the database system is not yet accepting connections",
    "terminating connection due to administrator command",
    "terminating walreceiver process due to administrator command",
)


class PostgresSeverity:
    """The log level for each line of a PostgreSQL server's output: its own severity
    mapped to ours (FATAL and ERROR → ERROR, PANIC → CRITICAL, WARNING → WARNING), the
    child's level for the rest; DETAIL/HINT/… and tab-continued lines follow the line they
    belong to."""

    def __init__(self, default: int) -> None:
        self.default = default
        self._current = default

    def level(self, text: str) -> int:
        if text[:1] in ("\t", " "):
            return self._current
        match = _PG_MESSAGE.search(text)
        if match is None:
            self._current = self.default
            return self.default
        message = match.group(1)
        severity = message.split(":", 1)[0]
        if severity in _PG_CONTINUATIONS:
            return self._current
        level = max(self.default, _PG_LEVELS.get(severity, self.default))
        if any(routine in message for routine in _PG_ROUTINE):
            level = self.default
        self._current = level
        return level


@dataclass
class _Repeats:
    since: float
    count: int = 0


class RepeatCollapser:
    """Collapses repeats of the same message from a long-running child.

    The standby's ``FATAL: could not connect to the primary server`` comes every 5 s for as
    long as the primary is down: the first is logged, then one summary line per window
    while it repeats. Messages are compared without their ``log_line_prefix`` (timestamp,
    pid); a continuation line (starting with a tab, as postgres writes them) shares the
    fate of the line it continues.
    """

    def __init__(self, window: float = REPEAT_WINDOW) -> None:
        self.window = window
        self._seen: dict[str, _Repeats] = {}
        self._continuing_suppressed = False

    @staticmethod
    def message_of(line: str) -> str:
        match = _PG_MESSAGE.search(line)
        return match.group(1) if match else line

    def feed(self, line: str, now: float) -> list[str]:
        """The lines to log now for one line of output (summaries due come first)."""
        out = self.expire(now)
        if line[:1] in ("\t", " ") and line.strip():
            if not self._continuing_suppressed:
                out.append(line)
            return out
        message = self.message_of(line)
        seen = self._seen.get(message)
        if seen is not None:
            seen.count += 1
            self._continuing_suppressed = True
            return out
        if len(self._seen) < REPEAT_MEMORY:
            self._seen[message] = _Repeats(since=now)
        self._continuing_suppressed = False
        out.append(line)
        return out

    def expire(self, now: float) -> list[str]:
        """Summaries of windows that ended by ``now``; a message that no longer repeats is
        forgotten (its next occurrence is logged in full)."""
        out: list[str] = []
        for message, seen in list(self._seen.items()):
            if now - seen.since < self.window:
                continue
            if seen.count:
                out.append(self._summary(message, seen.count))
                self._seen[message] = _Repeats(since=now)
            else:
                del self._seen[message]
        return out

    def flush(self) -> list[str]:
        """Summaries of every open window (the child's output ended)."""
        out = [self._summary(m, seen.count) for m, seen in self._seen.items() if seen.count]
        self._seen.clear()
        return out

    def next_deadline(self) -> float | None:
        """When the next window ends, if any repeat waits for its summary."""
        pending = [seen.since for seen in self._seen.values() if seen.count]
        return min(pending) + self.window if pending else None

    def _summary(self, message: str, count: int) -> str:
        span = "minute" if self.window == 60 else f"{self.window:g}s"
        return f"{message} (repeated {count} times in the last {span})"


async def _read_chunk(stream: asyncio.StreamReader, deadline: float | None) -> bytes | None:
    """The next chunk (b"" at the end), or None when ``deadline`` (monotonic) comes first."""
    if deadline is None:
        return await stream.read(1 << 16)
    try:
        # A cancelled read loses nothing: unread data stays in the stream's buffer.
        async with asyncio.timeout(max(0.0, deadline - time.monotonic())):
            return await stream.read(1 << 16)
    except TimeoutError:
        return None


async def _pump_lines(
    stream: asyncio.StreamReader,
    log_name: str,
    level: int,
    tail: deque[str] | None = None,
    on_line: Callable[[str], None] | None = None,
    collapser: RepeatCollapser | None = None,
    severity: PostgresSeverity | None = None,
) -> None:
    """Read ``stream`` to its end line by line: each line goes to ``on_line`` when given,
    else to the log (through ``collapser`` when given) at ``level``, or at the level
    ``severity`` reads in the line; ``tail`` keeps the last ones."""

    def level_of(text: str) -> int:
        return level if severity is None else severity.level(text)

    pending = b""
    final = False
    while not final:
        deadline = collapser.next_deadline() if collapser is not None else None
        chunk = await _read_chunk(stream, deadline)
        if chunk is None:
            assert collapser is not None and deadline is not None  # noqa: S101
            # The timer may fire a hair early by our clock: the window is over all the same.
            for text in collapser.expire(max(time.monotonic(), deadline)):
                logger.log(level_of(text), "%s: %s", log_name, text)
            continue
        final = not chunk
        lines, pending = split_lines(pending + chunk, final=final)
        for raw in lines:
            line = raw.decode("utf-8", errors="replace")
            if tail is not None:
                tail.append(line)
            if on_line is not None:
                on_line(line)
            elif collapser is not None:
                for text in collapser.feed(line, time.monotonic()):
                    logger.log(level_of(text), "%s: %s", log_name, text)
            else:
                logger.log(level_of(line), "%s: %s", log_name, line)
    if collapser is not None:
        for text in collapser.flush():
            logger.log(level_of(text), "%s: %s", log_name, text)


async def _read_all(stream: asyncio.StreamReader, chunks: list[bytes]) -> None:
    while chunk := await stream.read(1 << 16):
        chunks.append(chunk)


async def _drain(pumps: Sequence[asyncio.Task[None]], log_name: str) -> None:
    if not pumps:
        return
    _done, pending = await asyncio.wait(pumps, timeout=PIPE_DRAIN_GRACE)
    if pending:
        logger.warning(
            "%s: exited but a descendant still holds its output open; not waiting for it",
            log_name,
        )


async def _cancel_and_await(tasks: Sequence[asyncio.Task[None]]) -> None:
    for task in tasks:
        task.cancel()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    for result in results:
        if isinstance(result, Exception):
            logger.warning("output pump failed: %s", result)


async def run(
    argv: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    run_as: RunAs | None = None,
    cwd: str | Path | None = None,
    stdin: int | None = None,
    stdout: int | IO[bytes] | None = None,
    capture_stdout: bool = False,
    log_name: str,
    timeout: float | None = None,  # noqa: ASYNC109 - callers' contract; applied via asyncio.timeout
    stderr_level: int = logging.INFO,
    term_grace: float = DEFAULT_TERM_GRACE,
    on_line: Callable[[str], None] | None = None,
) -> CompletedRun:
    """Run ``argv`` (no shell) to completion and return its exit status.

    * ``env`` defaults to :func:`child_environment`; pass secrets only through ``env``.
    * stderr is logged line by line as ``"<log_name>: <line>"`` at ``stderr_level``, or,
      when ``on_line`` is given, each line is handed to it instead (it decides what to log:
      a progress meter would flood the log). Lines end at \n, \r\n or a lone \r. The
      last lines are kept in ``CompletedRun.stderr_tail`` for error messages either way.
    * stdout goes to ``stdout`` when given (a file descriptor or binary file: pg_dump can
      stream straight into a file), is collected when ``capture_stdout``, else is logged.
    * stdin defaults to /dev/null.
    * On timeout or cancellation the whole process group gets SIGTERM, then SIGKILL after
      ``term_grace`` seconds, and is reaped before TimeoutError / CancelledError propagates.

    A non-zero exit status is returned, not raised: the caller knows what failure means.
    """
    if capture_stdout and stdout is not None:
        raise ValueError("pass either stdout or capture_stdout, not both")
    stdout_target: int | IO[bytes] = PIPE if capture_stdout or stdout is None else stdout
    process = await asyncio.create_subprocess_exec(
        *argv,
        stdin=DEVNULL if stdin is None else stdin,
        stdout=stdout_target,
        stderr=PIPE,
        **_exec_kwargs(env, run_as, cwd),
    )
    logger.debug("%s: started pid=%s argv0=%s", log_name, process.pid, argv[0])
    tail: deque[str] = deque(maxlen=STDERR_TAIL_LINES)
    chunks: list[bytes] = []
    pumps: list[asyncio.Task[None]] = []
    try:
        assert process.stderr is not None  # noqa: S101 - guaranteed by stderr=PIPE
        pumps.append(
            asyncio.create_task(
                _pump_lines(process.stderr, log_name, stderr_level, tail, on_line)
            )
        )
        if process.stdout is not None:
            if capture_stdout:
                pumps.append(asyncio.create_task(_read_all(process.stdout, chunks)))
            else:
                pumps.append(
                    asyncio.create_task(_pump_lines(process.stdout, log_name, stderr_level))
                )
        try:
            async with asyncio.timeout(timeout):
                returncode = await wait_exit(process)
                await _drain(pumps, log_name)
        except BaseException as exc:
            if isinstance(exc, TimeoutError):
                logger.warning("%s: timed out after %ss; stopping it", log_name, timeout)
            cleanup = asyncio.ensure_future(
                _stop_group(process, ((signal.SIGTERM, term_grace),))
            )
            await finish_uncancellable(cleanup)
            raise
    finally:
        await finish_uncancellable(asyncio.ensure_future(_cancel_and_await(pumps)))
        _close_pipes(process)
    logger.debug("%s: exited with status %s", log_name, returncode)
    return CompletedRun(returncode=returncode, stdout=b"".join(chunks), stderr_tail=list(tail))


class Child:
    """A long-running child (e.g. the standby postmaster) whose output goes to the log.

    The child owns the task pumping its output; :meth:`wait` and :meth:`stop` await it, so
    no task outlives the child. Use as ``async with await spawn(...) as child:`` to be sure
    it is stopped on the way out.
    """

    def __init__(
        self,
        process: asyncio.subprocess.Process,
        log_name: str,
        *,
        repeat_window: float | None = REPEAT_WINDOW,
    ) -> None:
        self._process = process
        self.log_name = log_name
        # Its last lines, for a supervisor that acts on why the child ended.
        self.tail: deque[str] = deque(maxlen=STDERR_TAIL_LINES)
        assert process.stdout is not None  # noqa: S101 - guaranteed by spawn()
        collapser = RepeatCollapser(repeat_window) if repeat_window else None
        self._pump = asyncio.create_task(
            _pump_lines(
                process.stdout,
                log_name,
                logging.INFO,
                tail=self.tail,
                collapser=collapser,
                severity=PostgresSeverity(logging.INFO),
            )
        )

    @property
    def pid(self) -> int:
        return self._process.pid

    @property
    def returncode(self) -> int | None:
        """Exit status once reaped (negative: killed by that signal), else None."""
        return self._process.returncode

    async def wait(self) -> int:
        """Wait for the child to exit and its output to be logged; return its status."""
        returncode = await wait_exit(self._process)
        await self._finish_pump()
        return returncode

    async def stop(
        self, steps: Sequence[tuple[signal.Signals, float]] = DEFAULT_STOP_STEPS
    ) -> int:
        """Stop the child: send each signal to its process group in turn, waiting up to
        its timeout for the child to exit; finish with SIGKILL to the group. Returns the
        exit status. Safe to call when the child has already exited, and cancellation-safe:
        the child is always reaped.
        """
        if self._process.returncode is None:
            logger.info(
                "%s: stopping pid=%s with %s",
                self.log_name,
                self.pid,
                " then ".join(sig.name for sig, _ in steps) or "SIGKILL",
            )
        await finish_uncancellable(asyncio.ensure_future(_stop_group(self._process, steps)))
        await self._finish_pump()
        returncode = self._process.returncode
        assert returncode is not None  # noqa: S101 - reaped by _stop_group
        return returncode

    async def _finish_pump(self) -> None:
        if not self._pump.done():
            await _drain([self._pump], self.log_name)
        await finish_uncancellable(asyncio.ensure_future(_cancel_and_await([self._pump])))
        _close_pipes(self._process)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.stop()


async def spawn(
    argv: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    run_as: RunAs | None = None,
    cwd: str | Path | None = None,
    log_name: str,
    repeat_window: float | None = REPEAT_WINDOW,
) -> Child:
    """Start a long-running child in its own session; stdout and stderr go to the log.

    A message repeated within ``repeat_window`` seconds is logged once, then summarised
    once per window while it goes on (:class:`RepeatCollapser`); None logs every line.
    """
    process = await asyncio.create_subprocess_exec(
        *argv,
        stdin=DEVNULL,
        stdout=PIPE,
        stderr=STDOUT,
        **_exec_kwargs(env, run_as, cwd),
    )
    logger.info("%s: started pid=%s", log_name, process.pid)
    return Child(process, log_name, repeat_window=repeat_window)


@dataclass(frozen=True)
class ProcessFacts:
    """What /proc says about a process: who runs it, which program, where it works."""

    pid: int
    uids: tuple[int, ...]  # real, effective, saved, file-system
    # The program's path (" (deleted)" removed: the package was upgraded) and the working
    # directory; "" when we may not look (another user's process, and we are not root).
    exe: str
    cwd: str
    argv: tuple[str, ...] = ()  # its command line, as /proc/<pid>/cmdline has it

    @property
    def program(self) -> str:
        return os.path.basename(self.exe)

    def option(self, short: str, long: str) -> str | None:
        """The value of a command-line option given as ``-D X``, ``-DX``, ``--pgdata X`` or
        ``--pgdata=X`` (``short="-D"``, ``long="--pgdata"``), or None."""
        for index, arg in enumerate(self.argv):
            if arg in (short, long):
                return self.argv[index + 1] if index + 1 < len(self.argv) else None
            if arg.startswith(long + "="):
                return arg[len(long) + 1 :]
            if arg.startswith(short) and not arg.startswith("--") and len(arg) > len(short):
                return arg[len(short) :]
        return None


def process_facts(pid: int) -> ProcessFacts | None:
    """The facts of ``pid``, or None when it is gone."""
    base = Path(f"/proc/{pid}")
    try:
        status = (base / "status").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    links: list[str] = []
    for name in ("exe", "cwd"):
        try:
            links.append(os.readlink(base / name))
        except OSError:
            links.append("")
    exe, cwd = links[0].removesuffix(" (deleted)"), links[1]
    uids: tuple[int, ...] = ()
    for line in status.splitlines():
        if line.startswith("Uid:"):
            uids = tuple(int(field) for field in line.split()[1:])
    try:
        raw = (base / "cmdline").read_bytes()
    except OSError:
        raw = b""
    argv = tuple(arg.decode(errors="surrogateescape") for arg in raw.split(b"\0")[:-1])
    return ProcessFacts(pid=pid, uids=uids, exe=exe, cwd=cwd, argv=argv)


async def stop_unrelated_process(
    pid: int, steps: Sequence[tuple[signal.Signals, float]], log_name: str
) -> bool:
    """Stop a process that is not our child (one an earlier, killed daemon left running):
    each signal in turn, waiting up to its timeout for the exit, then SIGKILL.

    Signals go through a pidfd where the kernel has them, so a pid reused meanwhile by
    another program is never hit. We cannot reap it (its parent is init now, which may
    never reap it in a container): its exit is seen through the pidfd, or as the pid
    vanishing or turning zombie. True once it is gone, False if it survived SIGKILL.
    """
    pidfd: int | None = None
    with contextlib.suppress(AttributeError, OSError):
        pidfd = os.pidfd_open(pid)
    if pidfd is None and not pid_alive(pid):
        return True

    def send(sig: signal.Signals) -> None:
        with contextlib.suppress(ProcessLookupError):
            if pidfd is not None:
                signal.pidfd_send_signal(pidfd, sig)
            else:
                os.kill(pid, sig)

    def gone() -> bool:
        if pidfd is None:
            return not pid_alive(pid)
        # A pidfd turns readable when its process exits, whoever reaps it, and never
        # refers to a newcomer with the same pid.
        return bool(select.select([pidfd], [], [], 0)[0])

    exited = asyncio.Event()
    loop = asyncio.get_running_loop()
    if pidfd is not None:
        loop.add_reader(pidfd, exited.set)
    try:
        for sig, timeout in [*steps, (signal.SIGKILL, 5.0)]:
            if gone():
                return True
            logger.info("%s: sending %s to pid=%s", log_name, sig.name, pid)
            send(sig)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    if pidfd is not None:
                        await exited.wait()
                    else:
                        # Not our child and no pidfd: no way to be told, so look.
                        while not gone():  # noqa: ASYNC110
                            await asyncio.sleep(0.1)
        return gone()
    finally:
        if pidfd is not None:
            loop.remove_reader(pidfd)
            os.close(pidfd)


def leftover_pids(
    directory: Path, program: str, uid: int, target: tuple[str, str] | None = None
) -> list[int]:
    """Processes of ``program`` run by ``uid`` working in ``directory`` and, with ``target``
    (an option such as ``("-D", "--pgdata")``), writing into it by that option: what an
    earlier, killed laterbased left running there. Blocking (reads /proc)."""
    root = os.path.realpath(directory)
    found: list[int] = []
    for pid in pids_with_cwd_under(directory):
        facts = process_facts(pid)
        if facts is None or facts.program != program or not facts.uids:
            continue
        if any(other != uid for other in facts.uids):
            continue
        if target is not None:
            value = facts.option(*target)
            where = os.path.realpath(os.path.join(facts.cwd, value)) if value else ""
            if not (where == root or where.startswith(root + os.sep)):
                continue
        found.append(pid)
    return found


async def stop_leftovers(
    directory: Path,
    program: str,
    uid: int,
    steps: Sequence[tuple[signal.Signals, float]],
    log_name: str,
    *,
    target: tuple[str, str] | None = None,
) -> list[int]:
    """Stop the :func:`leftover_pids` of ``program`` in ``directory``; nothing else is
    touched (a process we did not start is never ours to stop). The pids stopped."""
    stopped: list[int] = []
    for pid in await asyncio.to_thread(leftover_pids, directory, program, uid, target):
        logger.warning(
            "%s: stopping %s pid=%s left running in %s by an earlier laterbased",
            log_name,
            program,
            pid,
            directory,
        )
        await stop_unrelated_process(pid, steps, log_name)
        stopped.append(pid)
    return stopped


def pids_with_cwd_under(directory: Path) -> list[int]:
    """PIDs of processes whose working directory is ``directory`` or below it (Linux).

    PostgreSQL servers chdir into their data directory, and each backend starts its own
    session, so this finds a server's leftovers that process-group signals cannot reach.
    """
    target = os.path.realpath(directory)
    found: list[int] = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cwd = os.readlink(entry / "cwd")
        except OSError as exc:
            if exc.errno not in (errno.ENOENT, errno.EACCES, errno.ESRCH, errno.EPERM):
                raise
            continue
        if cwd == target or cwd.startswith(target + os.sep):
            found.append(int(entry.name))
    return found


def _can_traverse(info: os.stat_result, run_as: RunAs) -> bool:
    mode = info.st_mode
    if info.st_uid == run_as.uid:
        return bool(mode & stat.S_IXUSR)
    if info.st_gid == run_as.gid:
        return bool(mode & stat.S_IXGRP)
    return bool(mode & stat.S_IXOTH)


def ensure_reachable(path: Path, run_as: RunAs | None, *, fix_up_to: Path | None = None) -> None:
    """Every directory above ``path`` must let ``run_as`` pass (x bit).

    Directories at or below ``fix_up_to`` (ours, e.g. the state directory) get o+x added
    (traverse, not list); any other blocking directory is refused with the fix to apply.
    """
    if run_as is None:
        return
    for directory in [path, *path.parents]:
        if directory == path and not directory.is_dir():
            continue
        info = directory.stat()
        if _can_traverse(info, run_as):
            continue
        ours = fix_up_to is not None and (directory == fix_up_to or fix_up_to in directory.parents)
        if ours:
            os.chmod(directory, stat.S_IMODE(info.st_mode) | stat.S_IXOTH)
            logger.info("made %s traversable for %s (o+x)", directory, run_as.name)
            continue
        raise RefuseToRun(
            f"{directory} does not let {run_as.name} through, so PostgreSQL (run as that "
            f"user) cannot reach {path}; fix it with: chmod o+x {directory}"
        )
