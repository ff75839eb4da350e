"""Telling a human about trouble without Prometheus: a webhook and/or a hook command.

The notify worker watches the health verdicts (:func:`health.evaluate`: primary, standby,
replication, slot, ``backup:<db>``, ``upload:<db>``) plus failed job runs, and sends a
message when a verdict changes: a *problem* (a check turned warning/critical, or changed
severity) and a *recovery* (back to ok after a problem was told).

Rules that keep a 3 a.m. phone quiet but honest:

* a new state, problem or recovery, must last ``notify.confirm_after`` before it is told (a
  5-second blip is not news); a failed job run is a fact, told at once;
* per check at most one problem message per ``notify.min_interval`` (plus one escalation to
  a worse severity); a problem held back by that limit is not lost, it is sent when the
  interval is over if it still stands, with the number of changes seen meanwhile;
* a recovery is never held back by the rate limit, so nobody gets up for a problem that has
  already gone away;
* sending never blocks the watcher: messages go through a bounded queue to a sender task;
  a failed send is logged and counted in ``state.notifications_failed``, never fatal.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import urlsplit

import aiohttp

from laterbased import __version__, proc
from laterbased.config import NotifyConfig
from laterbased.core.state import State
from laterbased.health import verdicts as health
from laterbased.health.verdicts import Check, Severity

if TYPE_CHECKING:
    from laterbased.core.context import WorkerContext

logger = logging.getLogger(__name__)

# How often the worker re-evaluates the checks.
POLL_INTERVAL = 5.0
# Messages waiting for the sender; beyond this the watcher drops (and counts) rather than block.
QUEUE_SIZE = 100
# Checks that say nothing a human can act on at 3 a.m.
IGNORED_CHECKS = frozenset({"daemon"})
# Job results that say the job worked (anything else but "failed" says nothing new).
GOOD_RESULTS = frozenset({"success", "unchanged"})

EventKind = Literal["problem", "recovered"]
_RANK: dict[Severity, int] = {"ok": 0, "warning": 1, "critical": 2}


@dataclass(frozen=True)
class Notification:
    """One message about one check, as sent to the webhook and the hook command."""

    event: EventKind
    check: str
    severity: Severity
    previous_severity: Severity
    message: str
    at: float
    host: str
    # Changes of this check that were not told because of the rate limit.
    changes_held: int = 0
    # For a recovery: when the told problem began.
    problem_since: float | None = None

    @property
    def text(self) -> str:
        """One human line, the same for Slack, Discord, ntfy and a pager."""
        if self.event == "recovered":
            lasted = ""
            if self.problem_since is not None:
                lasted = f" after {_duration(self.at - self.problem_since)}"
            return f"[laterbased {self.host}] RECOVERED {self.check}{lasted}: {self.message}"
        held = ""
        if self.changes_held:
            held = f" ({self.changes_held} more changes since the last message)"
        return (
            f"[laterbased {self.host}] {self.severity.upper()} {self.check}: "
            f"{self.message}{held}"
        )

    def payload(self) -> dict[str, Any]:
        """JSON body: ``text`` (Slack, Mattermost, Rocket.Chat), ``content`` (Discord),
        and the structured fields for anything that parses them."""
        return {
            "text": self.text,
            "content": self.text,
            "event": self.event,
            "check": self.check,
            "severity": self.severity,
            "previous_severity": self.previous_severity,
            "message": self.message,
            "host": self.host,
            "time": datetime.fromtimestamp(self.at, UTC).isoformat(timespec="seconds"),
            "changes_held": self.changes_held,
            "source": "laterbased",
            "version": __version__,
        }

    def environment(self) -> dict[str, str]:
        """Variables for the hook command."""
        return {
            "LATERBASED_EVENT": self.event,
            "LATERBASED_CHECK": self.check,
            "LATERBASED_SEVERITY": self.severity,
            "LATERBASED_PREVIOUS_SEVERITY": self.previous_severity,
            "LATERBASED_MESSAGE": self.message,
            "LATERBASED_TEXT": self.text,
            "LATERBASED_HOST": self.host,
            "LATERBASED_TIME": datetime.fromtimestamp(self.at, UTC).isoformat(timespec="seconds"),
        }


def _duration(seconds: float) -> str:
    seconds = max(0, int(seconds))
    if seconds < 120:
        return f"{seconds}s"
    if seconds < 7200:
        return f"{seconds // 60}m"
    return f"{seconds // 3600}h{(seconds % 3600) // 60:02d}m"


@dataclass
class _Track:
    """What we saw of one check and what we last told about it."""

    observed: Severity
    observed_since: float
    message: str
    told: Severity = "ok"
    told_since: float | None = None
    # The rate-limit window: when its first problem message went out, and the worst
    # severity told in it (an escalation to something worse still gets through).
    window_start: float | None = None
    window_worst: Severity = "ok"
    changes_since_sent: int = 0


@dataclass
class Tracker:
    """Pure transition logic: feed it checks and the time, get the messages to send."""

    min_interval: float
    confirm_after: float
    host: str = field(default_factory=socket.gethostname)
    tracks: dict[str, _Track] = field(default_factory=dict)

    def observe(
        self, checks: Iterable[Check], now: float, immediate: Iterable[Check] = ()
    ) -> list[Notification]:
        """Record ``checks`` (confirmed after ``confirm_after``) and ``immediate`` ones
        (facts such as a failed run, confirmed at once); return what must be told now."""
        out: list[Notification] = []
        for check, confirm in _with_confirm(checks, self.confirm_after, immediate):
            if check.name in IGNORED_CHECKS:
                continue
            notification = self._observe_one(check, now, confirm)
            if notification is not None:
                out.append(notification)
        return out

    def _observe_one(self, check: Check, now: float, confirm: float) -> Notification | None:
        track = self.tracks.get(check.name)
        if track is None:
            track = self.tracks[check.name] = _Track(check.severity, now, check.reason)
        elif check.severity != track.observed:
            track.observed = check.severity
            track.observed_since = now
            track.changes_since_sent += 1
        track.message = check.reason
        if track.observed == track.told:
            return None
        if now - track.observed_since < confirm:
            return None
        if track.observed == "ok":
            notification = Notification(
                event="recovered",
                check=check.name,
                severity="ok",
                previous_severity=track.told,
                message=check.reason,
                at=now,
                host=self.host,
                problem_since=track.told_since,
            )
            track.told = "ok"
            track.told_since = now
            track.changes_since_sent = 0
            return notification
        in_window = (
            track.window_start is not None and now - track.window_start < self.min_interval
        )
        if in_window and _RANK[track.observed] <= _RANK[track.window_worst]:
            return None  # held: sent when the interval is over, if it still stands
        held = max(0, track.changes_since_sent - 1)
        notification = Notification(
            event="problem",
            check=check.name,
            severity=track.observed,
            previous_severity=track.told,
            message=check.reason,
            at=now,
            host=self.host,
            changes_held=held,
        )
        if track.told == "ok":
            track.told_since = track.observed_since
        track.told = track.observed
        if in_window:
            track.window_worst = track.observed
        else:
            track.window_start, track.window_worst = now, track.observed
        track.changes_since_sent = 0
        return notification


def _with_confirm(
    checks: Iterable[Check], confirm_after: float, immediate: Iterable[Check]
) -> Iterator[tuple[Check, float]]:
    for check in checks:
        yield check, confirm_after
    for check in immediate:
        yield check, 0.0


def job_checks(state: State) -> list[Check]:
    """Failed job runs are news the moment they happen (upload, prune, optimize); a later
    good run of the job recovers them.

    A failed backup of a database is not repeated here: health's ``backup:<db>`` check
    already reports it (warning, then critical once stale); likewise a failed verify run,
    which health's ``verify`` check reports.
    """
    checks: list[Check] = []
    for name, status in sorted(state.jobs.items()):
        run = status.last_run
        if run is None or run.finished is None:
            continue
        if name in {"dump", "verify"}:
            # Health tells these: backup:<database> (or ``backup`` when no database is known
            # yet) for dump runs, ``verify`` for verify runs. One failure, one message.
            continue
        if run.result == "failed":
            where = f" database={run.database}" if run.database else ""
            detail = run.detail or "no detail"
            checks.append(
                Check(f"job:{name}", "critical", f"{name} run {run.id} failed{where}: {detail}")
            )
        elif run.result in GOOD_RESULTS:
            checks.append(Check(f"job:{name}", "ok", f"{name} run {run.id} {run.result}"))
    return checks


def _redact_url(url: str) -> str:
    """Webhook URLs carry their token in the path (Slack, Discord): log only scheme://host."""
    parts = urlsplit(url)
    host = parts.hostname or "?"
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{host}{port}/…"


class Sender:
    """Delivers notifications to the configured webhook and hook command."""

    def __init__(self, state: State, session: aiohttp.ClientSession) -> None:
        self.state = state
        self.session = session

    @property
    def config(self) -> NotifyConfig:
        return self.state.config.notify

    async def deliver(self, notification: Notification) -> None:
        config = self.config
        if config.webhook_url:
            await self._post(config.webhook_url.reveal(), notification, config.timeout)
        if config.command:
            await self._run_hook(config.command, notification, config.timeout)

    async def _post(self, url: str, notification: Notification, time_limit: float) -> None:
        target = _redact_url(url)
        started = time.monotonic()
        try:
            async with self.session.post(
                url,
                data=json.dumps(notification.payload()),
                headers={"Content-Type": "application/json"},
                timeout=aiohttp.ClientTimeout(total=time_limit),
                allow_redirects=False,
            ) as response:
                status = response.status
                await response.read()
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            reason = type(exc).__name__ if isinstance(exc, TimeoutError) else str(exc)
            self._failed("webhook", notification, f"{target}: {reason.replace(url, target)}")
            return
        if not 200 <= status < 300:
            self._failed("webhook", notification, f"{target}: HTTP {status}")
            return
        self.state.notifications_sent["webhook"] += 1
        logger.info(
            "notification sent channel=webhook target=%s event=%s check=%s seconds=%.2f",
            target,
            notification.event,
            notification.check,
            time.monotonic() - started,
        )

    async def _run_hook(
        self, command: tuple[str, ...], notification: Notification, time_limit: float
    ) -> None:
        try:
            result = await proc.run(
                command,
                env=proc.child_environment(notification.environment()),
                log_name="notify-hook",
                timeout=time_limit,
            )
        except TimeoutError:
            self._failed("command", notification, f"{command[0]}: timed out after {time_limit:g}s")
            return
        except OSError as exc:
            self._failed("command", notification, f"{command[0]}: {exc.strerror or exc}")
            return
        if result.returncode != 0:
            last = result.stderr_tail[-1] if result.stderr_tail else "no output"
            self._failed(
                "command", notification, f"{command[0]}: exit status {result.returncode}: {last}"
            )
            return
        self.state.notifications_sent["command"] += 1
        logger.info(
            "notification sent channel=command program=%s event=%s check=%s",
            command[0],
            notification.event,
            notification.check,
        )

    def _failed(self, channel: str, notification: Notification, reason: str) -> None:
        self.state.notifications_failed[channel] += 1
        logger.warning(
            "notification failed channel=%s event=%s check=%s error=%s",
            channel,
            notification.event,
            notification.check,
            reason,
        )


def is_configured(config: NotifyConfig) -> bool:
    return bool(config.webhook_url or config.command)


async def notify_worker(ctx: WorkerContext) -> None:
    """The daemon worker (registered when a webhook or a command is configured)."""
    await run_notify(ctx.state, ctx.stopping)


async def run_notify(
    state: State,
    stopping: asyncio.Event,
    poll_interval: float = POLL_INTERVAL,
) -> None:
    """Watch the verdicts until ``stopping`` is set; messages go out through a sender task."""
    tracker = Tracker(
        min_interval=state.config.notify.min_interval,
        confirm_after=state.config.notify.confirm_after,
    )
    queue: asyncio.Queue[Notification] = asyncio.Queue(maxsize=QUEUE_SIZE)
    async with aiohttp.ClientSession() as session, asyncio.TaskGroup() as group:
        sender = Sender(state, session)
        send_task = group.create_task(_send_loop(sender, queue), name="notify-sender")
        try:
            while not stopping.is_set():
                config = state.config.notify  # a reload may change targets and limits
                tracker.min_interval = config.min_interval
                tracker.confirm_after = config.confirm_after
                for notification in _evaluate(tracker, state):
                    _enqueue(state, queue, notification)
                # Not asyncio.wait_for: on 3.11 it can swallow the stop's cancellation.
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(poll_interval):
                        await stopping.wait()
        finally:
            send_task.cancel()


def _evaluate(tracker: Tracker, state: State) -> list[Notification]:
    now = time.time()
    try:
        checks = health.evaluate(state, now)
        immediate = job_checks(state)
    except Exception:
        # A bug in a verdict must not silence every other notification.
        logger.exception("notify: evaluating health failed; trying again next poll")
        return []
    return tracker.observe(checks, now, immediate)


def _enqueue(state: State, queue: asyncio.Queue[Notification], item: Notification) -> None:
    logger.info(
        "notify event=%s check=%s severity=%s message=%s",
        item.event,
        item.check,
        item.severity,
        item.message,
    )
    try:
        queue.put_nowait(item)
    except asyncio.QueueFull:
        state.notifications_failed["queue"] += 1
        logger.warning(
            "notification dropped: %s messages already waiting event=%s check=%s",
            QUEUE_SIZE,
            item.event,
            item.check,
        )


async def _send_loop(sender: Sender, queue: asyncio.Queue[Notification]) -> None:
    while True:
        notification = await queue.get()
        try:
            await sender.deliver(notification)
        except Exception:
            # Belt and braces: delivery already turns expected failures into counts.
            sender.state.notifications_failed["error"] += 1
            logger.exception("notification failed check=%s", notification.check)
