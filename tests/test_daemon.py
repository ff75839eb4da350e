"""The daemon as users run it: a real `laterbased run` subprocess, real signals, real sockets."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import sys
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from config_support import quiet_config
from daemon_process import DaemonProcess, free_tcp_port, minimal_config, write_config
from waiting import wait_for

from laterbased.daemon import Daemon, Worker
from laterbased.errors import EXIT_REFUSE, RefuseToRun

pytestmark = pytest.mark.slow


@pytest.fixture
async def daemon(tmp_path: Path) -> AsyncIterator[DaemonProcess]:
    config = minimal_config(tmp_path)
    path = write_config(tmp_path / "laterbased.yaml", config)
    process = await DaemonProcess.start(path, config["http"]["port"])
    try:
        await process.wait_http()
        yield process
    finally:
        await process.stop()


async def test_sigterm_stops_cleanly_with_exit_0(daemon: DaemonProcess) -> None:
    async with aiohttp.ClientSession() as session, session.get(f"{daemon.url}/healthz") as r:
        assert r.status in (200, 503)
        body = await r.json()
        assert {c["name"] for c in body["checks"]} >= {"daemon"}
    daemon.send(signal.SIGTERM)
    assert await daemon.wait_exit(timeout=10) == 0
    assert "received SIGTERM: shutting down" in daemon.log
    assert "Traceback" not in daemon.log


async def test_sigint_stops_cleanly_with_exit_0(daemon: DaemonProcess) -> None:
    daemon.send(signal.SIGINT)
    assert await daemon.wait_exit(timeout=10) == 0


async def primary_port_in_use(daemon: DaemonProcess) -> int:
    """The primary port the running daemon works with, as /status.json reports it."""
    async with aiohttp.ClientSession() as session, session.get(f"{daemon.url}/status.json") as r:
        port: int = (await r.json())["primary"]["port"]
        return port


async def wait_for_primary_port(daemon: DaemonProcess, port: int) -> None:
    async def shown() -> bool:
        return await primary_port_in_use(daemon) == port

    await wait_for(
        shown, f"/status.json showing the reloaded primary port {port}", 20, log=lambda: daemon.log
    )


async def reload_primary_port(daemon: DaemonProcess, path: Path) -> int:
    """Point the configuration at another primary port, SIGHUP, and return that port."""
    config = yaml.safe_load(path.read_text())
    config["primary"]["port"] = new_port = free_tcp_port()
    write_config(path, config)
    daemon.send(signal.SIGHUP)
    return new_port


async def test_sighup_applies_a_good_config_and_keeps_serving(
    daemon: DaemonProcess, tmp_path: Path
) -> None:
    # The effect, not the "reload applied" line: a reload that logs and applies nothing
    # must fail here.
    new_port = await reload_primary_port(daemon, tmp_path / "laterbased.yaml")
    await wait_for_primary_port(daemon, new_port)


async def test_sighup_with_a_bad_config_keeps_the_old_one(
    daemon: DaemonProcess, tmp_path: Path
) -> None:
    path = tmp_path / "laterbased.yaml"
    path.write_text(path.read_text() + "http_port_typo: 1\nmonitor: {interval: soon}\n")
    daemon.send(signal.SIGHUP)
    await daemon.wait_log("reload rejected: keeping the previous configuration")
    assert "http_port_typo: unknown key" in daemon.log
    assert "monitor.interval: must be a duration" in daemon.log
    await daemon.wait_http(timeout=5)
    daemon.send(signal.SIGTERM)
    assert await daemon.wait_exit() == 0


async def test_port_in_use_is_a_clear_error(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = minimal_config(tmp_path, http={"port": port})
        path = write_config(tmp_path / "laterbased.yaml", config)
        process = await DaemonProcess.start(path, port)
        code = await process.wait_exit()
    assert code == 69
    assert f"cannot listen on http://127.0.0.1:{port}" in process.log
    assert "Traceback" not in process.log


async def test_bad_config_exits_78_listing_every_problem(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("primary: {port: x}\nbackup: {schedule: '61 * * * *'}\nnope: 1\n")
    process = await DaemonProcess.start(path, free_tcp_port())
    assert await process.wait_exit() == 78
    log = process.log
    assert "primary.port: must be a whole number" in log
    assert "backup.schedule: invalid cron expression" in log
    assert "nope: unknown key" in log
    assert "primary.host: required" in log
    assert "Traceback" not in log


async def test_runs_from_environment_alone(tmp_path: Path) -> None:
    port = free_tcp_port()
    env = {
        "PRIMARY_HOST": "127.0.0.1",
        "PRIMARY_PORT": str(free_tcp_port()),
        "REPL_PASSWORD": "env-only-secret-pw",
        "LATERBASED_STANDBY_ENABLED": "false",
        "LATERBASED_BACKUP_ENABLED": "false",
        "LATERBASED_HTTP_PORT": str(port),
        "LATERBASED_STATE_DIR": str(tmp_path / "state"),
    }
    environ = {k: v for k, v in os.environ.items() if not k.startswith("LATERBASED_")} | env
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "laterbased", "run", "--log-level", "debug",
        env=environ, stderr=asyncio.subprocess.PIPE,
    )
    process = DaemonProcess(proc, port)
    try:
        await process.wait_http()
        process.send(signal.SIGTERM)
        assert await process.wait_exit() == 0
    finally:
        await process.stop()
    assert "env-only-secret-pw" not in process.log


class NotifySocket:
    """A real AF_UNIX datagram socket standing in for systemd's notify socket."""

    def __init__(self) -> None:
        # Unix socket paths are short (108 bytes): use the system temp dir, not tmp_path.
        self.directory = tempfile.mkdtemp(prefix="lb-notify-")
        self.path = os.path.join(self.directory, "notify")
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        self.sock.setblocking(False)
        self.messages: list[str] = []

    def count(self, text: str) -> int:
        return sum(text in message for message in self.messages)

    async def wait_for(self, text: str, timeout: float = 10.0, *, times: int = 1) -> None:
        """Read datagrams until ``times`` of them (in all) contain ``text``."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self.count(text) < times:
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise AssertionError(f"{text!r} not sent {times} times; got {self.messages}")
            try:
                data = await asyncio.wait_for(loop.sock_recv(self.sock, 4096), remaining)
            except TimeoutError:
                continue
            self.messages.append(data.decode())

    def close(self) -> None:
        self.sock.close()
        os.unlink(self.path)
        os.rmdir(self.directory)


async def test_systemd_notify_protocol(tmp_path: Path) -> None:
    notify = NotifySocket()
    try:
        config = minimal_config(tmp_path)
        path = write_config(tmp_path / "laterbased.yaml", config)
        process = await DaemonProcess.start(
            path,
            config["http"]["port"],
            env={"NOTIFY_SOCKET": notify.path, "WATCHDOG_USEC": "400000"},
        )
        try:
            await notify.wait_for("READY=1")
            # systemd kills a service whose pings stop: one ping is not enough, they must
            # go on (every 0.2 s here, half of WATCHDOG_USEC). A daemon that pinged only
            # once or twice fails at the deadline, however slow the machine.
            pinged = notify.count("WATCHDOG=1")
            await notify.wait_for("WATCHDOG=1", timeout=30, times=pinged + 6)
            process.send(signal.SIGHUP)
            await notify.wait_for("RELOADING=1")
            reload_message = next(m for m in notify.messages if "RELOADING=1" in m)
            assert "MONOTONIC_USEC=" in reload_message
            process.send(signal.SIGTERM)
            await notify.wait_for("STOPPING=1")
            assert await process.wait_exit() == 0
        finally:
            await process.stop()
    finally:
        notify.close()


async def test_systemd_abstract_notify_socket(tmp_path: Path) -> None:
    name = f"laterbased-test-{os.getpid()}-{free_tcp_port()}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind("\0" + name)
    sock.settimeout(10)
    try:
        config = minimal_config(tmp_path)
        path = write_config(tmp_path / "laterbased.yaml", config)
        process = await DaemonProcess.start(
            path, config["http"]["port"], env={"NOTIFY_SOCKET": "@" + name}
        )
        try:
            data = await asyncio.get_running_loop().run_in_executor(None, sock.recv, 4096)
            assert b"READY=1" in data
        finally:
            await process.stop()
    finally:
        sock.close()


def test_pidfd_child_watcher_reaps_children_on_python_3_11() -> None:
    import subprocess

    code = (
        "import asyncio, sys\n"
        "from laterbased.daemon import use_pidfd_child_watcher\n"
        "from laterbased import proc\n"
        "async def main():\n"
        "    used = use_pidfd_child_watcher()\n"
        "    results = [await proc.run(['true'], log_name='t') for _ in range(20)]\n"
        "    print(used, {r.returncode for r in results})\n"
        "asyncio.run(main())\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    used, codes = result.stdout.strip().split(" ", 1)
    assert codes == "{0}"
    assert used == str(sys.version_info < (3, 12))


async def test_repeated_sigterm_while_stopping_still_exits_0(daemon: DaemonProcess) -> None:
    # Handlers stay installed until shutdown is over: a second (impatient) SIGTERM, as
    # `docker stop` or an operator sends, must not take the default action mid-shutdown.
    for _ in range(5):
        try:
            daemon.send(signal.SIGTERM)
        except ProcessLookupError:
            break  # already gone: it was quicker than we were
        await asyncio.sleep(0.005)
    assert await daemon.wait_exit(timeout=10) == 0
    assert "Traceback" not in daemon.log


async def test_sighup_queued_during_start_up_is_applied(tmp_path: Path) -> None:
    config = minimal_config(tmp_path)
    path = write_config(tmp_path / "laterbased.yaml", config)
    process = await DaemonProcess.start(path, config["http"]["port"])
    try:
        await process.wait_log("http listening")
        new_port = await reload_primary_port(process, path)
        await process.wait_http(timeout=10)
        await wait_for_primary_port(process, new_port)
    finally:
        await process.stop()


async def test_refusing_daemon_logs_the_exit_code_it_really_ends_with(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # A second daemon on a busy data directory refused (exit 3) but logged
    # "laterbased stopped exit_code=0" as its last line: journalctl readers believed it.
    async def refuse(ctx: Any) -> None:
        raise RefuseToRun("someone else's server runs on the data directory")

    daemon = Daemon(quiet_config(), workers=[Worker("standby", refuse)])
    caplog.set_level(logging.INFO, logger="laterbased.daemon")
    with pytest.raises(RefuseToRun):
        await daemon.serve()
    stopped = [r.getMessage() for r in caplog.records if "laterbased stopped" in r.getMessage()]
    assert stopped == [f"laterbased stopped exit_code={EXIT_REFUSE}"]


async def test_a_refusal_inside_a_workers_task_group_stops_the_daemon_not_retries(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def refuse_from_a_task(ctx: Any) -> None:
        async with asyncio.TaskGroup() as group:

            async def inner() -> None:
                raise RefuseToRun("slot name taken by a logical slot")

            group.create_task(inner())

    daemon = Daemon(quiet_config(), workers=[Worker("standby", refuse_from_a_task)])
    with pytest.raises(RefuseToRun, match="logical slot"):
        await asyncio.wait_for(daemon.serve(), 10)
    assert daemon.state.worker_restarts["standby"] == 0
    assert not [r for r in caplog.records if "crashed" in r.getMessage()]
