"""The ticker, driven by a deterministic fake clock (and once by the real one)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from laterbased.schedule.ticker import SystemClock, run_schedule

START = datetime(2026, 1, 15, 0, 0, 30, tzinfo=UTC)
LONDON = ZoneInfo("Europe/London")


class FakeClock:
    """Time moves only when the ticker sleeps; it stops ("parks") at ``stop_at``.

    ``sleep`` yields to the loop (so runs started by the ticker begin at the current fake
    time) and then advances the fake time by exactly the requested amount.  Tests move time
    with ``advance_to`` and step the clock with ``jump`` as a suspended laptop or NTP would.
    """

    def __init__(self, start: datetime) -> None:
        self.current = start
        self.stop_at = start
        self.sleeps: list[float] = []
        self._parked = asyncio.Event()
        self._resume = asyncio.Event()

    def now(self) -> datetime:
        return self.current

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        await asyncio.sleep(0)  # runs started at this instant begin before time moves on
        while self.current >= self.stop_at:
            resume = self._resume
            self._parked.set()
            await resume.wait()
        self.current += timedelta(seconds=seconds)

    async def advance_to(self, stop_at: datetime) -> None:
        """Let the ticker run until the fake time reaches ``stop_at`` and it sleeps again."""
        self.stop_at = stop_at
        self._parked = asyncio.Event()
        resume, self._resume = self._resume, asyncio.Event()
        resume.set()
        await asyncio.wait_for(self._parked.wait(), timeout=5)
        for _ in range(3):  # let runs started just before parking get going
            await asyncio.sleep(0)

    def jump(self, delta: timedelta) -> None:
        self.current += delta


class Recorder:
    """A ``fire`` callback that records (scheduled, clock time at start) and can be held."""

    def __init__(self, clock: FakeClock | SystemClock) -> None:
        self.clock = clock
        self.fires: list[tuple[datetime, datetime]] = []
        self.hold: asyncio.Event | None = None
        self.fail_first = False

    @property
    def scheduled(self) -> list[datetime]:
        return [scheduled.astimezone(UTC) for scheduled, _ in self.fires]

    async def __call__(self, scheduled: datetime) -> None:
        self.fires.append((scheduled, self.clock.now()))
        if self.fail_first and len(self.fires) == 1:
            raise RuntimeError("dump exploded")
        if self.hold is not None:
            await self.hold.wait()


@asynccontextmanager
async def running(
    clock: FakeClock,
    fire: Recorder,
    expression: str = "0 * * * *",
    *,
    on_skip: Callable[[datetime], None] | None = None,
    catch_up_from: datetime | None = None,
) -> AsyncIterator[asyncio.Task[None]]:
    task: asyncio.Task[None] = asyncio.create_task(
        run_schedule(
            "test",
            expression,
            UTC,
            fire,
            clock=clock,
            on_skip=on_skip,
            max_sleep=30.0,
            catch_up_from=catch_up_from,
        )
    )
    try:
        yield task
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


def hour(h: int, minute: int = 0) -> datetime:
    return datetime(2026, 1, 15, tzinfo=UTC) + timedelta(hours=h, minutes=minute)


async def test_fires_once_at_each_deadline_exactly_on_time() -> None:
    clock = FakeClock(START)
    fire = Recorder(clock)
    async with running(clock, fire):
        await clock.advance_to(hour(3, 30))
    assert fire.scheduled == [hour(1), hour(2), hour(3)]
    # No drift: each run starts at the clock time it was scheduled for.
    assert all(started == scheduled for scheduled, started in fire.fires)
    assert max(clock.sleeps) <= 30.0


async def test_scheduled_time_is_given_in_the_schedule_zone() -> None:
    clock = FakeClock(START)
    fire = Recorder(clock)
    task = asyncio.create_task(run_schedule("t", "0 * * * *", LONDON, fire, clock=clock))
    await clock.advance_to(hour(1, 30))
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert [scheduled.tzinfo for scheduled, _ in fire.fires] == [LONDON]


async def test_long_running_fire_skips_the_next_deadline_and_counts_it(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = FakeClock(START)
    fire = Recorder(clock)
    fire.hold = asyncio.Event()
    skipped: list[datetime] = []
    caplog.set_level(logging.INFO, logger="laterbased.schedule.ticker")
    async with running(clock, fire, on_skip=skipped.append):
        await clock.advance_to(hour(2, 30))
        assert fire.scheduled == [hour(1)]
        assert [moment.astimezone(UTC) for moment in skipped] == [hour(2)]
        fire.hold.set()
        await clock.advance_to(hour(3, 30))
    assert fire.scheduled == [hour(1), hour(3)]
    assert len(skipped) == 1
    assert "reason=previous run still going" in caplog.text


async def test_clock_jump_forward_over_many_periods_fires_once() -> None:
    clock = FakeClock(START)
    fire = Recorder(clock)
    skipped: list[datetime] = []
    async with running(clock, fire, on_skip=skipped.append):
        await clock.advance_to(hour(1, 30))
        clock.jump(timedelta(hours=10))
        await clock.advance_to(hour(11, 45))
        assert fire.scheduled == [hour(1), hour(2)]
        await clock.advance_to(hour(12, 30))
    assert fire.scheduled == [hour(1), hour(2), hour(12)]
    # The missed deadlines are dropped quietly, not replayed as a burst of skips.
    assert skipped == []


async def test_clock_jump_backward_does_not_repeat_fired_times() -> None:
    clock = FakeClock(START)
    fire = Recorder(clock)
    skipped: list[datetime] = []
    async with running(clock, fire, on_skip=skipped.append):
        await clock.advance_to(hour(2, 30))
        clock.jump(timedelta(hours=-2))
        await clock.advance_to(hour(2, 45))
        assert fire.scheduled == [hour(1), hour(2)]
        await clock.advance_to(hour(3, 30))
    assert fire.scheduled == [hour(1), hour(2), hour(3)]
    assert skipped == []


async def test_clock_jump_backward_before_first_fire_follows_the_new_time() -> None:
    clock = FakeClock(hour(5, 30))
    fire = Recorder(clock)
    async with running(clock, fire):
        await clock.advance_to(hour(5, 40))
        clock.jump(timedelta(hours=-5))  # a bad boot clock corrected by NTP
        await clock.advance_to(hour(1, 30))
    assert fire.scheduled == [hour(1)]


@pytest.mark.parametrize(
    ("newest_backup", "catches_up"),
    [
        (hour(-27), True),  # yesterday's run and today's missed
        (hour(-24) + timedelta(minutes=1), False),  # under one period ago
        (hour(0), False),
        (None, False),
    ],
)
async def test_catch_up_runs_once_at_start_only_when_a_period_was_missed(
    newest_backup: datetime | None, catches_up: bool
) -> None:
    clock = FakeClock(START)
    fire = Recorder(clock)
    async with running(clock, fire, "@daily", catch_up_from=newest_backup):
        await clock.advance_to(hour(1))
    assert fire.scheduled == ([START] if catches_up else [])


async def test_catch_up_counts_as_a_run_for_overlap() -> None:
    clock = FakeClock(datetime(2026, 1, 15, 0, 59, 50, tzinfo=UTC))
    fire = Recorder(clock)
    fire.hold = asyncio.Event()
    skipped: list[datetime] = []
    async with running(clock, fire, catch_up_from=hour(-5), on_skip=skipped.append):
        await clock.advance_to(hour(1, 30))
    assert fire.scheduled == [datetime(2026, 1, 15, 0, 59, 50, tzinfo=UTC)]
    assert [moment.astimezone(UTC) for moment in skipped] == [hour(1)]


async def test_failing_fire_is_logged_with_traceback_and_schedule_continues(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = FakeClock(START)
    fire = Recorder(clock)
    fire.fail_first = True
    caplog.set_level(logging.ERROR, logger="laterbased.schedule.ticker")
    async with running(clock, fire):
        await clock.advance_to(hour(2, 30))
    assert fire.scheduled == [hour(1), hour(2)]
    failures = [record for record in caplog.records if "schedule run failed" in record.message]
    assert len(failures) == 1
    assert failures[0].exc_info is not None
    assert "dump exploded" in caplog.text


async def test_cancelling_the_schedule_cancels_the_run_in_flight_and_leaves_no_task() -> None:
    before = asyncio.all_tasks()
    clock = FakeClock(START)
    started = asyncio.Event()
    finished: list[str] = []
    fire_tasks: list[asyncio.Task[object]] = []

    async def slow_fire(scheduled: datetime) -> None:
        current = asyncio.current_task()
        assert current is not None
        fire_tasks.append(current)
        started.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            finished.append("cancelled")
            raise

    task = asyncio.create_task(run_schedule("t", "0 * * * *", UTC, slow_fire, clock=clock))
    await clock.advance_to(hour(1, 30))
    await asyncio.wait_for(started.wait(), timeout=5)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert finished == ["cancelled"]
    assert fire_tasks[0].done()
    leftover = asyncio.all_tasks() - before - {asyncio.current_task()}
    assert not leftover


async def test_invalid_expression_is_refused_before_anything_runs() -> None:
    fire = Recorder(FakeClock(START))
    with pytest.raises(ValueError, match="minute must be 0-59"):
        await run_schedule("t", "61 * * * *", UTC, fire, clock=FakeClock(START))
    assert fire.fires == []


async def test_start_is_logged_with_the_next_fire_time(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="laterbased.schedule.ticker")
    clock = FakeClock(START)
    async with running(clock, Recorder(clock), "@daily"):
        await clock.advance_to(hour(0, 1))
    assert (
        "schedule started name=test expression=@daily tz=UTC next=2026-01-16T00:00:00+00:00"
        in caplog.text
    )


async def test_real_clock_every_second_fires_on_whole_seconds() -> None:
    clock = SystemClock()
    fire = Recorder(clock)
    two_fires = asyncio.Event()

    async def fire_and_count(scheduled: datetime) -> None:
        await fire(scheduled)
        if len(fire.fires) >= 2:
            two_fires.set()

    task = asyncio.create_task(
        run_schedule("every-second", "* * * * * *", UTC, fire_and_count, max_sleep=0.5)
    )
    try:
        await asyncio.wait_for(two_fires.wait(), timeout=2.8)
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    first, second = fire.fires[0][0], fire.fires[1][0]
    assert first.microsecond == 0
    assert second - first == timedelta(seconds=1)
    for scheduled, started in fire.fires:
        assert timedelta(0) <= started - scheduled < timedelta(seconds=1)
