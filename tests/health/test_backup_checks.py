"""Backup health does not lie at 3 a.m.: a dump run that fails as a whole (primary down before
any database was dumped) turns the backup checks bad, every database it was meant to dump, or
a ``backup`` check when none is known yet; they clear after a good run. Pure verdicts first
(no servers), then a real ``laterbased run`` on a real server."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from daemon_process import DaemonProcess, primary_section, write_config
from daemon_support import (
    TOKEN,
    get_json,
    get_text,
    health_check,
    healthy,
    post,
    stop_daemon,
    wait_check,
)
from health_support import NOW, checks_by_name, ready_state
from pgserver import PgServer, free_port
from waiting import wait_for

from laterbased.backup.dump import DumpOutcome
from laterbased.backup.runner import describe_failures, intended_databases, record_outcomes
from laterbased.config import BackupConfig, Config, PrimaryConfig, StandbyConfig
from laterbased.core.state import JobRun, State
from laterbased.health import verdicts as health
from laterbased.records.catalogue import GLOBALS_KEY, GLOBALS_NAME

DOWN = "cannot connect to the primary 10.0.0.5:5432: connection refused"


def backup_state(**backup: Any) -> State:
    config = Config(
        primary=PrimaryConfig(host="resolve.local"),
        standby=StandbyConfig(enabled=False),
        backup=BackupConfig(schedule="0 * * * *", **backup),
        timezone="UTC",
    )
    state = ready_state(config)
    return state


def failed_run(state: State, detail: str = DOWN, at: float = NOW - 30) -> None:
    state.job("dump").last_run = JobRun(
        id="dump-20270115T030000Z-ab12", job="dump", started=at - 1, finished=at,
        result="failed", detail=detail,
    )


def test_run_failure_counts_for_every_configured_database_it_did_not_reach() -> None:
    state = backup_state(databases=("Films", "Adverts"))
    state.backup("Films").last_success = NOW - 1800
    outcomes = [DumpOutcome("*", "failed", DOWN)]
    record_outcomes(state, outcomes, None, NOW - 30)
    checks = checks_by_name(state)
    for name in ("Films", "Adverts"):
        assert state.backups[name].last_error == DOWN
        assert state.backups[name].last_failure == NOW - 30
    assert checks["backup:Films"].severity == "warning"
    assert checks["backup:Films"].reason == f"last run failed: {DOWN}"
    assert checks["backup:Adverts"].severity == "warning"
    assert DOWN in checks["backup:Adverts"].reason
    assert "backup" not in checks, "the databases tell it; no second check"
    assert not health.is_healthy(list(checks.values()))


def test_run_failure_after_some_databases_spares_those_that_were_dumped() -> None:
    state = backup_state(databases=("Films", "Adverts"))
    outcomes = [
        DumpOutcome("Films", "failed", "pg_dump exited 1"),
        DumpOutcome("*", "failed", "No space left on device (/backups/.partial)"),
    ]
    record_outcomes(state, outcomes, None, NOW)
    assert state.backups["Films"].last_error == "pg_dump exited 1"
    assert state.backups["Adverts"].last_error == "No space left on device (/backups/.partial)"
    assert describe_failures([o for o in outcomes if o.result == "failed"]) == (
        "Films: pg_dump exited 1; No space left on device (/backups/.partial)"
    )


def test_without_configured_databases_the_known_ones_and_the_globals_fail() -> None:
    state = backup_state(dump_globals=True)
    state.backup("Films").last_success = NOW - 1800
    state.backup(GLOBALS_KEY).last_success = NOW - 1800
    assert intended_databases(state, None) == ["Films", GLOBALS_KEY]
    assert intended_databases(state, ["Adverts"]) == ["Adverts", GLOBALS_KEY]
    record_outcomes(state, [DumpOutcome("*", "failed", DOWN)], None, NOW - 30)
    checks = checks_by_name(state)
    assert checks["backup:Films"].severity == "warning"
    assert checks["globals"].severity == "warning"


def test_failed_globals_dump_is_judged_like_a_database() -> None:
    state = backup_state(databases=("Films",), dump_globals=True)
    failed = DumpOutcome(GLOBALS_NAME, "failed", "pg_dumpall: permission denied", kind="globals")
    record_outcomes(state, [failed], None, NOW)
    assert checks_by_name(state)["globals"].severity == "warning"


def test_a_success_recorded_while_the_clock_ran_fast_is_no_proof_of_freshness() -> None:
    state = backup_state(databases=("Films",))
    # A run stamped a day ahead, then the clock was set right: no run since.
    state.backup("Films").last_success = NOW + 86400
    check = checks_by_name(state)["backup:Films"]
    assert check.severity == "warning", check
    assert "in the future" in check.reason, check
    state.backup("Films").last_success = NOW + 60  # within the tolerance: an ordinary step
    assert checks_by_name(state)["backup:Films"].ok


def test_first_run_failing_before_any_database_is_known_fails_a_backup_check() -> None:
    state = backup_state()
    assert "backup" not in checks_by_name(state), "no run yet: nothing to say"
    record_outcomes(state, [DumpOutcome("*", "failed", DOWN)], None, NOW - 30)
    assert state.backups == {}
    failed_run(state)
    check = checks_by_name(state)["backup"]
    assert (check.severity, check.reason) == ("warning", f"backup run failed: {DOWN}")
    # Still failing once no backup could be made for longer than the staleness limit.
    late = checks_by_name(state, NOW + 3 * 3600)["backup"]
    assert late.severity == "critical"
    assert "no successful backup in" in late.reason and DOWN in late.reason


def test_backup_check_goes_once_the_run_succeeds_or_databases_are_known() -> None:
    state = backup_state()
    failed_run(state)
    state.job("dump").last_run = JobRun(
        id="dump-2", job="dump", started=NOW - 2, finished=NOW - 1, result="success"
    )
    assert "backup" not in checks_by_name(state)
    failed_run(state)
    state.backup("Films").last_failure = NOW - 30
    state.backup("Films").last_error = DOWN
    checks = checks_by_name(state)
    assert "backup" not in checks and checks["backup:Films"].severity == "warning"


@pytest.mark.slow
async def test_dump_run_with_the_primary_down_turns_backup_health_bad_until_a_good_run(
    make_primary: Callable[..., PgServer], state_dir: Path
) -> None:
    primary = make_primary()
    database = "Honest Projects"
    primary.create_database(database)
    primary.sql('CREATE TABLE "SM_Project" (id int); INSERT INTO "SM_Project" VALUES (1)', database)
    await asyncio.to_thread(primary.stop)
    config = {
        "primary": {**primary_section(primary, superuser=True), "connect_timeout": "3s"},
        "standby": {"enabled": False},
        "monitor": {"interval": "1s"},
        # No databases configured: discovery, so the first run knows none while it fails.
        "backup": {"directory": str(state_dir / "backups"), "schedule": "0 3 * * *"},
        "http": {"host": "127.0.0.1", "port": free_port(), "token": TOKEN},
        "state_dir": str(state_dir / "state"),
        "timezone": "UTC",
    }
    daemon = await DaemonProcess.start(
        write_config(state_dir / "laterbased.yaml", config), config["http"]["port"]
    )
    try:
        await daemon.wait_http()
        # First run ever (the catch-up at start), primary down: no database known yet.
        await daemon.wait_log("dump run failed", timeout=30)
        check = await wait_check(
            daemon, "backup", lambda c: c["severity"] == "warning", "a failing backup check"
        )
        assert check["reason"].startswith("backup run failed: "), check
        assert str(primary.port) in check["reason"], check

        await asyncio.to_thread(primary.start)
        status, body = await post(daemon, "/api/backup")
        assert (status, body["result"]) == (200, "success"), body
        _, report = await get_json(daemon, "/healthz")
        assert health_check(report, "backup") is None, report
        assert health_check(report, f"backup:{database}")["severity"] == "ok", report

        # The primary goes down: the next run fails before any database.
        await asyncio.to_thread(primary.stop)
        status, body = await post(daemon, "/api/backup")
        assert (status, body["result"]) == (200, "failed"), body
        status, report = await get_json(daemon, "/healthz")
        assert status == 503
        check = health_check(report, f"backup:{database}")
        assert check is not None and check["severity"] == "warning", report
        assert check["reason"].startswith("last run failed: "), check
        assert str(primary.port) in check["reason"], check
        _, document = await get_json(daemon, "/status.json")
        (row,) = [b for b in document["backups"] if b["database"] == database]
        assert row["last_error"] and str(primary.port) in row["last_error"], row
        page = await get_text(daemon, "/status")
        backups_table = page.split("<table id=backups>")[1].split("</table>")[0]
        assert f"port={primary.port}" in backups_table, backups_table
        assert "dump run failed" in daemon.log

        # Back up, a good run: the backup check clears, and with the primary /healthz is 200.
        await asyncio.to_thread(primary.start)
        status, body = await post(daemon, "/api/backup")
        assert (status, body["result"]) == (200, "success"), body
        await wait_check(
            daemon, f"backup:{database}", lambda c: c["severity"] == "ok", "backup ok again"
        )
        await wait_for(
            lambda: healthy(daemon), "/healthz 200 after the good run", 30, log=lambda: daemon.log
        )
        _, document = await get_json(daemon, "/status.json")
        (row,) = [b for b in document["backups"] if b["database"] == database]
        assert row["last_error"] is None, row
        await stop_daemon(daemon)
    finally:
        await daemon.stop()
