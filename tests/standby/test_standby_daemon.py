"""The standby through a real ``laterbased run`` subprocess: nasty password end to end,
promotion with ``laterbased promote``, SIGTERM leaves no postgres behind."""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest
from daemon_process import DaemonProcess, primary_section, write_config
from daemon_support import TOKEN, daemon_config, run_cli, standby_sql
from pgserver import NASTY_PASSWORD, PgServer
from standby_support import cmdlines, frozen_checkpointer
from waiting import wait_for

from laterbased.config import Config, HttpConfig, Secret
from laterbased.core.state import State
from laterbased.proc import pids_with_cwd_under
from laterbased.web.actions import add_action_routes
from laterbased.web.server import HttpServer, build_app

pytestmark = pytest.mark.slow

def group_members(pgid: int) -> list[int]:
    members = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                stat = (entry / "stat").read_text()
                fields = stat.rpartition(")")[2].split()
                if int(fields[2]) == pgid:
                    members.append(int(entry.name))
    return members


async def test_daemon_streams_with_nasty_password_promotes_and_leaves_nothing_on_sigterm(
    make_primary: Callable[..., PgServer], state_dir: Path
) -> None:
    primary = make_primary()
    assert primary.replication_password == NASTY_PASSWORD
    primary.sql("CREATE TABLE sb_daemon (v text)")
    config = daemon_config(primary, state_dir)
    port = config["standby"]["port"]
    config_path = write_config(state_dir / "laterbased.yaml", config)
    daemon = await DaemonProcess.start(config_path, config["http"]["port"])
    try:
        await daemon.wait_log("standby postgres accepting connections", timeout=90)
        primary.sql("INSERT INTO sb_daemon VALUES ('through the daemon')")

        async def replicated() -> bool:
            try:
                return bool(await standby_sql(
                    primary, port, "SELECT count(*) FROM sb_daemon WHERE v = 'through the daemon'"
                ))
            except (OSError, asyncpg.PostgresError):
                return False

        await wait_for(replicated, "row replicated to the daemon's standby")
        for cmdline in cmdlines():
            assert NASTY_PASSWORD.encode() not in cmdline
        assert NASTY_PASSWORD not in daemon.log

        async with aiohttp.ClientSession() as session:
            async with session.post(
                f"{daemon.url}/api/promote", headers={"Authorization": "Bearer wrong"}
            ) as response:
                assert response.status == 401

        code, out = await run_cli("promote", "--force", "--config", str(config_path))
        assert code == 0, out
        assert "role: primary" in out
        assert await standby_sql(primary, port, "SELECT pg_is_in_recovery()") is False
        await standby_sql(primary, port, "CREATE TABLE written_after_failover (id int)")
        async with aiohttp.ClientSession() as session:
            async with session.get(f"{daemon.url}/metrics") as response:
                assert response.status == 200

        postmaster = int((state_dir / "standby" / "postmaster.pid").read_text().split()[0])
        daemon.send(signal.SIGTERM)
        assert await daemon.wait_exit(timeout=90) == 0
    finally:
        await daemon.stop()
    assert group_members(postmaster) == []
    assert pids_with_cwd_under(state_dir) == []
    assert "promoted" in daemon.log


async def test_daemon_sigterm_mid_bootstrap_leaves_no_data_dir(
    make_primary: Callable[..., PgServer], state_dir: Path
) -> None:
    primary = make_primary()
    config = daemon_config(primary, state_dir)
    config_path = write_config(state_dir / "laterbased.yaml", config)
    with frozen_checkpointer(primary):
        daemon = await DaemonProcess.start(config_path, config["http"]["port"])
        try:
            await daemon.wait_log("waiting for the primary's checkpoint", timeout=60)
            daemon.send(signal.SIGTERM)
            assert await daemon.wait_exit(timeout=60) == 0
        finally:
            await daemon.stop()
    assert not (state_dir / "standby").exists()
    assert not (state_dir / ".standby.laterbased-staging").exists()
    assert pids_with_cwd_under(state_dir) == []


async def test_promote_api_is_forbidden_without_a_token_and_says_how_to_enable() -> None:
    config = Config(http=HttpConfig(host="127.0.0.1", port=0))
    state = State(config=config)
    server = HttpServer(build_app(state, [add_action_routes]), "127.0.0.1", 0)
    await server.start()
    try:
        async with aiohttp.ClientSession() as session:
            url = f"http://127.0.0.1:{server.port}/api/promote"
            async with session.post(url) as response:
                assert response.status == 403
                assert "http.token" in (await response.json())["error"]
            state.config = Config(http=HttpConfig(token=Secret(TOKEN)))
            async with session.post(url) as response:
                assert response.status == 401
            async with session.post(
                url, headers={"Authorization": f"Bearer {TOKEN}"}
            ) as response:
                assert response.status == 409  # no standby running here
    finally:
        await server.stop()


async def test_primary_restart_degrades_health_then_the_standby_recovers_by_itself(
    make_primary: Callable[..., PgServer], state_dir: Path
) -> None:
    primary = make_primary()
    config = daemon_config(primary, state_dir)
    config_path = write_config(state_dir / "laterbased.yaml", config)
    daemon = await DaemonProcess.start(config_path, config["http"]["port"])

    async def health() -> tuple[int, Any]:
        async with aiohttp.ClientSession() as session:
            async with session.get(f"{daemon.url}/healthz") as response:
                return response.status, await response.json()

    async def health_is(status: int) -> bool:
        try:
            return (await health())[0] == status
        except aiohttp.ClientError:
            return False

    try:
        await daemon.wait_http(timeout=30)
        await wait_for(lambda: health_is(200), f"healthy standby:\n{daemon.log[-3000:]}", 90)
        primary.stop("fast")
        await wait_for(lambda: health_is(503), "health degrades with the primary down", 60)
        status, body = await health()
        assert "primary" in body["failing"]
        primary.start()
        await wait_for(lambda: health_is(200), f"health recovers:\n{daemon.log[-3000:]}", 90)
        assert "restart #" not in daemon.log  # the standby reconnected, it was not restarted
        daemon.send(signal.SIGTERM)
        assert await daemon.wait_exit(timeout=90) == 0
    finally:
        await daemon.stop()


async def test_promote_command_without_a_daemon_promotes_the_server_directly(
    make_primary: Callable[..., PgServer],
) -> None:
    from standby_support import running_standby

    primary = make_primary()
    async with running_standby(primary) as standby:
        await standby.wait_running()
        config = standby.config
        config_path = write_config(
            config.state_dir / "cli.yaml",
            {
                "primary": primary_section(primary),
                "standby": {"port": config.standby.port},
                "backup": {"enabled": False},
                "http": {"enabled": False},
                "state_dir": str(config.state_dir),
            },
        )
        code, out = await run_cli("promote", "--force", "--config", str(config_path))
        assert code == 0, out
        assert "pg_ctl promote" in out and "role: primary" in out
        assert NASTY_PASSWORD not in out
        # The supervisor notices on its own that the standby marker is gone.
        await wait_for(lambda: standby.state.standby.role == "primary", "daemon sees the promotion")
        assert standby.state.standby.phase == "promoted"
        code, out = await run_cli("promote", "--force", "--config", str(config_path))
        assert code == 1 and "already promoted" in out
