"""Health verdicts as pure functions of (state, config, clock): a table per check."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest
from health_support import NOW, ready_state

from laterbased.config import (
    BackupConfig,
    Config,
    MonitorConfig,
    PrimaryConfig,
    StandbyConfig,
    UploadConfig,
)
from laterbased.core.state import SlotState, State
from laterbased.health import verdicts as health

GB = 1024**3


def make_state(
    *, standby: bool = True, backup: bool = False, upload: bool = False, **backup_kw: Any
) -> State:
    config = Config(
        primary=PrimaryConfig(host="resolve.local"),
        standby=StandbyConfig(enabled=standby),
        monitor=MonitorConfig(interval=10, max_lag_bytes=16 * 1024**2, max_lag_seconds=300),
        backup=BackupConfig(enabled=backup, schedule="0 * * * *", **backup_kw),
        upload=UploadConfig(remote="s3" if upload else ""),
        timezone="UTC",
    )
    state = ready_state(config)
    state.primary.replication_state = "streaming"
    state.primary.slot = SlotState(
        name="laterbase_standby_slot", exists=True, active=True, retained_bytes=1024,
        wal_status="reserved",
    )
    state.standby.enabled = standby
    if standby:
        state.standby.phase = "running"
        state.standby.pid = 4242
        local = state.local
        local.reachable = True
        local.in_recovery = True
        local.receiver_status = "streaming"
        local.lag_bytes = 0
        local.lag_seconds = 0.0
    return state


def verdict(checks: list[health.Check], name: str) -> health.Check:
    return next(check for check in checks if check.name == name)


def test_everything_fine_is_healthy() -> None:
    checks = health.evaluate(make_state(), NOW)
    assert [c.name for c in checks] == ["daemon", "primary", "standby", "replication", "slot"]
    assert health.is_healthy(checks), checks


def test_backup_only_mode_has_no_standby_checks() -> None:
    checks = health.evaluate(make_state(standby=False), NOW)
    assert [c.name for c in checks] == ["daemon", "primary"]
    assert health.is_healthy(checks)


def _set(state: State, path: str, value: object) -> None:
    target: Any = state
    *parents, last = path.split(".")
    for part in parents:
        target = getattr(target, part)
    setattr(target, last, value)


@pytest.mark.parametrize(
    ("path", "value", "check", "severity", "words"),
    [
        ("primary.reachable", False, "primary", "critical", "unreachable"),
        ("primary.reachable", None, "primary", "warning", "not polled"),
        ("primary.last_ok", NOW - 3600, "primary", "warning", "no successful poll"),
        ("primary.in_recovery", True, "primary", "warning", "in recovery"),
        ("standby.phase", "bootstrapping", "standby", "warning", "bootstrapping"),
        ("standby.phase", "failed", "standby", "critical", "not running"),
        ("standby.phase", "disabled", "standby", "critical", "phase disabled"),
        ("local.reachable", False, "replication", "critical", "not answering"),
        ("local.reachable", None, "replication", "warning", "not polled"),
        ("local.in_recovery", False, "replication", "critical", "not in recovery"),
        ("local.receiver_status", "waiting", "replication", "critical", "not streaming"),
        ("local.receiver_status", "stopped", "replication", "critical", "not streaming"),
        ("local.lag_bytes", 17 * 1024**2, "replication", "warning", "17.0 MiB behind"),
        ("local.lag_seconds", 301.0, "replication", "warning", "5m 1s behind"),
        ("primary.slot.wal_status", "lost", "slot", "critical", "re-clone"),
        ("primary.slot.wal_status", "unreserved", "slot", "warning", "max_slot_wal_keep_size"),
        ("primary.slot.wal_status", "extended", "slot", "warning", "max_wal_size"),
        ("primary.slot.exists", False, "slot", "warning", "does not exist"),
    ],
)
def test_one_problem_fails_health_with_its_reason(
    path: str, value: object, check: str, severity: str, words: str
) -> None:
    state = make_state()
    _set(state, path, value)
    checks = health.evaluate(state, NOW)
    found = verdict(checks, check)
    assert found.severity == severity, found
    assert words in found.reason, found
    assert not health.is_healthy(checks)
    assert check in health.report(checks)["failing"]


def test_receiver_status_hidden_by_privileges_falls_back_to_the_primarys_view() -> None:
    state = make_state()
    state.local.receiver_status = "unknown"  # our role lacks pg_monitor
    assert verdict(health.evaluate(state, NOW), "replication").ok
    state.primary.replication_state = "catchup"
    assert not verdict(health.evaluate(state, NOW), "replication").ok


@pytest.mark.parametrize(
    ("active", "retained", "severity"),
    [
        (True, 5 * GB, "ok"),  # an active slot holding WAL is a slow standby, not a leak
        (False, GB // 2, "ok"),
        (False, 2 * GB, "warning"),
    ],
)
def test_inactive_slot_warns_past_the_retained_threshold(
    active: bool, retained: int, severity: str
) -> None:
    state = make_state()
    assert state.primary.slot is not None
    state.primary.slot = replace(state.primary.slot, active=active, retained_bytes=retained)
    assert verdict(health.evaluate(state, NOW), "slot").severity == severity


def test_missing_slot_before_the_standby_runs_is_fine() -> None:
    state = make_state()
    state.standby.phase = "bootstrapping"
    assert state.primary.slot is not None
    state.primary.slot.exists = False
    assert verdict(health.evaluate(state, NOW), "slot").ok


def test_promoted_standby_skips_replication_and_judges_the_old_primarys_slot() -> None:
    state = make_state()
    state.standby.phase = "promoted"
    state.local.in_recovery = False
    assert state.primary.slot is not None
    state.primary.slot.exists = False
    names = [c.name for c in health.evaluate(state, NOW)]
    assert "replication" not in names
    assert verdict(health.evaluate(state, NOW), "standby").ok
    assert verdict(health.evaluate(state, NOW), "slot").ok


HOUR = 3600.0


@pytest.mark.parametrize(
    ("last_success", "last_failure", "started_ago", "severity", "words"),
    [
        (None, None, 600, "ok", "no backup yet"),
        (None, None, 3 * HOUR, "critical", "no successful backup"),
        (None, NOW - 60, 600, "warning", "first backup failed"),
        (NOW - HOUR, None, 5 * HOUR, "ok", "ago"),
        (NOW - 1.9 * HOUR, None, 5 * HOUR, "ok", "ago"),
        (NOW - 2.1 * HOUR, None, 5 * HOUR, "critical", "old"),
        (NOW - HOUR, NOW - 60, 5 * HOUR, "warning", "last run failed"),
        (NOW - 60, NOW - HOUR, 5 * HOUR, "ok", "ago"),
    ],
)
def test_backup_freshness_uses_twice_the_schedule_period(
    last_success: float | None,
    last_failure: float | None,
    started_ago: float,
    severity: str,
    words: str,
) -> None:
    state = make_state(standby=False, backup=True)
    state.started_at = NOW - started_ago
    summary = state.backup("Resolve Projects")
    summary.last_success = last_success
    summary.last_failure = last_failure
    summary.last_error = "pg_dump: permission denied" if last_failure else None
    found = verdict(health.evaluate(state, NOW), "backup:Resolve Projects")
    assert (found.severity, words in found.reason) == (severity, True), found
    if last_failure and severity != "ok":
        assert "permission denied" in found.reason


def test_stale_after_overrides_the_schedule() -> None:
    state = make_state(standby=False, backup=True, stale_after=600.0)
    state.backup("a").last_success = NOW - 601
    assert verdict(health.evaluate(state, NOW), "backup:a").severity == "critical"


def test_configured_database_without_any_run_is_judged_too() -> None:
    state = make_state(standby=False, backup=True, databases=("never ran",))
    state.started_at = NOW - 10 * HOUR
    assert verdict(health.evaluate(state, NOW), "backup:never ran").severity == "critical"


@pytest.mark.parametrize(
    ("pending", "oldest_ago", "severity"),
    [(0, None, "ok"), (2, HOUR, "ok"), (2, 4 * HOUR, "warning")],
)
def test_uploads_pending_too_long_warn(
    pending: int, oldest_ago: float | None, severity: str
) -> None:
    state = make_state(standby=False, backup=True, upload=True)
    summary = state.backup("db")
    summary.last_success = NOW - 60
    summary.pending_upload = pending
    summary.oldest_pending_upload = None if oldest_ago is None else NOW - oldest_ago
    assert verdict(health.evaluate(state, NOW), "upload:db").severity == severity


def test_uploads_not_judged_when_upload_disabled() -> None:
    state = make_state(standby=False, backup=True)
    state.backup("db").oldest_pending_upload = NOW - 100 * HOUR
    assert "upload:db" not in [c.name for c in health.evaluate(state, NOW)]
