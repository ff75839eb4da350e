"""WAL positions and the lag clock: pure functions, no server."""

from __future__ import annotations

import pytest

from laterbased.monitor.lsn import LagClock, format_lsn, parse_lsn


@pytest.mark.parametrize(
    ("text", "value"),
    [("0/0", 0), ("0/3000060", 0x3000060), ("1/0", 1 << 32), ("A/FF", (10 << 32) | 255)],
)
def test_lsn_round_trips(text: str, value: int) -> None:
    assert parse_lsn(text) == value
    assert format_lsn(value) == text


@pytest.mark.parametrize("bad", ["", "0", "/1", "1/", "x/y", "0/3000060/1"])
def test_bad_lsn_is_rejected(bad: str) -> None:
    with pytest.raises(ValueError):
        parse_lsn(bad)


def test_idle_primary_never_looks_late() -> None:
    clock = LagClock()
    for minute in range(120):  # two idle hours: the primary's WAL does not move
        clock.observe(minute * 60.0, 1000)
    assert clock.lag_seconds(120 * 60.0, replay_lsn=1000) == 0.0


def test_first_write_after_idle_spell_is_not_hours_of_lag() -> None:
    clock = LagClock()
    for minute in range(60):
        clock.observe(minute * 60.0, 1000)
    clock.observe(3600.0, 2000)  # one write after an idle hour, not replayed yet
    assert clock.lag_seconds(3600.0, replay_lsn=1000) == 0.0


def test_stuck_standby_lag_grows_with_the_wall_clock() -> None:
    clock = LagClock()
    clock.observe(0.0, 1000)
    clock.observe(10.0, 2000)  # primary moves on at t=10, standby stays at 1000
    clock.observe(20.0, 3000)
    clock.observe(30.0, 4000)
    assert clock.lag_seconds(30.0, replay_lsn=1000) == 20.0
    assert clock.lag_seconds(30.0, replay_lsn=2500) == 10.0  # primary passed 2500 at t=20
    assert clock.lag_seconds(30.0, replay_lsn=4000) == 0.0


def test_lag_unknown_without_any_primary_position() -> None:
    assert LagClock().lag_seconds(5.0, replay_lsn=0) is None


def test_new_timeline_forgets_old_positions() -> None:
    clock = LagClock()
    clock.observe(0.0, 5000)
    clock.observe(10.0, 100)  # a different primary (re-cloned, promoted elsewhere)
    assert list(clock.samples) == [(10.0, 100)]


def test_history_is_bounded() -> None:
    clock = LagClock(max_samples=10)
    for second in range(100):
        clock.observe(float(second), second)
    assert len(clock.samples) == 10
