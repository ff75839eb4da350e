"""Replay paused on the standby while our own dump reads it (``backup.source`` auto or
standby) is ``ok``; paused with dumps going to the primary is someone else's pause: a warning."""

from __future__ import annotations

import pytest

from laterbased.config import BackupConfig, Config, MonitorConfig, PrimaryConfig, StandbyConfig
from laterbased.core.state import JobRun, State
from laterbased.health.verdicts import check_replication

NOW = 1_800_000_000.0


def paused_during_a_dump(source: str, dumping: str | None = "standby") -> State:
    config = Config(
        primary=PrimaryConfig(host="resolve.local"),
        standby=StandbyConfig(enabled=True),
        monitor=MonitorConfig(max_lag_bytes=16 * 1024**2),
        backup=BackupConfig(source=source),  # type: ignore[arg-type]
        timezone="UTC",
    )
    state = State(config=config, started_at=NOW - 600)
    state.standby.enabled = True
    state.standby.phase = "running"
    local = state.local
    local.reachable = True
    local.in_recovery = True
    local.receiver_status = "streaming"
    local.replay_paused = True
    local.lag_bytes = 0
    local.lag_seconds = 0.0
    state.job("dump").running = JobRun(
        id="dump-1", job="dump", started=NOW - 5, source=dumping
    )
    return state


@pytest.mark.parametrize("source", ["auto", "standby"])
def test_replay_paused_by_our_own_dump_from_the_standby_is_ok(source: str) -> None:
    check = check_replication(paused_during_a_dump(source), NOW)
    assert check.severity == "ok", check
    assert "replay paused for dump dump-1" in check.reason


def test_replay_paused_while_dumps_go_to_the_primary_is_a_warning() -> None:
    check = check_replication(paused_during_a_dump("primary", "primary"), NOW)
    assert check.severity == "warning", check
    assert "pg_wal_replay_resume()" in check.reason


def test_replay_paused_while_an_auto_run_dumps_the_primary_is_someone_elses_pause() -> None:
    # auto found the standby paused already and went to the primary: nobody of ours paused it.
    check = check_replication(paused_during_a_dump("auto", "primary"), NOW)
    assert check.severity == "warning", check
    assert "pg_wal_replay_resume()" in check.reason
