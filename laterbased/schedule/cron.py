"""Pure cron arithmetic: when does a schedule fire next, and how long is one period.

Expressions are evaluated in the *wall-clock* time of the schedule's time zone, as classic
cron does, with these rules for daylight-saving changes (croniter's own time-zone mode fires a
fixed-time job twice on the fall-back night, so the zone handling here is our own; croniter is
only asked about naive wall-clock times):

* Spring forward (a wall-clock hour is skipped): every wall time that falls in the gap maps to
  the first real instant after the gap, so a job scheduled in the missing hour runs once, right
  after the change, and is never silently lost.  ``0 * * * *`` therefore still fires once per
  real hour (23 fires on a 23-hour day) and ``30 1 * * *`` fires at 02:00 BST in London.
* Fall back (a wall-clock hour happens twice): a wall time in the repeated hour fires on its
  first occurrence only, unless the hour field matches every hour (``*``, ``0-23``, ...), in
  which case it fires on both.  A daily ``30 1 * * *`` runs once; ``0 * * * *`` fires at each
  real hour (25 fires on a 25-hour day); ``*/15 * * * *`` keeps its 15-minute rhythm.  This is
  the behaviour of Vixie cron for wildcard versus fixed-time jobs.
"""

from __future__ import annotations

import functools
import re
from datetime import UTC, datetime, timedelta, timezone
from zoneinfo import ZoneInfo

from croniter import CroniterBadCronError, CroniterBadDateError, CroniterError, croniter

NICKNAMES = frozenset(
    {"@hourly", "@daily", "@midnight", "@weekly", "@monthly", "@yearly", "@annually"}
)

# Field order of croniter: the optional seconds field comes LAST (sixth), not first as in
# Quartz or Spring.
_FIELDS: tuple[tuple[str, str], ...] = (
    ("minute", "0-59"),
    ("hour", "0-23"),
    ("day of month", "1-31 or L"),
    ("month", "1-12 or jan-dec"),
    ("day of week", "0-7 or sun-sat"),
    ("second", "0-59"),
)
_RANDOM_OR_HASHED = re.compile(r"^[rRhH]")

Zone = ZoneInfo | timezone


@functools.lru_cache(maxsize=256)
def validate_expression(expression: str) -> str | None:
    """Return ``None`` if ``expression`` is a schedule we can run, else a message for a human.

    Accepted: standard 5-field cron (``minute hour day-of-month month day-of-week``, with
    ranges, steps, lists, names, ``L`` and ``#``), the nicknames ``@hourly @daily @midnight
    @weekly @monthly @yearly @annually``, and a 6-field form whose sixth (last) field is
    **seconds**, as croniter defines it: ``"* * * * * */5"`` fires every five seconds.
    Rejected: ``@reboot`` (the daemon has no notion of boot), croniter's 7-field year form,
    random (``R``) and hashed (``H``) fields, and expressions that can never fire
    (``0 0 31 2 *``).
    """
    text = expression.strip()
    if not text:
        return "empty cron expression"
    quoted = f"'{text}'"
    if text.startswith("@"):
        if text.lower() == "@reboot":
            return f"{quoted}: @reboot is not supported (use catch-up at start instead)"
        if text.lower() not in NICKNAMES:
            return f"{quoted}: unknown nickname (use one of {', '.join(sorted(NICKNAMES))})"
        return None
    fields = text.split()
    if len(fields) not in (5, 6):
        return (
            f"{quoted}: expected 5 fields (minute hour day-of-month month day-of-week) "
            f"or 6 with seconds last, got {len(fields)}"
        )
    for index, field in enumerate(fields):
        name, allowed = _FIELDS[index]
        if any(_RANDOM_OR_HASHED.match(part) for part in field.split(",")):
            return f"{quoted}: {name} uses random/hashed values, which are not supported"
        # Check one field at a time so the message can name the field that is wrong.
        probe = ["*"] * len(fields)
        probe[index] = field
        if not croniter.is_valid(" ".join(probe)):
            return f"{quoted}: {name} must be {allowed}, got {field!r}"
    if not croniter.is_valid(text):
        return f"{quoted}: not a valid cron expression"
    try:
        croniter(text, datetime(2000, 1, 1)).get_next(datetime)
    except CroniterBadDateError:
        return f"{quoted}: never fires (no such date)"
    except CroniterError as error:
        return f"{quoted}: {error}"
    return None


def _checked(expression: str) -> str:
    message = validate_expression(expression)
    if message is not None:
        raise ValueError(message)
    return expression.strip()


def _require_aware(moment: datetime, what: str) -> None:
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ValueError(f"{what} must be a time-zone aware datetime, got {moment!r}")


def _iterate_walls(expression: str, start: datetime) -> croniter:
    """A croniter over naive wall-clock times strictly after naive ``start``."""
    try:
        return croniter(expression, start)
    except CroniterBadCronError as error:  # validated already; kept for a clear message
        raise ValueError(f"'{expression}': {error}") from error


def _next_wall(walls: croniter) -> datetime:
    try:
        result: datetime = walls.get_next(datetime)
    except CroniterBadDateError as error:
        raise ValueError(f"no fire time found: {error}") from error
    return result


@functools.lru_cache(maxsize=256)
def _hour_is_wildcard(expression: str) -> bool:
    hours: list[int | str] = list(croniter(expression).expanded[1])
    return hours == ["*"] or set(hours) == set(range(24))


def _offset_at(timestamp: int, tz: Zone) -> timedelta | None:
    return datetime.fromtimestamp(timestamp, UTC).astimezone(tz).utcoffset()


def _transition(early: datetime, late: datetime, tz: Zone) -> datetime:
    """First instant in ``(early, late]`` whose UTC offset differs from the one at ``early``.

    Zone transitions happen on whole seconds, so a binary search over seconds is exact.
    """
    low = int(early.timestamp())
    high = int(late.timestamp())
    if late.timestamp() > high:
        high += 1
    before = _offset_at(low, tz)
    while high - low > 1:
        middle = (low + high) // 2
        if _offset_at(middle, tz) == before:
            low = middle
        else:
            high = middle
    return datetime.fromtimestamp(high, UTC)


def _instants(wall: datetime, tz: Zone) -> tuple[datetime, datetime | None]:
    """Map a naive wall time to (its first real instant, its repeat in a fall-back or None).

    Both are in UTC: aware datetimes sharing one ``tzinfo`` compare by wall time and ignore
    ``fold``, which is exactly wrong around a fall-back.  A wall time inside a spring-forward
    gap maps to the instant the gap ends.
    """
    first = wall.replace(tzinfo=tz, fold=0).astimezone(UTC)
    second = wall.replace(tzinfo=tz, fold=1).astimezone(UTC)
    if first == second:
        return first, None
    early, late = sorted((first, second))
    if first.astimezone(tz).replace(tzinfo=None) == wall:
        # Ambiguous: the wall time exists twice; fold=0 is the earlier occurrence.
        return early, late
    return _transition(early, late, tz), None


def _repeated_window(moment: datetime, tz: Zone) -> tuple[datetime, datetime] | None:
    """For an instant in a fall-back repeated hour, that hour as naive wall times [start, end)."""
    local = moment.astimezone(tz)
    wall = local.replace(tzinfo=None)
    first, repeat = _instants(wall, tz)
    if repeat is None:
        return None
    change = _transition(first, repeat, tz)
    start = change.astimezone(tz).replace(tzinfo=None)
    return start, start + (repeat - first)


def next_fire(expression: str, after: datetime, tz: Zone) -> datetime:
    """The first fire time strictly after ``after``, as an aware datetime in ``tz``.

    ``after`` may be in any zone; the expression is read in the wall-clock time of ``tz``
    (see the module docstring for daylight-saving rules).  Raises ``ValueError`` for an
    invalid expression or a naive ``after``.

    Compare and subtract results after ``.astimezone(UTC)``: Python compares datetimes that
    share a tzinfo by wall time (ignoring ``fold``), and ``==`` across zones is always False
    for a time in a repeated hour (PEP 495).
    """
    text = _checked(expression)
    _require_aware(after, "after")
    after = after.astimezone(UTC)
    local = after.astimezone(tz)
    wall = local.replace(tzinfo=None)
    both_passes = _hour_is_wildcard(text)
    window = _repeated_window(local, tz)
    in_second_pass = window is not None and local.fold == 1

    candidates: list[datetime] = []
    start = wall
    if in_second_pass and not both_passes and window is not None:
        # Every remaining wall time of the repeated hour already had its (only) fire.
        start = max(wall, window[1] - timedelta(seconds=1))
    walls = _iterate_walls(text, start)
    while True:
        first, repeat = _instants(_next_wall(walls), tz)
        if first > after:
            candidates.append(first)
            break
        if repeat is not None and both_passes and repeat > after:
            candidates.append(repeat)
            break
    if window is not None and not in_second_pass and both_passes:
        # ``after`` is in the first pass of a repeated hour: the second pass of the earliest
        # matching wall time in that hour may come before the next wall time after ``after``.
        window_start, window_end = window
        repeat_wall = _next_wall(_iterate_walls(text, window_start - timedelta(seconds=1)))
        if repeat_wall < window_end:
            _, repeat = _instants(repeat_wall, tz)
            if repeat is not None:
                candidates.append(repeat)
    return min(candidates).astimezone(tz)


def period_of(expression: str, tz: Zone, at: datetime) -> timedelta:
    """The nominal interval between the fire at or before ``at`` and the one after it.

    Measured in wall-clock time of ``tz``, so a daily job has a 24-hour period even on a
    23- or 25-hour day, and an irregular schedule (``0 9,17 * * 1-5``) reports the gap it is
    in at ``at`` (8 h, 16 h, or 64 h across a weekend).  Raises ``ValueError`` like
    ``next_fire``.
    """
    text = _checked(expression)
    _require_aware(at, "at")
    wall = at.astimezone(tz).replace(tzinfo=None)
    upcoming = _next_wall(_iterate_walls(text, wall))
    try:
        previous: datetime = croniter(text, upcoming).get_prev(datetime)
    except CroniterBadDateError as error:
        raise ValueError(f"no previous fire time found: {error}") from error
    return upcoming - previous
