"""After a promotion, our slot left on the old primary (still up) keeps its WAL for ever: the
``slot`` check warns, naming the statement that drops it, until it is gone. Pure verdicts
first (no servers), then a real ``laterbased run`` on real servers."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import pytest
from daemon_process import DaemonProcess, write_config
from daemon_support import (
    daemon_config,
    get_json,
    get_text,
    healthy,
    post,
    stop_daemon,
    wait_check,
)
from health_support import checks_by_name, ready_state
from pgserver import PgServer
from waiting import wait_for

from laterbased.config import BackupConfig, Config, PrimaryConfig, StandbyConfig
from laterbased.core.state import SlotState, State
from laterbased.health import verdicts as health

SLOT = "laterbase_standby_slot"


def promoted_state(slot: SlotState | None) -> State:
    config = Config(
        primary=PrimaryConfig(host="resolve.local", port=5433),
        standby=StandbyConfig(enabled=True),
        backup=BackupConfig(enabled=False),
        timezone="UTC",
    )
    state = ready_state(config)
    state.primary.slot = slot
    state.standby.enabled = True
    state.standby.role = "primary"
    state.standby.phase = "promoted"
    state.standby.pid = 4242
    state.local.reachable = True
    state.local.in_recovery = False
    return state


def test_promoted_with_our_slot_left_on_the_old_primary_warns_how_to_drop_it() -> None:
    state = promoted_state(
        SlotState(name=SLOT, exists=True, active=False, retained_bytes=3 * 1024**3)
    )
    checks = checks_by_name(state)
    slot = checks["slot"]
    assert slot.severity == "warning"
    assert slot.reason.startswith(f"promoted, but slot {SLOT} still exists on the old primary")
    assert "retains 3.0 GiB of WAL" in slot.reason, slot.reason
    assert f"SELECT pg_drop_replication_slot('{SLOT}') on resolve.local:5433" in slot.reason
    assert "replication" not in checks
    assert not health.is_healthy(list(checks.values()))


def test_promoted_without_our_slot_on_the_old_primary_is_fine() -> None:
    state = promoted_state(SlotState(name=SLOT, exists=False))
    checks = checks_by_name(state)
    assert checks["slot"].ok and "no longer exists" in checks["slot"].reason
    assert health.is_healthy(list(checks.values()))


def test_promoted_with_the_old_primary_gone_has_no_slot_check() -> None:
    state = promoted_state(SlotState(name=SLOT, exists=True))
    state.primary.reachable = False
    assert "slot" not in checks_by_name(state)


def slot_retained(primary: PgServer) -> str:
    return primary.sql(
        "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn) FROM pg_replication_slots "
        f"WHERE slot_name = '{SLOT}'"
    )


@pytest.mark.slow
async def test_promoted_daemon_warns_about_its_slot_on_the_old_primary_until_dropped(
    make_primary: Callable[..., PgServer], state_dir: Path
) -> None:
    primary = make_primary()
    config = daemon_config(primary, state_dir)
    daemon = await DaemonProcess.start(
        write_config(state_dir / "laterbased.yaml", config), config["http"]["port"]
    )
    try:
        await daemon.wait_log("standby postgres accepting connections", timeout=90)
        await wait_for(
            lambda: healthy(daemon), "healthy streaming standby", 60, log=lambda: daemon.log
        )
        # --force: the old primary stays up, which is the whole point here.
        status, body = await post(daemon, "/api/promote", {"force": True})
        assert status == 200, body
        # The old primary keeps running and keeps writing: WAL our slot holds back.
        primary.sql("CREATE TABLE after_promotion AS SELECT generate_series(1, 20000) AS i")
        primary.sql("SELECT pg_switch_wal()")
        where = f"{primary.host}:{primary.port}"
        check = await wait_check(
            daemon, "slot", lambda c: c["severity"] == "warning", "slot warning after promotion"
        )
        assert check["reason"].startswith(f"promoted, but slot {SLOT} still exists"), check
        assert f"SELECT pg_drop_replication_slot('{SLOT}') on {where}" in check["reason"]
        status, _ = await get_json(daemon, "/healthz")
        assert status == 503
        metrics = await get_text(daemon, "/metrics")
        assert f'laterbased_replication_slot_exists{{slot_name="{SLOT}"}} 1.0' in metrics
        assert f'laterbased_replication_slot_retained_wal_bytes{{slot_name="{SLOT}"}}' in metrics
        # Three polls later (monitor.interval is 1s) the log still said it only once.
        await asyncio.sleep(3)
        assert daemon.log.count(f"promoted, but slot {SLOT} still exists") == 1, daemon.log

        await wait_for(
            lambda: primary.sql(
                f"SELECT count(*) FROM pg_replication_slots WHERE slot_name = '{SLOT}' "
                "AND NOT active"
            ) == "1",
            "the slot on the old primary inactive after the promotion",
            30,
        )
        assert int(slot_retained(primary)) > 0
        primary.sql(f"SELECT pg_drop_replication_slot('{SLOT}')")
        check = await wait_check(daemon, "slot", lambda c: c["severity"] == "ok", "slot ok")
        assert "no longer exists" in check["reason"], check
        await wait_for(
            lambda: healthy(daemon), "/healthz 200 once the slot is dropped", 30,
            log=lambda: daemon.log,
        )
        await daemon.wait_log("replication slot ok: promoted", timeout=10)
        metrics = await get_text(daemon, "/metrics")
        assert f'laterbased_replication_slot_exists{{slot_name="{SLOT}"}} 0.0' in metrics
        await stop_daemon(daemon)
    finally:
        await daemon.stop()
