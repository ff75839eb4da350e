"""The pure cron function: a table of schedules, zones and daylight-saving changes."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from laterbased.schedule.cron import next_fire, period_of, validate_expression

LONDON = ZoneInfo("Europe/London")
NEW_YORK = ZoneInfo("America/New_York")
KOLKATA = ZoneInfo("Asia/Kolkata")
TOKYO = ZoneInfo("Asia/Tokyo")
ZONE_UTC = ZoneInfo("UTC")
MINUS_3 = timezone(timedelta(hours=-3))


def at(text: str) -> datetime:
    return datetime.fromisoformat(text)


# (expression, zone, after, expected first fire strictly after `after`)
NEXT_FIRE_TABLE: list[tuple[str, ZoneInfo | timezone, str, str]] = [
    # hourly and sub-hourly
    ("0 * * * *", UTC, "2026-01-15T10:20:00+00:00", "2026-01-15T11:00:00+00:00"),
    ("0 * * * *", UTC, "2026-01-15T10:00:00+00:00", "2026-01-15T11:00:00+00:00"),
    ("0 * * * *", UTC, "2026-01-15T09:59:59.999999+00:00", "2026-01-15T10:00:00+00:00"),
    ("@hourly", ZONE_UTC, "2026-01-15T23:30:00+00:00", "2026-01-16T00:00:00+00:00"),
    ("*/15 * * * *", UTC, "2026-01-15T10:00:00+00:00", "2026-01-15T10:15:00+00:00"),
    ("*/15 * * * *", UTC, "2026-01-15T10:14:59+00:00", "2026-01-15T10:15:00+00:00"),
    ("*/15 * * * *", UTC, "2026-01-15T10:59:00+00:00", "2026-01-15T11:00:00+00:00"),
    # nicknames
    ("@daily", UTC, "2026-01-15T00:00:00+00:00", "2026-01-16T00:00:00+00:00"),
    ("@midnight", UTC, "2026-01-15T12:00:00+00:00", "2026-01-16T00:00:00+00:00"),
    ("@weekly", UTC, "2026-01-15T12:00:00+00:00", "2026-01-18T00:00:00+00:00"),  # Thu → Sun
    ("@monthly", UTC, "2026-01-31T12:00:00+00:00", "2026-02-01T00:00:00+00:00"),
    ("@yearly", UTC, "2026-06-01T00:00:00+00:00", "2027-01-01T00:00:00+00:00"),
    ("@annually", UTC, "2026-12-31T23:59:59+00:00", "2027-01-01T00:00:00+00:00"),
    # month ends and leap years
    ("0 0 31 * *", UTC, "2026-03-31T00:00:00+00:00", "2026-05-31T00:00:00+00:00"),
    ("0 0 31 * *", UTC, "2026-05-31T00:00:01+00:00", "2026-07-31T00:00:00+00:00"),
    ("0 0 31 * *", UTC, "2026-07-31T00:00:00+00:00", "2026-08-31T00:00:00+00:00"),
    ("0 0 29 2 *", UTC, "2026-01-01T00:00:00+00:00", "2028-02-29T00:00:00+00:00"),
    ("0 0 29 2 *", UTC, "2028-02-29T00:00:00+00:00", "2032-02-29T00:00:00+00:00"),
    ("0 0 29 2 *", UTC, "2096-03-01T00:00:00+00:00", "2104-02-29T00:00:00+00:00"),  # 2100
    ("0 0 L * *", UTC, "2026-02-01T00:00:00+00:00", "2026-02-28T00:00:00+00:00"),
    ("0 0 L * *", UTC, "2028-02-01T00:00:00+00:00", "2028-02-29T00:00:00+00:00"),
    # year rollover, weekdays, lists, names
    ("59 23 31 12 *", UTC, "2026-12-31T23:59:00+00:00", "2027-12-31T23:59:00+00:00"),
    ("*/15 * * * *", UTC, "2026-12-31T23:50:00+00:00", "2027-01-01T00:00:00+00:00"),
    ("0 9 * * 1-5", UTC, "2026-01-16T09:00:00+00:00", "2026-01-19T09:00:00+00:00"),
    ("0 9 * * mon-fri", UTC, "2026-01-17T10:00:00+00:00", "2026-01-19T09:00:00+00:00"),
    ("0 9,17 * * *", UTC, "2026-01-15T09:00:00+00:00", "2026-01-15T17:00:00+00:00"),
    ("0 0 * * 7", UTC, "2026-01-15T00:00:00+00:00", "2026-01-18T00:00:00+00:00"),
    ("0 0 1 jan *", UTC, "2026-01-01T00:00:00+00:00", "2027-01-01T00:00:00+00:00"),
    ("0 0 * * 1#2", UTC, "2026-01-01T00:00:00+00:00", "2026-01-12T00:00:00+00:00"),
    # Europe/London ordinary days, winter and summer
    ("0 2 * * *", LONDON, "2026-01-15T02:00:00+00:00", "2026-01-16T02:00:00+00:00"),
    ("0 2 * * *", LONDON, "2026-07-15T00:00:00+00:00", "2026-07-15T02:00:00+01:00"),
    # London spring forward 2026-03-29: 01:00 GMT → 02:00 BST, wall 01:00-01:59 is missing
    ("0 * * * *", LONDON, "2026-03-29T00:00:00+00:00", "2026-03-29T02:00:00+01:00"),
    ("0 * * * *", LONDON, "2026-03-29T02:00:00+01:00", "2026-03-29T03:00:00+01:00"),
    ("30 1 * * *", LONDON, "2026-03-28T01:30:00+00:00", "2026-03-29T02:00:00+01:00"),
    ("30 1 * * *", LONDON, "2026-03-29T02:00:00+01:00", "2026-03-30T01:30:00+01:00"),
    ("*/15 * * * *", LONDON, "2026-03-29T00:45:00+00:00", "2026-03-29T02:00:00+01:00"),
    ("*/15 * * * *", LONDON, "2026-03-29T02:00:00+01:00", "2026-03-29T02:15:00+01:00"),
    ("0 3 * * *", LONDON, "2026-03-28T03:00:00+00:00", "2026-03-29T03:00:00+01:00"),
    # London fall back 2026-10-25: 02:00 BST → 01:00 GMT, wall 01:00-01:59 happens twice
    ("0 * * * *", LONDON, "2026-10-25T00:30:00+01:00", "2026-10-25T01:00:00+01:00"),
    ("0 * * * *", LONDON, "2026-10-25T01:00:00+01:00", "2026-10-25T01:00:00+00:00"),
    ("0 * * * *", LONDON, "2026-10-25T01:00:00+00:00", "2026-10-25T02:00:00+00:00"),
    ("30 1 * * *", LONDON, "2026-10-24T01:30:00+01:00", "2026-10-25T01:30:00+01:00"),
    ("30 1 * * *", LONDON, "2026-10-25T01:30:00+01:00", "2026-10-26T01:30:00+00:00"),
    ("30 1 * * *", LONDON, "2026-10-25T01:10:00+00:00", "2026-10-26T01:30:00+00:00"),
    ("*/20 * * * *", LONDON, "2026-10-25T01:50:00+01:00", "2026-10-25T01:00:00+00:00"),
    ("*/20 * * * *", LONDON, "2026-10-25T01:20:00+00:00", "2026-10-25T01:40:00+00:00"),
    ("*/20 1 * * *", LONDON, "2026-10-25T01:40:00+01:00", "2026-10-26T01:00:00+00:00"),
    ("0 2 * * *", LONDON, "2026-10-25T01:30:00+00:00", "2026-10-25T02:00:00+00:00"),
    # America/New_York: spring 2026-03-08 02:00 EST → 03:00 EDT, fall 2026-11-01 02:00 → 01:00
    ("30 2 * * *", NEW_YORK, "2026-03-07T02:30:00-05:00", "2026-03-08T03:00:00-04:00"),
    ("0 * * * *", NEW_YORK, "2026-03-08T01:00:00-05:00", "2026-03-08T03:00:00-04:00"),
    ("0 * * * *", NEW_YORK, "2026-11-01T01:00:00-04:00", "2026-11-01T01:00:00-05:00"),
    ("30 1 * * *", NEW_YORK, "2026-11-01T00:00:00-04:00", "2026-11-01T01:30:00-04:00"),
    ("30 1 * * *", NEW_YORK, "2026-11-01T01:30:00-04:00", "2026-11-02T01:30:00-05:00"),
    # a half-hour zone without daylight saving
    ("0 0 * * *", KOLKATA, "2026-01-15T18:30:00+00:00", "2026-01-17T00:00:00+05:30"),
    ("0 * * * *", KOLKATA, "2026-01-15T10:00:00+00:00", "2026-01-15T16:00:00+05:30"),
    # `after` in another zone than the schedule's
    ("0 9 * * *", NEW_YORK, "2026-01-15T09:00:00+01:00", "2026-01-15T09:00:00-05:00"),
    ("0 9 * * *", UTC, "2026-01-15T17:59:00+09:00", "2026-01-15T09:00:00+00:00"),
    ("0 0 * * *", MINUS_3, "2026-01-15T02:59:00+00:00", "2026-01-15T00:00:00-03:00"),
    # optional sixth field: seconds, last
    ("* * * * * *", UTC, "2026-01-15T10:00:00.500000+00:00", "2026-01-15T10:00:01+00:00"),
    ("* * * * * */10", UTC, "2026-01-15T10:00:05+00:00", "2026-01-15T10:00:10+00:00"),
    ("0 0 * * * 30", UTC, "2026-01-15T00:00:30+00:00", "2026-01-16T00:00:30+00:00"),
]


@pytest.mark.parametrize(("expression", "zone", "after", "expected"), NEXT_FIRE_TABLE)
def test_next_fire_table(
    expression: str, zone: ZoneInfo | timezone, after: str, expected: str
) -> None:
    result = next_fire(expression, at(after), zone)
    # Via UTC: Python's == is always False between zones when one side is in a fold (PEP 495).
    assert result.astimezone(UTC) == at(expected).astimezone(UTC)
    assert result.utcoffset() == at(expected).utcoffset()
    assert result.tzinfo is zone


def fires_between(
    expression: str, zone: ZoneInfo, start: datetime, end: datetime
) -> list[datetime]:
    fires: list[datetime] = []
    # Compare in UTC: aware datetimes sharing a tzinfo compare by wall time, ignoring fold.
    moment = start.astimezone(UTC) - timedelta(microseconds=1)
    while (moment := next_fire(expression, moment, zone)).astimezone(UTC) < end.astimezone(UTC):
        fires.append(moment.astimezone(UTC))
    return fires


@pytest.mark.parametrize(
    ("expression", "day", "count"),
    [
        ("0 * * * *", "2026-03-29", 23),
        ("0 * * * *", "2026-10-25", 25),
        ("*/15 * * * *", "2026-03-29", 92),
        ("*/15 * * * *", "2026-10-25", 100),
        ("30 1 * * *", "2026-03-29", 1),
        ("30 1 * * *", "2026-10-25", 1),
        ("0 1 * * *", "2026-10-25", 1),
    ],
)
def test_fires_per_london_day_follow_real_hours(expression: str, day: str, count: int) -> None:
    start = datetime.fromisoformat(day).replace(tzinfo=LONDON)
    fires = fires_between(expression, LONDON, start, start + timedelta(days=1))
    assert len(fires) == count
    assert fires == sorted(set(fires))


def test_hourly_on_fall_back_day_fires_every_real_hour() -> None:
    start = datetime(2026, 10, 25, tzinfo=LONDON)
    fires = fires_between("0 * * * *", LONDON, start, start + timedelta(days=1))
    gaps = {later - earlier for earlier, later in zip(fires, fires[1:], strict=False)}
    assert gaps == {timedelta(hours=1)}


@pytest.mark.parametrize(
    ("expression", "fragment"),
    [
        ("61 * * * *", "minute must be 0-59"),
        ("* * *", "expected 5 fields"),
        ("@reboot", "@reboot is not supported"),
        ("", "empty"),
        ("   ", "empty"),
        ("abc", "expected 5 fields"),
        ("0 0 32 * *", "day of month must be 1-31"),
        ("0 24 * * *", "hour must be 0-23"),
        ("0 0 * 13 *", "month must be 1-12"),
        ("0 0 * * 8", "day of week must be 0-7"),
        ("0 0 * * * 60", "second must be 0-59"),
        ("0 0 31 2 *", "never fires"),
        ("* * * * * * 2030", "expected 5 fields"),
        ("@every", "unknown nickname"),
        ("R * * * *", "random/hashed"),
        ("H * * * *", "random/hashed"),
    ],
)
def test_invalid_expressions_are_reported_and_refused(expression: str, fragment: str) -> None:
    message = validate_expression(expression)
    assert message is not None
    assert fragment in message
    if expression.strip():
        assert f"'{expression}'" in message
    with pytest.raises(ValueError, match="."):
        next_fire(expression, datetime(2026, 1, 1, tzinfo=UTC), UTC)
    with pytest.raises(ValueError, match="."):
        period_of(expression, UTC, datetime(2026, 1, 1, tzinfo=UTC))


@pytest.mark.parametrize(
    "expression",
    [
        "@hourly",
        "@daily",
        "@midnight",
        "@weekly",
        "@monthly",
        "@yearly",
        "@annually",
        "@DAILY",
        "0 2 * * *",
        " 0 2 * * * ",
        "*/5 * * * *",
        "0 9 * * mon-fri",
        "0 0 L * *",
        "0 0 29 2 *",
        "* * * * * *",
        "0 0 * * * */30",
    ],
)
def test_valid_expressions_pass_validation(expression: str) -> None:
    assert validate_expression(expression) is None


def test_naive_after_is_refused() -> None:
    with pytest.raises(ValueError, match="aware"):
        next_fire("0 * * * *", datetime(2026, 1, 1), UTC)  # noqa: DTZ001 - the point of the test
    with pytest.raises(ValueError, match="aware"):
        period_of("0 * * * *", UTC, datetime(2026, 1, 1))  # noqa: DTZ001


PERIOD_TABLE: list[tuple[str, ZoneInfo | timezone, str, timedelta]] = [
    ("0 * * * *", UTC, "2026-01-15T10:20:00+00:00", timedelta(hours=1)),
    ("0 * * * *", UTC, "2026-01-15T10:00:00+00:00", timedelta(hours=1)),
    ("*/15 * * * *", LONDON, "2026-01-15T10:20:00+00:00", timedelta(minutes=15)),
    ("* * * * * *", UTC, "2026-01-15T10:20:00+00:00", timedelta(seconds=1)),
    ("@daily", UTC, "2026-01-15T10:20:00+00:00", timedelta(days=1)),
    ("@daily", LONDON, "2026-03-29T12:00:00+01:00", timedelta(days=1)),  # 23-hour day
    ("@daily", LONDON, "2026-10-25T12:00:00+00:00", timedelta(days=1)),  # 25-hour day
    ("0 2 * * *", KOLKATA, "2026-01-15T10:20:00+00:00", timedelta(days=1)),
    ("@weekly", UTC, "2026-01-15T10:20:00+00:00", timedelta(days=7)),
    ("@monthly", UTC, "2026-01-10T00:00:00+00:00", timedelta(days=31)),
    ("@monthly", UTC, "2026-02-10T00:00:00+00:00", timedelta(days=28)),
    ("@yearly", UTC, "2026-06-01T00:00:00+00:00", timedelta(days=365)),
    ("@yearly", UTC, "2028-06-01T00:00:00+00:00", timedelta(days=366)),
    ("0 0 29 2 *", UTC, "2026-06-01T00:00:00+00:00", timedelta(days=1461)),
    ("0 9,17 * * 1-5", UTC, "2026-01-19T08:00:00+00:00", timedelta(hours=64)),  # Mon morning
    ("0 9,17 * * 1-5", UTC, "2026-01-19T10:00:00+00:00", timedelta(hours=8)),
    ("0 9,17 * * 1-5", UTC, "2026-01-19T18:00:00+00:00", timedelta(hours=16)),
]


@pytest.mark.parametrize(("expression", "zone", "moment", "expected"), PERIOD_TABLE)
def test_period_of_table(
    expression: str, zone: ZoneInfo | timezone, moment: str, expected: timedelta
) -> None:
    assert period_of(expression, zone, at(moment)) == expected


ZONES: list[ZoneInfo | timezone] = [
    ZONE_UTC,
    LONDON,
    NEW_YORK,
    KOLKATA,
    ZoneInfo("Australia/Lord_Howe"),
    MINUS_3,
]

expressions = st.builds(
    lambda *fields: " ".join(fields),
    st.sampled_from(["*", "*/5", "0", "30", "0,30", "15-45/10", "59"]),
    st.sampled_from(["*", "*/2", "0", "1", "2", "13", "9-17", "23"]),
    st.sampled_from(["*", "1", "15", "L", "29", "31"]),
    st.sampled_from(["*", "*/3", "2", "10", "3,11"]),
    st.sampled_from(["*", "0", "1-5", "6"]),
)
anywhere = st.datetimes(
    min_value=datetime(2000, 1, 1),  # noqa: DTZ001 - hypothesis bounds are naive
    max_value=datetime(2037, 12, 31),  # noqa: DTZ001
    timezones=st.sampled_from(ZONES),
    allow_imaginary=False,
)
# Most of the interesting cases sit within hours of a daylight-saving change.
TRANSITIONS = [
    at("2026-03-29T01:00:00+00:00"),  # London spring forward
    at("2026-10-25T01:00:00+00:00"),  # London fall back
    at("2026-03-08T07:00:00+00:00"),  # New York spring forward
    at("2026-11-01T06:00:00+00:00"),  # New York fall back
    at("2026-04-04T15:00:00+00:00"),  # Lord Howe: back 30 minutes
    at("2026-10-03T15:30:00+00:00"),  # Lord Howe: forward 30 minutes
]
near_transitions = st.builds(
    lambda moment, shift, zone: (moment + shift).astimezone(zone),
    st.sampled_from(TRANSITIONS),
    st.timedeltas(min_value=timedelta(hours=-26), max_value=timedelta(hours=26)),
    st.sampled_from(ZONES),
)
moments = st.one_of(anywhere, near_transitions)


@settings(max_examples=300, deadline=None)
@given(
    expression=expressions,
    zone=st.sampled_from(ZONES),
    after=moments,
    fraction=st.floats(min_value=0.0, max_value=1.0),
    later_by=st.timedeltas(min_value=timedelta(0), max_value=timedelta(days=400)),
)
def test_next_fire_is_after_monotone_and_skips_nothing(
    expression: str,
    zone: ZoneInfo | timezone,
    after: datetime,
    fraction: float,
    later_by: timedelta,
) -> None:
    assume(validate_expression(expression) is None)
    # Arithmetic and comparisons in UTC: within one tzinfo they would use wall time.
    start = after.astimezone(UTC)
    fire = next_fire(expression, after, zone).astimezone(UTC)
    assert fire > start
    # Monotone: a later starting point never gives an earlier fire.
    assert next_fire(expression, start + later_by, zone).astimezone(UTC) >= fire
    # Nothing fires in between: from any point in [after, fire) the answer is the same.
    between = start + (fire - start) * fraction
    if between < fire:
        assert next_fire(expression, between, zone).astimezone(UTC) == fire
