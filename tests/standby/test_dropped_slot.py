"""Fault 3 of the matrix: our replication slot is dropped on the primary while the standby
streams. A real ``laterbased run`` recreates it and streaming resumes; when it cannot (the role
lost its REPLICATION attribute), the log, the event list and /healthz say exactly what
happened and what to run, and it tries again later by itself."""

from __future__ import annotations

import signal
from collections.abc import Callable
from pathlib import Path

import aiohttp
import asyncpg
import pytest
from daemon_process import DaemonProcess, write_config
from daemon_support import daemon_config, get_json, healthy, standby_sql
from pgserver import PgServer
from waiting import wait_for

pytestmark = pytest.mark.slow

SLOT = "laterbase_standby_slot"

# Terminate the WAL sender holding the slot, then drop it before the standby reconnects
# (its WAL receiver waits wal_retrieve_retry_interval, 5 s, before trying again).
DROP_ACTIVE_SLOT = f"""
DO $$
DECLARE attempts int := 0;
BEGIN
  LOOP
    PERFORM pg_terminate_backend(active_pid) FROM pg_replication_slots
     WHERE slot_name = '{SLOT}' AND active_pid IS NOT NULL;
    BEGIN
      PERFORM pg_drop_replication_slot('{SLOT}');
      RETURN;
    EXCEPTION WHEN object_in_use THEN
      PERFORM pg_sleep(0.05);
    END;
    attempts := attempts + 1;
    IF attempts > 200 THEN RAISE EXCEPTION 'slot % stayed active', '{SLOT}'; END IF;
  END LOOP;
END $$;
"""



def slot_active(primary: PgServer) -> bool:
    return primary.sql(
        f"SELECT count(*) FROM pg_replication_slots WHERE slot_name = '{SLOT}' AND active"
    ) == "1"


async def events(daemon: DaemonProcess) -> str:
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{daemon.url}/status.json") as response:
            return str((await response.json()).get("events"))


async def start_streaming(primary: PgServer, state_dir: Path) -> tuple[DaemonProcess, int]:
    primary.sql("CREATE TABLE IF NOT EXISTS slot_fault (v text)")
    config = daemon_config(primary, state_dir)
    config_path = write_config(state_dir / "laterbased.yaml", config)
    daemon = await DaemonProcess.start(config_path, config["http"]["port"])
    await daemon.wait_log("standby postgres accepting connections", timeout=90)
    await wait_for(lambda: healthy(daemon), f"healthy daemon\n{daemon.log}")
    return daemon, config["standby"]["port"]


async def wait_replicated(primary: PgServer, port: int, value: str, daemon: DaemonProcess) -> None:
    primary.sql(f"INSERT INTO slot_fault VALUES ('{value}')")

    async def replicated() -> bool:
        try:
            return bool(await standby_sql(
                primary, port, f"SELECT count(*) FROM slot_fault WHERE v = '{value}'"  # noqa: S608
            ))
        except (OSError, asyncpg.PostgresError):
            return False

    await wait_for(replicated, f"row {value!r} on the standby\n{daemon.log}")


async def stop(daemon: DaemonProcess) -> None:
    daemon.send(signal.SIGTERM)
    assert await daemon.wait_exit(timeout=90) == 0, daemon.log


async def test_slot_dropped_while_streaming_is_recreated_and_nothing_is_lost(
    make_primary: Callable[..., PgServer], state_dir: Path
) -> None:
    primary = make_primary()
    daemon, port = await start_streaming(primary, state_dir)
    try:
        primary.sql(DROP_ACTIVE_SLOT)
        # A row written while no slot protects the standby's WAL must still arrive.
        primary.sql("INSERT INTO slot_fault VALUES ('written while the slot was gone')")
        await daemon.wait_log(f"replication slot {SLOT} vanished from the primary", timeout=30)
        assert "recreated it" in daemon.log
        await wait_for(lambda: slot_active(primary), f"slot active again\n{daemon.log}")
        await wait_replicated(primary, port, "after the slot came back", daemon)
        assert await standby_sql(
            primary, port,
            "SELECT count(*) FROM slot_fault WHERE v = 'written while the slot was gone'",
        ) == 1
        await wait_for(lambda: healthy(daemon), f"healthy again\n{daemon.log}")
        assert "vanished from the primary" in await events(daemon)
        await stop(daemon)
    finally:
        await daemon.stop()
    assert "Traceback" not in daemon.log
    assert daemon.log.count("vanished from the primary") == 1, "one drop, one repair"


async def test_slot_that_cannot_be_recreated_is_reported_with_the_fix_and_retried(
    make_primary: Callable[..., PgServer], state_dir: Path
) -> None:
    primary = make_primary()
    daemon, port = await start_streaming(primary, state_dir)
    role = primary.replication_user
    try:
        # Without REPLICATION the role may neither create slots nor stream.
        primary.sql(f'ALTER ROLE "{role}" NOREPLICATION')
        primary.sql(DROP_ACTIVE_SLOT)
        await daemon.wait_log("recreating it failed", timeout=30)
        line = next(x for x in daemon.log.splitlines() if "recreating it failed" in x)
        assert f"pg_create_physical_replication_slot('{SLOT}', true)" in line
        assert "re-clone" in line

        async def slot_reported() -> bool:
            status, body = await get_json(daemon, "/healthz")
            reasons = {check["name"]: check["reason"] for check in body["checks"]}
            return status == 503 and "does not exist" in reasons.get("slot", "")

        await wait_for(slot_reported, f"/healthz 503 naming the missing slot\n{daemon.log}")
        assert "recreating it failed" in await events(daemon)

        # The privilege comes back: a later attempt (5 monitor intervals) repairs it.
        primary.sql(f'ALTER ROLE "{role}" REPLICATION')
        await daemon.wait_log("recreated it", timeout=30)
        await wait_for(lambda: slot_active(primary), f"slot active again\n{daemon.log}")
        await wait_replicated(primary, port, "after the privilege came back", daemon)
        await stop(daemon)
    finally:
        await daemon.stop()
    assert "Traceback" not in daemon.log
