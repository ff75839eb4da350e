"""The split-brain guard on promotion: ``laterbased promote`` and ``POST /api/promote`` refuse
while the old primary still runs (a refused login is an answer too), ``force`` goes past it,
and without it promotion goes ahead once the old primary is gone. Real PostgreSQL and real
``laterbased`` processes."""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from daemon_process import DaemonProcess, write_config
from daemon_support import TOKEN, daemon_config, run_cli, standby_sql
from pgserver import PgServer, free_port

from laterbased.errors import EXIT_REFUSE


async def start_streaming_daemon(primary: PgServer, state_dir: Path) -> tuple[DaemonProcess, int]:
    """A `laterbased run` whose standby of ``primary`` streams; (daemon, standby port)."""
    config = daemon_config(primary, state_dir)
    config_path = write_config(state_dir / "laterbased.yaml", config)
    daemon = await DaemonProcess.start(config_path, config["http"]["port"])
    try:
        await daemon.wait_log("standby postgres accepting connections", timeout=120)
    except BaseException:
        await daemon.stop()
        raise
    return daemon, config["standby"]["port"]


async def post_promote(daemon: DaemonProcess, body: Any = None) -> tuple[int, dict[str, Any]]:
    headers = {"Authorization": f"Bearer {TOKEN}"}
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120)) as session,
        session.post(f"{daemon.url}/api/promote", headers=headers, json=body) as response,
    ):
        return response.status, await response.json()


async def in_recovery(primary: PgServer, port: int) -> bool:
    return bool(await standby_sql(primary, port, "SELECT pg_is_in_recovery()"))


@pytest.mark.slow
async def test_promote_api_refuses_while_the_old_primary_runs_and_force_goes_ahead(
    make_primary: Callable[..., PgServer], state_dir: Path
) -> None:
    primary = make_primary()
    daemon, port = await start_streaming_daemon(primary, state_dir)
    try:
        where = f"{primary.host}:{primary.port}"
        status, body = await post_promote(daemon)
        assert status == 409, body
        assert body["reason"] == "old_primary_running"
        assert f"refusing to promote: the old primary {where} is still running" in body["error"]
        assert '{"force": true}' in body["error"]
        assert await in_recovery(primary, port), "refused, yet the standby was promoted"

        status, body = await post_promote(daemon, {"force": "yes"})
        assert status == 400 and "force must be true or false" in body["error"]

        # The CLI goes through the daemon and gets the daemon's refusal: exit 3, same words.
        config_path = state_dir / "laterbased.yaml"
        code, out = await run_cli("promote", "--config", str(config_path))
        assert code == EXIT_REFUSE, out
        assert f"refusing to promote: the old primary {where} is still running" in out
        assert await in_recovery(primary, port)

        status, body = await post_promote(daemon, {"force": True})
        assert status == 200, body
        assert body["role"] == "primary"
        assert where in body["forced_past"]
        assert not await in_recovery(primary, port)
        assert "promoting although the old primary" in daemon.log
    finally:
        await daemon.stop()


@pytest.mark.slow
async def test_promote_goes_through_the_daemon_without_force_once_the_old_primary_is_stopped(
    make_primary: Callable[..., PgServer], state_dir: Path
) -> None:
    primary = make_primary()
    daemon, port = await start_streaming_daemon(primary, state_dir)
    try:
        await asyncio.to_thread(primary.stop, "fast")
        code, out = await run_cli("promote", "--config", str(state_dir / "laterbased.yaml"))
        assert code == 0, out
        assert "promoted by the running daemon" in out and "role: primary" in out
        assert "refusing" not in out and "anyway" not in out
        assert not await in_recovery(primary, port)
    finally:
        await daemon.stop()


def promote_config(
    tmp_path: Path, host: str, port: int, password: str, user: str = "postgres"
) -> Path:
    config_file = tmp_path / "laterbased.yaml"
    (tmp_path / "password").write_text(password)
    config_file.write_text(
        "primary:\n"
        f"  host: {host}\n  port: {port}\n  user: {user}\n"
        f"  password_file: {tmp_path / 'password'}\n"
        "  connect_timeout: 3s\n"
        f"standby:\n  data_dir: {tmp_path / 'standby'}\n"
        "backup:\n  enabled: false\nhttp:\n  enabled: false\n"
        f"state_dir: {tmp_path / 'state'}\n"
    )
    return config_file


async def run_promote(*args: str) -> tuple[int, str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("LATERBASED_")}
    child = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "laterbased", "promote", *args,
        env=environ, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(child.communicate(), 60)
    assert child.returncode is not None
    return child.returncode, out.decode(errors="replace")


@pytest.mark.parametrize("password", ["right", "wrong"])
async def test_promote_refuses_while_the_old_primary_still_runs(
    primary: PgServer, tmp_path: Path, password: str
) -> None:
    # `laterbased promote` promoted the demo's standby in 0.5 s while the primary was up
    # and Resolve kept writing to it: two writable project libraries, exit 0, /healthz
    # "healthy". A refused login is an answer too: the server is running.
    secret = primary.superuser_password if password == "right" else "not-it"
    config_file = promote_config(
        tmp_path, primary.host, primary.port, secret, user=primary.superuser
    )
    code, out = await run_promote("--config", str(config_file))
    assert code == EXIT_REFUSE, out
    assert f"refusing to promote: the old primary {primary.host}:{primary.port} is still " in out
    if password == "right":
        # Logged in and asked: a primary, not in recovery.
        assert "is still running and accepting writes" in out, out
    else:
        assert "password authentication failed" in out, out
    assert "--force" in out
    # --force goes past the guard; here there is no standby to promote at all.
    code, out = await run_promote("--force", "--config", str(config_file))
    assert code == 1, out
    assert "promoting anyway (--force)" in out
    assert "nothing to promote" in out


async def test_promote_goes_ahead_when_the_old_primary_is_gone(tmp_path: Path) -> None:
    config_file = promote_config(tmp_path, "127.0.0.1", free_port(), "x")
    code, out = await run_promote("--config", str(config_file))
    assert "refusing" not in out
    assert code == 1, out  # no standby was cloned here: a clear refusal, not a traceback
    assert "no standby in " in out and "nothing to promote" in out
    assert "Traceback" not in out
