"""The whole story, as a facility would live it, against real servers and a real rclone remote.

prepare-primary → check → `laterbased run` (subprocess, config file, remote from the legacy
RCLONE_REMOTE_1_* names) → standby streaming, a backup published and uploaded, /healthz 200,
/metrics valid → a write on the primary shows on the standby → restore of the newest backup
into a new database with equal row counts → SIGTERM → exit 0, nothing left running.
Along the way: no secret in any child's argv or environment, in logs or on any page, and
private file modes on everything written.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest
import yaml
from daemon_process import DaemonProcess, free_tcp_port
from pgserver import NASTY_PASSWORD, PgServer

from laterbased.ops.demo.sample_library import create_sample_library
from laterbased.proc import pids_with_cwd_under

pytestmark = pytest.mark.slow

LIBRARY = 'Resolve "Main" Library ü'
RESTORED = "Restored Library 2026"


def laterbased(*args: str, env: dict[str, str] | None = None,
               timeout: float = 120) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("LATERBASED_")}
    environ |= env or {}
    return subprocess.run(
        [sys.executable, "-m", "laterbased", *args],
        capture_output=True, text=True, env=environ, timeout=timeout, check=False,
    )


def descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (postgres backends start sessions of their own, but
    they stay children of the postmaster, which stays a child of the daemon)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(entry.name))
    found: list[int] = []
    stack = [pid]
    while stack:
        for child in children.get(stack.pop(), []):
            found.append(child)
            stack.append(child)
    return found


def read_proc(pid: int, name: str) -> bytes:
    try:
        return (Path("/proc") / str(pid) / name).read_bytes()
    except OSError:
        return b""


def port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


async def wait_for(condition: Any, timeout: float, what: str, log: Any = None) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = await condition()
        if last:
            return last
        await asyncio.sleep(0.5)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}\n{log() if log else ''}")


@pytest.fixture
def workdir() -> Iterator[Path]:
    # The standby runs as the postgres user: its files cannot live under pytest's 0700 tmp.
    path = Path(tempfile.mkdtemp(prefix="lb-e2e-"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def resolve_primary(make_primary: Any) -> PgServer:
    """A fresh primary whose postgres superuser has the nastiest password we know, holding
    an (empty) database for a Resolve-like library whose name needs quoting, and no
    replication slot yet."""
    server: PgServer = make_primary()
    server.sql(f"ALTER ROLE postgres PASSWORD '{NASTY_PASSWORD.replace(chr(39), chr(39) * 2)}'")
    server.superuser_password = NASTY_PASSWORD
    server.write_passfile()
    server.create_database(LIBRARY)
    return server


async def test_the_whole_story(resolve_primary: PgServer, workdir: Path) -> None:
    primary = resolve_primary
    conn = await primary.connect(LIBRARY)
    try:
        await create_sample_library(conn, timelines_per_project=2)
    finally:
        await conn.close()

    password_file = workdir / "repl_password"
    password_file.write_text(NASTY_PASSWORD + "\n")
    password_file.chmod(0o600)
    offsite = workdir / "offsite"
    http_port = free_tcp_port()
    standby_port = free_tcp_port()
    config_path = workdir / "laterbased.yaml"
    config_path.write_text(yaml.safe_dump({
        "primary": {"host": primary.host, "port": primary.port, "user": "postgres"},
        "standby": {"data_dir": str(workdir / "standby"), "port": standby_port},
        "monitor": {"interval": "1s"},
        "backup": {
            "directory": str(workdir / "backups"),
            "schedule": "* * * * * */20",
            "skip_unchanged": False,
        },
        "http": {"port": http_port, "token": "e2e-api-token-value"},
        "state_dir": str(workdir / "state"),
    }))
    # The secret and the remote come the legacy way, from the environment (.env in compose).
    env = {
        "REPL_PASSWORD_FILE": str(password_file),
        "RCLONE_REMOTE_NAME": "offsite",
        "RCLONE_REMOTE_PATH": str(offsite),
        "RCLONE_REMOTE_1_NAME": "offsite",
        "RCLONE_REMOTE_1_TYPE": "local",
    }
    secrets = [NASTY_PASSWORD, "e2e-api-token-value"]

    # 1. prepare the primary: slot created, replication connection proven.
    prepared = laterbased(
        "prepare-primary", "--config", str(config_path), "--password-file", str(password_file),
        env=env,
    )
    assert prepared.returncode == 0, prepared.stdout + prepared.stderr
    assert primary.sql(
        "SELECT count(*) FROM pg_replication_slots WHERE slot_name = 'laterbase_standby_slot'"
    ) == "1"

    # 2. the doctor finds nothing that fails.
    checked = laterbased("check", "--config", str(config_path), env=env)
    assert checked.returncode in (0, 1), checked.stdout + checked.stderr
    assert "FAIL" not in checked.stdout

    # 3. the daemon, as systemd would run it.
    daemon = await DaemonProcess.start(config_path, http_port, env=env)
    try:
        await daemon.wait_http(timeout=60)
        url = daemon.url
        async with aiohttp.ClientSession() as session:

            async def healthy_with_upload() -> bool:
                async with session.get(f"{url}/healthz") as response:
                    if response.status != 200:
                        return False
                return any(offsite.rglob("*.backup")) and any(offsite.rglob("*.json"))

            await wait_for(healthy_with_upload, 120, "healthy + a backup uploaded",
                           lambda: daemon.log)
            async with session.get(f"{url}/replica?lag=16MB") as response:
                assert response.status == 200
            async with session.get(f"{url}/primary") as response:
                assert response.status == 503  # we are a replica
            async with session.get(f"{url}/metrics") as response:
                metrics_text = await response.text()
            pages = {}
            for page in ("/status", "/status.json", "/metrics", "/healthz"):
                async with session.get(url + page) as response:
                    pages[page] = await response.text()

        promtool = shutil.which("promtool")
        if promtool:
            lint = subprocess.run([promtool, "check", "metrics"], input=metrics_text,
                                  capture_output=True, text=True, check=False, timeout=60)
            assert lint.returncode == 0, lint.stdout + lint.stderr
        assert "laterbased_replication_lag_bytes" in metrics_text

        # 4. a write on the primary shows on the standby.
        writer = await primary.connect(LIBRARY)
        try:
            await writer.execute(
                'INSERT INTO public."SM_Project" ("SM_Project_id", "ProjectName") '
                "VALUES (gen_random_uuid(), 'Written during the story')"
            )
        finally:
            await writer.close()
        standby = await asyncpg.connect(host="127.0.0.1", port=standby_port, user="postgres",
                                        password=NASTY_PASSWORD, database=LIBRARY, timeout=10)
        try:
            async def replicated() -> bool:
                count = await standby.fetchval(
                    'SELECT count(*) FROM public."SM_Project" '
                    "WHERE \"ProjectName\" = 'Written during the story'"
                )
                return bool(count == 1)

            await wait_for(replicated, 30, "the write to reach the standby")
            assert await standby.fetchval("SELECT pg_is_in_recovery()") is True
        finally:
            await standby.close()

        # 5. no secret in any child's argv or environment, in logs or on any page.
        children = descendants(daemon.proc.pid)
        assert children, "the daemon has no children (no standby?)"
        for pid in children:
            for name in ("cmdline", "environ"):
                blob = read_proc(pid, name)
                for secret in secrets:
                    assert secret.encode() not in blob, f"secret in /proc/{pid}/{name}"
        for page, text in pages.items():
            for secret in secrets:
                assert secret not in text, f"secret on {page}"
        shown = laterbased("config", "show", "--config", str(config_path), env=env)
        for secret in secrets:
            assert secret not in shown.stdout + shown.stderr

        # 6. private modes on everything written.
        for path in (workdir / "backups").rglob("*"):
            mode = stat.S_IMODE(path.stat().st_mode)
            expected = 0o700 if path.is_dir() else 0o600
            assert mode == expected, f"{path} has mode {oct(mode)}"
        for passfile in (workdir / "state").rglob("*pass*"):
            if passfile.is_file():
                assert stat.S_IMODE(passfile.stat().st_mode) == 0o600, passfile

        # 7. restore the newest backup into a new database; the rows match.
        restored = laterbased(
            "restore", "--config", str(config_path), "--database", LIBRARY, "--latest",
            "--target-db", RESTORED, env=env, timeout=300,
        )
        assert restored.returncode == 0, restored.stdout + restored.stderr
        for table in ('"SM_Project"', '"SM_Timeline"', '"Sm2SysIdEntry"', '"BtVideoInfo"'):
            source = primary.sql(f"SELECT count(*) FROM public.{table}", LIBRARY)
            copy = primary.sql(f"SELECT count(*) FROM public.{table}", RESTORED)
            # the story's extra row may or may not be in the newest dump; never fewer rows
            assert int(copy) >= int(source) - 1 and int(copy) > 0, table

        # 8. SIGTERM: exit 0, nothing left running.
        daemon.send(signal.SIGTERM)
        assert await daemon.wait_exit(timeout=60) == 0
    finally:
        await daemon.stop()
    log = daemon.log
    for secret in secrets:
        assert secret not in log, "a secret reached the log"
    assert "Traceback" not in log
    assert not port_open(standby_port), "the standby is still running"
    assert pids_with_cwd_under(workdir) == []
    assert all(not Path(f"/proc/{pid}").exists() for pid in children)
