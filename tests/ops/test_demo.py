"""`laterbased demo`, the README's first command, run exactly as a newcomer would."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import socket
import stat
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
import pytest
import yaml
from pgserver import PgServer, free_port

from laterbased.config import load_config
from laterbased.ops.demo.session import DemoOptions, demo_config
from laterbased.proc import pids_with_cwd_under

pytestmark = pytest.mark.slow


def port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


async def test_demo_streams_backs_up_and_cleans_up_after_ctrl_c() -> None:
    workdir = Path(tempfile.mkdtemp(prefix="lb-demo-test-")) / "demo"
    workdir.parent.chmod(0o755)  # the standby runs as postgres and must reach its files
    http_port = free_port()
    environ = {k: v for k, v in os.environ.items() if not k.startswith("LATERBASED_")}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "laterbased", "demo",
        "--http-port", str(http_port), "--dir", str(workdir),
        "--schedule", "* * * * * */5",  # every 5 seconds: the test should not wait minutes
        env=environ,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    stdout = bytearray()
    stderr = bytearray()

    async def pump(stream: asyncio.StreamReader | None, into: bytearray) -> None:
        assert stream is not None
        while chunk := await stream.read(65536):
            into.extend(chunk)

    async with asyncio.TaskGroup() as group:
        group.create_task(pump(proc.stdout, stdout))
        group.create_task(pump(proc.stderr, stderr))
        try:
            url = f"http://127.0.0.1:{http_port}"
            deadline = time.monotonic() + 120
            body: dict[str, object] = {}
            async with aiohttp.ClientSession() as session:
                while time.monotonic() < deadline:
                    assert proc.returncode is None, stderr.decode()
                    try:
                        async with session.get(f"{url}/healthz") as response:
                            body = await response.json()
                            if response.status == 200 and any(
                                str(check["name"]).startswith("backup:")
                                for check in body["checks"]  # type: ignore[attr-defined]
                            ):
                                break
                    except (aiohttp.ClientError, json.JSONDecodeError):
                        pass
                    await asyncio.sleep(0.5)
                else:
                    raise AssertionError(
                        f"demo never became healthy with a backup: {body}\n{stderr.decode()}"
                    )
                async with session.get(f"{url}/replica?lag=16MB") as response:
                    assert response.status == 200
                async with session.get(f"{url}/status") as response:
                    assert response.status == 200
                    assert "Resolve Demo Library" in await response.text()
            banner = stdout.decode()
            assert f"{url}/status" in banner
            match = re.search(r"primary: 127\.0\.0\.1:(\d+)", banner)
            assert match, banner
            primary_port = int(match.group(1))
            assert port_open(primary_port)
            backups = list((workdir / "backups").rglob("*.backup"))
            assert backups, "no backup file published"
        finally:
            if proc.returncode is None:
                proc.send_signal(signal.SIGINT)
        code = await asyncio.wait_for(proc.wait(), 60)
    log = stderr.decode()
    assert code == 0, log
    assert "Traceback" not in log
    assert not workdir.exists(), "the demo left its directory behind"
    assert not port_open(primary_port), "the demo's primary is still running"
    assert pids_with_cwd_under(workdir.parent) == []
    workdir.parent.rmdir()


def test_demo_config_has_a_token_so_backup_now_reaches_the_demo_daemon(
    primary: PgServer, tmp_path: Path
) -> None:
    # `laterbased backup-now --config <demo>/laterbased.yaml` (README: Backups) failed with
    # "set http.token" next to the running demo; `promote` fell back to a direct promote.
    data = demo_config(tmp_path, primary, DemoOptions(upload=False, http_port=free_port()))
    config_file = tmp_path / "laterbased.yaml"
    config_file.write_text(yaml.safe_dump(data))
    config = load_config(config_file, {})
    assert config.http.token is not None and len(config.http.token.reveal()) >= 24
    token_file = Path(data["http"]["token_file"])
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
    assert config.http.token.reveal() not in config_file.read_text()
