"""A real ``laterbased run`` with a standby, seen from outside: its config, its HTTP API
(with the token), SQL on its standby, the CLI beside it, and a clean stop."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
from daemon_process import DaemonProcess, primary_section
from pgserver import PgServer, free_port
from waiting import wait_for

TOKEN = "promote-token-" + os.urandom(6).hex()


def daemon_config(primary: PgServer, state_dir: Path, **standby: Any) -> dict[str, Any]:
    return {
        "primary": primary_section(primary),
        "standby": {"port": free_port(), **standby},
        "monitor": {"interval": "1s"},
        "backup": {"enabled": False},
        "http": {"host": "127.0.0.1", "port": free_port(), "token": TOKEN},
        "state_dir": str(state_dir),
    }


async def standby_sql(primary: PgServer, port: int, query: str) -> Any:
    conn = await asyncpg.connect(
        host="127.0.0.1",
        port=port,
        user=primary.superuser,
        password=primary.superuser_password,
        database="postgres",
        timeout=10,
    )
    try:
        return await conn.fetchval(query)
    finally:
        await conn.close()


async def run_cli(*args: str, timeout: float = 300.0) -> tuple[int, str]:  # noqa: ASYNC109
    """``laterbased ARGS`` beside the daemon, without our LATERBASED_* variables: (exit
    code, stdout and stderr). The deadline is generous: ``promote --rehearse`` clones."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith("LATERBASED_")}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "laterbased", *args,
        env=environ,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(proc.communicate(), timeout)
    assert proc.returncode is not None
    return proc.returncode, out.decode(errors="replace")


async def get_json(daemon: DaemonProcess, path: str) -> tuple[int, dict[str, Any]]:
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{daemon.url}{path}") as response:
            return response.status, await response.json()


async def healthy(daemon: DaemonProcess) -> bool:
    """``/healthz`` answers 200 (False also while the daemon cannot be reached)."""
    try:
        return (await get_json(daemon, "/healthz"))[0] == 200
    except aiohttp.ClientError:
        return False


async def get_text(daemon: DaemonProcess, path: str) -> str:
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{daemon.url}{path}") as response:
            return await response.text()


async def post(
    daemon: DaemonProcess, path: str, body: dict[str, Any] | None = None
) -> tuple[int, dict[str, Any]]:
    async with aiohttp.ClientSession() as session:
        async with session.post(
            f"{daemon.url}{path}",
            json=body or {},
            headers={"Authorization": f"Bearer {TOKEN}"},
            timeout=aiohttp.ClientTimeout(total=120),
        ) as response:
            return response.status, await response.json()


def health_check(body: dict[str, Any], name: str) -> dict[str, Any] | None:
    return next((c for c in body["checks"] if c["name"] == name), None)


async def wait_check(
    daemon: DaemonProcess, name: str, predicate: Callable[[dict[str, Any]], bool], what: str
) -> dict[str, Any]:
    async def seen() -> dict[str, Any] | None:
        _, body = await get_json(daemon, "/healthz")
        check = health_check(body, name)
        return check if check is not None and predicate(check) else None

    found: dict[str, Any] = await wait_for(seen, what, 30, log=lambda: daemon.log)
    return found


async def stop_daemon(daemon: DaemonProcess) -> None:
    daemon.send(signal.SIGTERM)
    assert await daemon.wait_exit(timeout=90) == 0, daemon.log

