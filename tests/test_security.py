"""Security hygiene of issue 10, beyond what tests/test_end_to_end.py already scans (children
of one full run, pages, `config show`, backup and passfile modes):

* an rclone child with an S3 remote whose secret_access_key comes from the legacy
  RCLONE_REMOTE_1_PARAM_SECRET_ACCESS_KEY: the secret is in that child's environment only
  (rclone reads it there), never in its argv, and other users cannot read the environment;
* a real daemon at --log-level debug with every kind of secret configured: none in the log,
  /healthz, /status, /status.json, /metrics or `config show` (YAML and JSON); its umask is
  0077, it listens on 127.0.0.1 only, its backups are 0600 in 0700 directories;
* the write endpoints: off (403) without a token, 401 with a wrong or missing one, and the
  comparison is constant-time (hmac.compare_digest) in every module that checks the token.
"""

from __future__ import annotations

import ast
import asyncio
import contextlib
import os
import pwd
import re
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from daemon_process import DaemonProcess, free_tcp_port
from pgserver import PgServer
from waiting import wait_for
from web_support import serving

from laterbased.config import load_config
from laterbased.core.state import State
from laterbased.offsite.rclone import Rclone, find_rclone

ROOT = Path(__file__).resolve().parent.parent
S3_SECRET = "s3-secret-" + os.urandom(8).hex()
S3_ACCESS_KEY = "AKIA" + os.urandom(6).hex().upper()
TOKEN = "api-token-" + os.urandom(8).hex()
WEBHOOK_SECRET = "hook-secret-" + os.urandom(6).hex()


def s3_environment(endpoint_port: int) -> dict[str, str]:
    """An S3 upload target the legacy way (.env), pointing at ``endpoint_port``."""
    return {
        "RCLONE_REMOTE_NAME": "vault",
        "RCLONE_REMOTE_PATH": "resolve-backups/laterbased",
        "RCLONE_REMOTE_1_NAME": "vault",
        "RCLONE_REMOTE_1_TYPE": "s3",
        "RCLONE_REMOTE_1_PARAM_PROVIDER": "Other",
        "RCLONE_REMOTE_1_PARAM_ACCESS_KEY_ID": S3_ACCESS_KEY,
        "RCLONE_REMOTE_1_PARAM_SECRET_ACCESS_KEY": S3_SECRET,
        "RCLONE_REMOTE_1_PARAM_ENDPOINT": f"http://127.0.0.1:{endpoint_port}",
    }


@contextlib.contextmanager
def silent_endpoint() -> Iterator[int]:
    """A TCP port that accepts connections and never answers: rclone waits on it."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)
        yield listener.getsockname()[1]


def children_of(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
                if int(fields[1]) == pid:
                    found.append(int(entry.name))
    return found


def readable_by_nobody(path: Path) -> bool:
    """Whether the unprivileged ``nobody`` user can read ``path`` (we are root in CI)."""
    result = subprocess.run(
        ["runuser", "-u", "nobody", "--", "cat", str(path)],
        capture_output=True, check=False, timeout=30,
    )
    return result.returncode == 0


needs_root = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("runuser") is None,
    reason="reading as another user needs root and runuser",
)


@needs_root
async def test_rclone_s3_secret_stays_in_the_childs_private_environment() -> None:
    with silent_endpoint() as port:
        config = load_config(None, {"PRIMARY_HOST": "127.0.0.1", **s3_environment(port)})
        try:
            find_rclone(config.upload)
        except Exception as exc:  # noqa: BLE001 - the message says what is missing
            pytest.skip(f"no rclone here: {exc}")
        rclone = await Rclone.open(config.upload)
        listing = asyncio.create_task(rclone.lsf(rclone.target(), timeout=60))
        try:
            deadline = time.monotonic() + 30
            child = None
            while child is None:
                assert time.monotonic() < deadline, "rclone child never started"
                assert not listing.done(), listing
                for pid in children_of(os.getpid()):
                    with contextlib.suppress(OSError):
                        if b"rclone" in Path(f"/proc/{pid}/cmdline").read_bytes():
                            child = pid
                await asyncio.sleep(0.05)
            proc = Path(f"/proc/{child}")
            cmdline = (proc / "cmdline").read_bytes()
            environ = (proc / "environ").read_bytes()
            assert b"lsf" in cmdline
            assert S3_SECRET.encode() not in cmdline
            assert S3_ACCESS_KEY.encode() not in cmdline
            # rclone reads its remote from the environment: the secret is there, for it only.
            assert f"RCLONE_CONFIG_VAULT_SECRET_ACCESS_KEY={S3_SECRET}".encode() in environ
            # ...but not our own legacy variables, which only we need.
            assert b"RCLONE_REMOTE_1_PARAM" not in environ
            assert stat.S_IMODE((proc / "environ").stat().st_mode) & 0o077 == 0
            assert not readable_by_nobody(proc / "environ")
        finally:
            listing.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await listing
    assert not Path(f"/proc/{child}").exists() or b"rclone" not in (
        Path(f"/proc/{child}/cmdline").read_bytes()
    ), "rclone child left running after cancellation"


@pytest.fixture
def workdir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="lb-security-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def listening_addresses(port: int) -> set[str]:
    """Local addresses with a LISTEN socket on ``port`` (from /proc/net/tcp and tcp6)."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                local, state = line.split()[1], line.split()[3]
                address, _, hex_port = local.partition(":")
                if state == "0A" and int(hex_port, 16) == port:
                    found.add(address)
    return found


class RefusingServer:
    """A loopback server standing in for both the S3 endpoint and the webhook receiver:
    S3 requests get 403 AccessDenied (rclone fails at once and says why on its stderr),
    webhook POSTs a 500 (the daemon logs a failed call). It keeps what it got."""

    def __init__(self) -> None:
        self.url = ""
        self.port = 0
        self.webhook_calls: list[str] = []
        self.s3_requests: list[str] = []


S3_ACCESS_DENIED = (
    '<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>AccessDenied</Code>'
    "<Message>Access Denied (test)</Message></Error>"
)


@pytest.fixture
async def refusing_server() -> AsyncIterator[RefusingServer]:
    server = RefusingServer()

    async def answer(request: web.Request) -> web.Response:
        if request.method == "POST" and request.path.startswith("/hook/"):
            server.webhook_calls.append(await request.text())
            return web.Response(status=500, text="receiver broken (test)")
        server.s3_requests.append(f"{request.method} {request.path}")
        return web.Response(status=403, text=S3_ACCESS_DENIED, content_type="application/xml")

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", answer)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    server.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    server.url = f"http://127.0.0.1:{server.port}"
    try:
        yield server
    finally:
        await runner.cleanup()


@pytest.mark.slow
async def test_debug_logs_pages_and_config_show_carry_no_secret_and_files_are_private(
    primary: PgServer, workdir: Path, refusing_server: RefusingServer
) -> None:
    database = "security probe ü"
    if primary.sql(f"SELECT count(*) FROM pg_database WHERE datname = '{database}'") == "0":
        primary.create_database(database)
        primary.sql('CREATE TABLE "SM_Project" (id int); INSERT INTO "SM_Project" VALUES (1)',
                    database)
    http_port = free_tcp_port()
    backups = workdir / "backups"
    hook = f"{refusing_server.url}/hook/{WEBHOOK_SECRET}?k={WEBHOOK_SECRET}"
    env = {
        "PRIMARY_HOST": primary.host,
        "PRIMARY_PORT": str(primary.port),
        "PRIMARY_USER": primary.superuser,
        "LOCAL_BACKUP_PATH": str(backups),
        "LATERBASED_STANDBY_ENABLED": "false",
        "LATERBASED_BACKUP_DATABASES": database,
        "LATERBASED_STATE_DIR": str(workdir / "state"),
        "LATERBASED_HTTP_PORT": str(http_port),
        "LATERBASED_UPLOAD_RETRIES": "0",
        "LATERBASED_UPLOAD_TIMEOUT": "5s",
        "LATERBASED_NOTIFY_WEBHOOK_URL": hook,
        **s3_environment(refusing_server.port),
    }
    # The secrets themselves come from files and an env file, as in production.
    env_file = workdir / "laterbased.env"
    env_file.write_text(
        f"REPL_PASSWORD={primary.superuser_password}\nLATERBASED_HTTP_TOKEN={TOKEN}\n"
    )
    env_file.chmod(0o600)
    secrets = [primary.superuser_password, TOKEN, S3_SECRET, WEBHOOK_SECRET]

    daemon = await DaemonProcess.start(
        Path(os.devnull), http_port, env=env,
        args=("--env-file", str(env_file), "--log-level", "debug"),
    )
    try:
        await daemon.wait_http(timeout=60)
        deadline = time.monotonic() + 90
        while not list(backups.rglob("*.json")):
            assert time.monotonic() < deadline, f"no backup published:\n{daemon.log}"
            assert daemon.proc.returncode is None, daemon.log
            await asyncio.sleep(0.2)
        # The secrets checks below mean something only once the paths that carry secrets
        # have run: rclone's failure against the S3 stub (its error output logged) and
        # the webhook called (with its secret URL) about that failed upload.
        await daemon.wait_log("upload failed run=", timeout=120)
        await wait_for(
            lambda: refusing_server.webhook_calls, "the webhook called", 60,
            log=lambda: daemon.log,
        )
        await daemon.wait_log("notification failed channel=webhook", timeout=60)
        pages = {}
        async with aiohttp.ClientSession() as session:
            for page in ("/healthz", "/status", "/status.json", "/metrics", "/liveness"):
                async with session.get(daemon.url + page) as response:
                    pages[page] = await response.text()
        status = Path(f"/proc/{daemon.proc.pid}/status").read_text()
        umask = next(x for x in status.splitlines() if x.startswith("Umask:"))
        assert umask.split()[1] == "0077", umask
        assert listening_addresses(http_port) == {"0100007F"}, "HTTP not bound to 127.0.0.1"
        for path in backups.rglob("*"):
            if ".partial" in path.parts:
                continue
            mode = stat.S_IMODE(path.stat().st_mode)
            assert mode == (0o700 if path.is_dir() else 0o600), f"{path}: {oct(mode)}"
        daemon.send(signal.SIGTERM)
        assert await daemon.wait_exit(timeout=60) == 0
    finally:
        await daemon.stop()

    log = daemon.log
    # A line only --log-level debug writes (each child's start), in the text format.
    assert re.search(r" DEBUG +laterbased\.proc: pg_dump .*: started pid=\d+", log), "not debug"
    assert refusing_server.s3_requests, "rclone never reached the S3 endpoint"
    assert "StatusCode: 403" in log, "rclone's own error output was not logged"
    assert "HTTP 500" in log  # the webhook's answer, logged with the URL redacted
    for secret in secrets:
        for call in refusing_server.webhook_calls:
            assert secret not in call, "a secret in the webhook's message"
    for secret in secrets:
        assert secret not in log, "a secret reached the debug log"
        for page, text in pages.items():
            assert secret not in text, f"a secret on {page}"

    environ = {k: v for k, v in os.environ.items() if not k.startswith("LATERBASED_")}
    environ |= env
    for extra in ((), ("--json",)):
        shown = subprocess.run(
            [sys.executable, "-m", "laterbased", "config", "show", "--env-file", str(env_file),
             *extra],
            capture_output=True, text=True, env=environ, check=False, timeout=60, cwd=ROOT,
        )
        assert shown.returncode == 0, shown.stderr
        assert "vault" in shown.stdout
        for secret in secrets:
            assert secret not in shown.stdout + shown.stderr, f"secret in config show {extra}"


@pytest.fixture
async def api() -> AsyncIterator[tuple[str, State]]:
    config = load_config(None, {"PRIMARY_HOST": "127.0.0.1", "LATERBASED_STANDBY_ENABLED": "0"})
    state = State(config=config)
    async with serving(state) as url:
        yield url, state


WRITE_ENDPOINTS = ("/api/backup", "/api/promote")


async def test_write_endpoints_are_off_without_a_token_and_need_the_right_one(
    api: tuple[str, State],
) -> None:
    url, state = api
    async with aiohttp.ClientSession() as session:
        for path in WRITE_ENDPOINTS:
            for headers in ({}, {"Authorization": "Bearer anything"}):
                async with session.post(url + path, headers=headers) as response:
                    assert response.status == 403, (path, headers)
                    assert "token" in (await response.text())
        with_token = load_config(
            None,
            {"PRIMARY_HOST": "127.0.0.1", "LATERBASED_STANDBY_ENABLED": "0",
             "LATERBASED_HTTP_TOKEN": TOKEN},
        )
        state.config = with_token
        for path in WRITE_ENDPOINTS:
            for headers in (
                {},
                {"Authorization": "Bearer wrong"},
                {"Authorization": f"Basic {TOKEN}"},
                {"Authorization": f"Bearer {TOKEN}x"},
                {"Authorization": f"Bearer {TOKEN[:-1]}"},
            ):
                async with session.post(url + path, headers=headers) as response:
                    assert response.status == 401, (path, headers)
                    assert TOKEN not in await response.text()
            async with session.get(url + path) as response:
                assert response.status == 405, path


def token_checks(tree: ast.AST) -> tuple[list[ast.AST], list[ast.Compare]]:
    """hmac.compare_digest calls, and ``==``/``!=`` comparisons that involve a token."""
    digests: list[ast.AST] = []
    plain: list[ast.Compare] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and ast.unparse(node.func).endswith("compare_digest"):
            digests.append(node)
        if isinstance(node, ast.Compare) and any(
            isinstance(op, ast.Eq | ast.NotEq) for op in node.ops
        ):
            text = ast.unparse(node)
            if "token" in text.lower() and "None" not in text:
                plain.append(node)
    return digests, plain


def test_every_token_check_is_constant_time() -> None:
    checkers = []
    for path in sorted((ROOT / "laterbased").rglob("*.py")):
        source = path.read_text("utf-8")
        if "Authorization" not in source:
            continue
        digests, plain = token_checks(ast.parse(source))
        if digests or plain:
            checkers.append(path.relative_to(ROOT).as_posix())
        assert plain == [], f"{path}: token compared with ==: {[ast.unparse(p) for p in plain]}"
        if "request.headers" in source:  # a server side that reads Authorization
            assert digests, f"{path} checks a bearer token without hmac.compare_digest"
    # Every POST /api/<action> is answered by the web part: one token check for all.
    assert "laterbased/web/actions.py" in set(checkers)


def test_http_binds_loopback_unless_configured() -> None:
    assert load_config(None, {"PRIMARY_HOST": "db"}).http.host == "127.0.0.1"
    example = (ROOT / "config" / "laterbased.example.yaml").read_text()
    assert "127.0.0.1" in example
    assert pwd.getpwuid(os.geteuid())  # sanity: the test runs as a real user
