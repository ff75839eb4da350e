"""The commands on the daemon's host reach it without an ``http.token`` (issue 19): the daemon
writes a local token into its state directory, readable by root and the run-as user only,
and ``POST /api/<action>`` accepts it; a SIGHUP that changes ``http.token`` says that it
applies at once, because it does."""

from __future__ import annotations

import grp
import os
import signal
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest
from daemon_process import DaemonProcess, minimal_config, primary_section, write_config
from pgserver import PgServer, free_port

from laterbased.config import load_config
from laterbased.core.local_token import LOCAL_TOKEN_FILE
from laterbased.ops.promote import _ask_daemon as ask_daemon_to_promote

ROOT = Path(__file__).resolve().parents[2]
DB = "local token library"


@pytest.fixture
def workdir() -> Iterator[Path]:
    base = Path(tempfile.mkdtemp(prefix="laterbased-local-token-"))
    try:
        yield base
    finally:
        subprocess.run(["rm", "-rf", str(base)], check=False)


def backups_only_config(primary: PgServer, workdir: Path, port: int) -> Path:
    """A daemon that makes backups of one library, with no http.token anywhere."""
    return write_config(
        workdir / "laterbased.yaml",
        {
            "primary": primary_section(primary, superuser=True),
            "standby": {"enabled": False},
            "backup": {
                "databases": [DB],
                "catch_up": False,
                "directory": str(workdir / "backups"),
            },
            "http": {"host": "127.0.0.1", "port": port},
            "state_dir": str(workdir / "state"),
        },
    )


def cli(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LATERBASED_", "PG"))}
    return subprocess.run(
        [sys.executable, "-m", "laterbased", *args, "--config", str(config)],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.mark.slow
async def test_backup_now_reaches_the_running_daemon_without_a_configured_token(
    primary: PgServer, workdir: Path
) -> None:
    primary.create_database(DB)
    port = free_port()
    config_path = backups_only_config(primary, workdir, port)
    daemon = await DaemonProcess.start(config_path, port)
    try:
        await daemon.wait_http()
        await daemon.wait_log("laterbased ready")
        done = cli(config_path, "backup-now")
        assert done.returncode == 0, done.stdout + done.stderr
        run_id = done.stdout.split()[1].rstrip(":")
        await daemon.wait_log(f"run={run_id}")  # the daemon ran it, not this process

        token_file = workdir / "state" / LOCAL_TOKEN_FILE
        info = token_file.stat()
        # Root runs the daemon here, the standby's run-as user is postgres: its group may read.
        assert stat.S_IMODE(info.st_mode) == 0o640
        assert (info.st_uid, grp.getgrgid(info.st_gid).gr_name) == (0, "postgres")
        token = token_file.read_text().strip()
        assert len(token) >= 32
        assert token not in daemon.log

        # The same token serves promote (the command sends it; no standby here: 409, not 403).
        config = load_config(config_path, environ={})
        answer = await ask_daemon_to_promote(config, force=False)
        assert answer is not None
        status, body = answer
        assert status == 409, body
        assert "not available" in body["error"]

        # Anyone else on the host, and any other token, is refused.
        async with (
            aiohttp.ClientSession() as session,
            session.post(
                f"{daemon.url}/api/backup", headers={"Authorization": "Bearer guess"}
            ) as response,
        ):
            assert response.status == 401
        daemon.send(signal.SIGTERM)
        assert await daemon.wait_exit(60) == 0
    finally:
        await daemon.stop()


async def test_a_reload_that_changes_the_token_says_it_applies_now_and_it_does(
    workdir: Path,
) -> None:
    port = free_port()
    old, new = "old-token-" + os.urandom(6).hex(), "new-token-" + os.urandom(6).hex()
    data = minimal_config(workdir, http={"port": port, "token": old})
    config_path = write_config(workdir / "laterbased.yaml", data)
    daemon = await DaemonProcess.start(config_path, port)
    try:
        await daemon.wait_http()
        await daemon.wait_log("laterbased ready")
        data["http"]["token"] = new
        write_config(config_path, data)
        daemon.send(signal.SIGHUP)
        await daemon.wait_log("reload applied")
        assert "http.token changed; applied now" in daemon.log
        assert "takes effect after a restart" not in daemon.log
        assert old not in daemon.log and new not in daemon.log

        async def post(token: str) -> int:
            async with (
                aiohttp.ClientSession() as session,
                session.post(
                    f"{daemon.url}/api/backup", headers={"Authorization": f"Bearer {token}"}
                ) as response,
            ):
                return response.status

        assert await post(old) == 401
        assert await post(new) == 409  # accepted; no backup worker runs in this daemon
        daemon.send(signal.SIGTERM)
        assert await daemon.wait_exit(60) == 0
    finally:
        await daemon.stop()
