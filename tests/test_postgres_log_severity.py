"""A PostgreSQL child's FATAL/ERROR/PANIC lines reach our log at ERROR/CRITICAL, not INFO
("could not connect to the primary server" was logged at INFO)."""

from __future__ import annotations

import logging
from collections.abc import Callable

import pytest
from pgserver import PgServer
from standby_support import orphan_standby
from waiting import wait_for

from laterbased.proc import PostgresSeverity


@pytest.mark.parametrize(
    ("lines", "levels"),
    [
        (["2026-11-29 08:00:00 UTC [7] LOG:  database system is ready"], [logging.INFO]),
        (["[7] WARNING:  archive_mode enabled, yet archiving is not configured"],
         [logging.WARNING]),
        (["[7] ERROR:  relation \"x\" does not exist", "[7] STATEMENT:  SELECT * FROM x"],
         [logging.ERROR, logging.ERROR]),
        (["[7] FATAL:  could not connect to the primary server: refused",
          "\tIs the server running on that host?", "[7] LOG:  waiting for WAL"],
         [logging.ERROR, logging.ERROR, logging.INFO]),
        (["[7] PANIC:  could not write to file \"pg_wal/xlogtemp.7\": No space left",
          "[7] HINT:  free some space"], [logging.CRITICAL, logging.CRITICAL]),
        (["[7] FATAL:  the database system is starting up"], [logging.INFO]),
        (["[7] FATAL:  terminating walreceiver process due to administrator command"],
         [logging.INFO]),
        (["FATAL:  could not connect to the primary server: x (repeated 12 times in the last "
          "minute)"], [logging.ERROR]),
        (["pg_ctl: some output of another program"], [logging.INFO]),
    ],
)
def test_postgres_severities_map_to_ours(lines: list[str], levels: list[int]) -> None:
    severity = PostgresSeverity(logging.INFO)
    assert [severity.level(line) for line in lines] == levels


async def test_a_standby_that_cannot_reach_its_primary_logs_the_fatal_at_error(
    make_primary: Callable[..., PgServer], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="laterbased.proc")
    async with orphan_standby(make_primary()):
        await wait_for(
            lambda: any("could not connect to the primary server" in r.getMessage()
                        for r in caplog.records),
            "the walreceiver's FATAL",
            timeout=30,
            log=lambda: caplog.text[-3000:],
        )
    records = [r for r in caplog.records if r.name == "laterbased.proc"]
    fatal = [r for r in records if "could not connect to the primary server" in r.getMessage()]
    assert fatal and all(r.levelno == logging.ERROR for r in fatal), [
        (r.levelname, r.getMessage()) for r in fatal
    ]
    plain = [r for r in records if " LOG:  " in r.getMessage()]
    assert plain and all(r.levelno == logging.INFO for r in plain)
    shut = [r for r in records if "database system is shut down" in r.getMessage()]
    assert shut and shut[0].levelno == logging.INFO
    assert not [r for r in records if r.levelno >= logging.CRITICAL]
