"""The ticker: run one job on a cron schedule, forever, without drift and without overlap.

The next deadline is always computed from the wall clock with ``next_fire`` (never by adding a
period to the last deadline), and the ticker sleeps in short chunks so that a suspended machine
or a clock step is noticed within ``max_sleep`` seconds.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import NoReturn, Protocol

from laterbased.schedule.cron import Zone, next_fire, period_of, validate_expression

logger = logging.getLogger(__name__)


class Clock(Protocol):
    """Where the ticker gets the time from; tests inject a fake one."""

    def now(self) -> datetime:
        """The current wall-clock time, aware, in UTC."""
        ...

    async def sleep(self, seconds: float) -> None:
        """Wait about ``seconds``; the ticker re-reads ``now()`` afterwards."""
        ...


class SystemClock:
    """The real clock: ``datetime.now(UTC)`` and ``asyncio.sleep``."""

    def now(self) -> datetime:
        return datetime.now(UTC)

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


SYSTEM_CLOCK = SystemClock()


async def _run_fire(
    name: str, fire: Callable[[datetime], Awaitable[None]], scheduled: datetime
) -> None:
    try:
        await fire(scheduled)
    except Exception:
        # A failing run must not stop the schedule; CancelledError is a BaseException and
        # passes through untouched.
        logger.exception("schedule run failed name=%s scheduled=%s", name, scheduled.isoformat())


async def run_schedule(
    name: str,
    expression: str,
    tz: Zone,
    fire: Callable[[datetime], Awaitable[None]],
    *,
    clock: Clock = SYSTEM_CLOCK,
    on_skip: Callable[[datetime], None] | None = None,
    max_sleep: float = 30.0,
    catch_up_from: datetime | None = None,
) -> NoReturn:
    """Call ``fire(scheduled_time)`` at every fire time of ``expression`` in ``tz``; never returns.

    Promises:

    * ``fire`` gets the scheduled time (aware, in ``tz``), not the moment it was woken.
    * A run never overlaps the previous run of the same schedule: if it is still going at the
      next deadline, that deadline is skipped, logged and reported to ``on_skip``.
    * The wall clock is re-read at least every ``max_sleep`` seconds.  A jump forward over
      many deadlines causes one run, not a burst; a jump backward never repeats a scheduled
      time that already fired.
    * ``catch_up_from`` (for example the newest backup's time): if at least one period of the
      schedule has passed since it, run once immediately with ``scheduled_time = now``.
    * Exceptions from ``fire`` are logged with their traceback and the schedule continues.
    * Cancelling this coroutine cancels and awaits a run in flight, then re-raises.

    Raises ``ValueError`` at once for an invalid expression or a naive ``catch_up_from``.
    """
    message = validate_expression(expression)
    if message is not None:
        raise ValueError(message)
    if max_sleep <= 0:
        raise ValueError(f"max_sleep must be positive, got {max_sleep}")
    if catch_up_from is not None and catch_up_from.utcoffset() is None:
        raise ValueError(f"catch_up_from must be time-zone aware, got {catch_up_from!r}")

    async with asyncio.TaskGroup() as runs:
        in_flight: asyncio.Task[None] | None = None
        now = clock.now()
        if catch_up_from is not None and now - catch_up_from >= period_of(expression, tz, now):
            logger.info(
                "schedule catch-up name=%s last=%s now=%s",
                name,
                catch_up_from.isoformat(),
                now.isoformat(),
            )
            in_flight = runs.create_task(_run_fire(name, fire, now.astimezone(tz)))

        # The newest scheduled time that already fired (or was skipped); never fire at or
        # before it again, whatever the clock does.
        last_scheduled: datetime | None = None
        deadline = next_fire(expression, now, tz).astimezone(UTC)
        logger.info(
            "schedule started name=%s expression=%s tz=%s next=%s",
            name,
            expression,
            tz,
            deadline.astimezone(tz).isoformat(),
        )
        while True:
            now = clock.now()
            if now < deadline:
                # Recomputed from the wall clock every wake-up, so a clock stepped backward
                # before anything fired (NTP correcting a bad boot clock) is followed too.
                reference = now if last_scheduled is None else max(now, last_scheduled)
                deadline = next_fire(expression, reference, tz).astimezone(UTC)
                await clock.sleep(min(max_sleep, (deadline - now).total_seconds()))
                continue

            scheduled = deadline.astimezone(tz)
            late_by = now - deadline
            if late_by > period_of(expression, tz, deadline):
                logger.warning(
                    "schedule late name=%s scheduled=%s late_by=%s (missed fires are dropped)",
                    name,
                    scheduled.isoformat(),
                    late_by,
                )
            if in_flight is not None and not in_flight.done():
                logger.warning(
                    "schedule skipped name=%s scheduled=%s reason=previous run still going",
                    name,
                    scheduled.isoformat(),
                )
                if on_skip is not None:
                    try:
                        on_skip(scheduled)
                    except Exception:
                        logger.exception("schedule on_skip failed name=%s", name)
            else:
                in_flight = runs.create_task(_run_fire(name, fire, scheduled))
            last_scheduled = deadline
            deadline = next_fire(expression, max(now, deadline), tz).astimezone(UTC)
