"""Which series and which time a backup belongs to, on real servers (issue 14, items 1-2).

1. A database may be called ``(globals)``, the name the globals (``pg_dumpall
   --globals-only``) are shown under: its dumps are a series of their own, retention keeps
   its newest, and a failed dump of it is not covered by the globals' success in the same run.
2. A backup dated in the future (made while the clock ran fast) is never the freshest:
   a later failure turns ``/healthz`` bad although that backup's date is ahead of now.
"""

from __future__ import annotations

import asyncio
import dataclasses
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aiohttp
import pytest
from backup_files import publish_real_backup
from backup_support import make_config
from daemon_process import DaemonProcess, primary_section, write_config
from daemon_support import TOKEN, get_json, health_check, post, stop_daemon
from pgserver import PgServer, free_port
from waiting import wait_for

from laterbased.backup.runner import register_actions, run_backup_chain
from laterbased.backup.verify import verify_newest
from laterbased.config import HttpConfig, Secret
from laterbased.core.state import GLOBALS_KEY, State
from laterbased.health import verdicts as health
from laterbased.records.catalogue import GLOBALS_NAME, Catalogue
from laterbased.web.actions import add_action_routes
from laterbased.web.server import HttpServer, build_app

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]


def quoted(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


async def test_a_database_called_globals_keeps_its_backups_and_its_own_health(
    make_primary: Callable[..., PgServer], state_dir: Path
) -> None:
    primary = make_primary()
    primary.create_database(GLOBALS_NAME)
    backup_dir = state_dir / "backups"
    config = make_config(
        primary,
        backup_dir,
        databases=(GLOBALS_NAME,),
        dump_globals=True,
        skip_unchanged=False,
        retention_days=0,  # only the newest of each series stays
        min_keep=1,
    )
    state = State(config=config)

    first = await run_backup_chain(state, trigger="test")
    assert first.result == "success", first.steps
    kept = Catalogue(backup_dir).list_backups()
    # The globals, dumped after the database, are not the database's newest backup.
    assert sorted(r.format for r in kept) == ["custom", "globals"], kept
    [database_dump] = [r for r in kept if r.format == "custom"]

    primary.sql(f"ALTER DATABASE {quoted(GLOBALS_NAME)} ALLOW_CONNECTIONS false")
    second = await run_backup_chain(state, trigger="test")
    assert second.result == "failed", second.steps
    checks = {check.name: check for check in health.evaluate(state, time.time())}
    database_check = checks[f"backup:{GLOBALS_NAME}"]
    assert database_check.severity == "warning", checks
    assert database_check.reason.startswith("last run failed"), database_check
    assert checks["globals"].ok, checks
    assert not health.is_healthy(list(checks.values()))
    after = Catalogue(backup_dir).list_backups()
    assert [r.file for r in after if r.format == "custom"] == [database_dump.file]
    assert len([r for r in after if r.format == "globals"]) == 1


async def test_a_backup_dated_in_the_future_does_not_hide_a_failed_run_from_healthz(
    make_primary: Callable[..., PgServer], state_dir: Path
) -> None:
    primary = make_primary()
    database = "Clockwork Projects"
    primary.create_database(database)
    backup_dir = state_dir / "backups"
    catalogue = Catalogue(backup_dir)
    catalogue.prepare()
    # Made while the clock ran two days fast: started and finished both ahead of now.
    ahead = datetime.now(UTC) + timedelta(days=2)
    planted = publish_real_backup(primary, catalogue, database, started=ahead)
    catalogue.rewrite_manifest(dataclasses.replace(planted, finished=ahead + timedelta(minutes=1)))
    # From now on every dump of it fails.
    primary.sql(f"ALTER DATABASE {quoted(database)} ALLOW_CONNECTIONS false")
    config = {
        "primary": primary_section(primary, superuser=True),
        "standby": {"enabled": False},
        "monitor": {"interval": "1s"},
        "backup": {
            "directory": str(backup_dir),
            "databases": [database],
            "schedule": "0 3 * * *",
            "catch_up": False,
        },
        "http": {"host": "127.0.0.1", "port": free_port(), "token": TOKEN},
        "state_dir": str(state_dir / "state"),
        "timezone": "UTC",
    }
    config_path = write_config(state_dir / "laterbased.yaml", config)
    daemon = await DaemonProcess.start(config_path, config["http"]["port"])
    try:
        await daemon.wait_http()

        async def primary_ok() -> bool:
            _, body = await get_json(daemon, "/healthz")
            check = health_check(body, "primary")
            return check is not None and check["ok"]

        await wait_for(primary_ok, "the primary polled", 30, log=lambda: daemon.log)
        status, body = await post(daemon, "/api/backup")
        assert (status, body["result"]) == (200, "failed"), body
        status, report = await get_json(daemon, "/healthz")
        check = health_check(report, f"backup:{database}")
        assert check is not None and check["severity"] == "warning", report
        assert "failed" in check["reason"], check
        assert status == 503, report
        await stop_daemon(daemon)
    finally:
        await daemon.stop()

    listed = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "laterbased", "backups", "list", "--config", str(config_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert listed.returncode == 0, listed.stderr
    [row] = [line for line in listed.stdout.splitlines() if line.startswith(database)]
    assert "dated in the future" in row, listed.stdout


async def test_verify_checks_the_newest_real_backup_not_one_dated_in_the_future(
    primary: PgServer, state_dir: Path
) -> None:
    backup_dir = state_dir / "backups"
    catalogue = Catalogue(backup_dir)
    now = datetime.now(UTC)
    real = publish_real_backup(primary, catalogue, "postgres", started=now - timedelta(hours=1))
    ahead = publish_real_backup(primary, catalogue, "postgres", started=now + timedelta(days=2))
    results = await verify_newest(make_config(primary, backup_dir), catalogue, "verify-future")
    assert [(r["database"], r["ok"]) for r in results] == [("postgres", True)], results
    by_file = {r.file: r for r in catalogue.list_backups()}
    assert by_file[real.file].verified is True, "the newest real backup is the one checked"
    assert by_file[ahead.file].verified is None


async def test_a_backup_request_for_a_name_with_a_nul_is_refused_not_filed_as_the_globals(
    primary: PgServer, state_dir: Path
) -> None:
    config = make_config(
        primary,
        state_dir / "backups",
        dump_globals=True,
        http=HttpConfig(port=0, token=Secret("t0ken")),
    )
    state = State(config=config)
    register_actions(state)
    server = HttpServer(build_app(state, [add_action_routes]), "127.0.0.1", 0)
    await server.start()
    try:
        async with aiohttp.ClientSession() as session:
            async with session.post(
                f"http://127.0.0.1:{server.port}/api/backup",
                json={"database": GLOBALS_KEY},
                headers={"Authorization": "Bearer t0ken"},
            ) as answer:
                assert answer.status == 400, await answer.text()
                assert (await answer.json())["error"] == "database must be a name"
    finally:
        await server.stop()
    assert state.backups == {} and state.job("dump").last_run is None
