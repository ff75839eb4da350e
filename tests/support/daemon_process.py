"""Start a real ``laterbased run`` subprocess and talk to it, for lifecycle tests."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import aiohttp
import yaml
from pgserver import PgServer
from pgserver import free_port as free_tcp_port


def write_config(path: Path, data: Mapping[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(dict(data)))
    return path


def primary_section(server: PgServer, *, superuser: bool = False) -> dict[str, Any]:
    """The YAML ``primary`` section for ``server``: its replication user (what laterbased is
    given in production) or, with ``superuser``, Resolve's own superuser login."""
    return {
        "host": server.host,
        "port": server.port,
        "user": server.superuser if superuser else server.replication_user,
        "password": server.superuser_password if superuser else server.replication_password,
    }


def minimal_config(tmp_path: Path, **sections: Any) -> dict[str, Any]:
    """A daemon with no standby and no backups: the lifecycle alone."""
    config: dict[str, Any] = {
        "primary": {"host": "127.0.0.1", "port": free_tcp_port()},
        "standby": {"enabled": False},
        "backup": {"enabled": False},
        "http": {"host": "127.0.0.1", "port": free_tcp_port()},
        "state_dir": str(tmp_path / "state"),
    }
    for name, values in sections.items():
        if isinstance(values, dict):
            config.setdefault(name, {}).update(values)
        else:
            config[name] = values
    return config


class DaemonProcess:
    """A `laterbased run` child with its stderr collected for assertions."""

    def __init__(self, proc: asyncio.subprocess.Process, port: int) -> None:
        self.proc = proc
        self.port = port
        self.stderr = bytearray()
        self._reader = asyncio.ensure_future(self._collect())

    @classmethod
    async def start(
        cls,
        config_path: Path,
        port: int,
        env: Mapping[str, str] | None = None,
        args: tuple[str, ...] = (),
    ) -> DaemonProcess:
        environ = {k: v for k, v in os.environ.items() if not k.startswith("LATERBASED_")}
        environ.update(env or {})
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "laterbased", "run", "--config", str(config_path), *args,
            env=environ,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
        )
        return cls(proc, port)

    async def _collect(self) -> None:
        assert self.proc.stderr is not None
        while chunk := await self.proc.stderr.read(65536):
            self.stderr.extend(chunk)

    @property
    def log(self) -> str:
        return self.stderr.decode(errors="replace")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def wait_http(self, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        async with aiohttp.ClientSession() as session:
            while time.monotonic() < deadline:
                if self.proc.returncode is not None:
                    raise AssertionError(f"daemon exited {self.proc.returncode}:\n{self.log}")
                try:
                    async with session.get(f"{self.url}/liveness") as response:
                        if response.status == 200:
                            return
                except aiohttp.ClientError:
                    pass
                await asyncio.sleep(0.1)
        raise AssertionError(f"daemon did not answer HTTP within {timeout}s:\n{self.log}")

    async def wait_log(self, text: str, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if text in self.log:
                return
            await asyncio.sleep(0.05)
        raise AssertionError(f"log line {text!r} not seen within {timeout}s:\n{self.log}")

    def send(self, signum: signal.Signals) -> None:
        self.proc.send_signal(signum)

    async def wait_exit(self, timeout: float = 15.0) -> int:
        try:
            code = await asyncio.wait_for(self.proc.wait(), timeout)
        except TimeoutError:
            raise AssertionError(f"daemon still running after {timeout}s:\n{self.log}") from None
        await self._reader
        return code

    async def stop(self) -> None:
        if self.proc.returncode is None:
            self.proc.kill()
            await self.proc.wait()
        await self._reader
