"""``laterbased demo``: the whole daemon against a throw-away local "Resolve" server.

For a newcomer without a Resolve server: start a local primary (initdb, as the ``postgres``
OS user when we are root) holding a Resolve-like project library and a writer that keeps
changing it, then run the real daemon against it — standby streaming, a backup every minute,
the status page and metrics. Ctrl-C stops everything and removes what was created.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import shutil
import socket
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import yaml

from laterbased.config import Config, UploadConfig, load_config
from laterbased.daemon import Daemon
from laterbased.errors import LaterbasedError, ToolMissing
from laterbased.offsite.rclone import find_rclone
from laterbased.ops.demo.sample_library import create_sample_library, touch_a_project
from laterbased.pg.localcluster import PgServer, ensure_postgres_user, find_pg_bindir

logger = logging.getLogger(__name__)

LIBRARY = "Resolve Demo Library"
WRITE_EVERY = 3.0


@dataclass
class DemoOptions:
    keep: bool = False
    http_port: int = 8434
    schedule: str = "* * * * *"
    directory: Path | None = None
    upload: bool = True


def _port_is_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _make_workdir(options: DemoOptions) -> Path:
    """A directory the daemon and (when we are root) the postgres user can both use."""
    if options.directory is not None:
        options.directory.mkdir(parents=True, exist_ok=True)
        workdir = options.directory
    else:
        workdir = Path(tempfile.mkdtemp(prefix="laterbased-demo-"))
    if os.geteuid() == 0:
        user = ensure_postgres_user()
        os.chown(workdir, user.pw_uid, user.pw_gid)
    workdir.chmod(0o755)
    return workdir


def demo_config(workdir: Path, primary: PgServer, options: DemoOptions) -> dict[str, Any]:
    """The configuration the demo daemon runs with (also written next to the data)."""
    password_file = workdir / "primary.password"
    fd = os.open(password_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(primary.superuser_password + "\n")
    # A token, so that `backup-now` and `promote` from the banner reach the demo daemon
    # instead of failing with "set http.token".
    token_file = workdir / "http.token"
    fd = os.open(token_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(secrets.token_urlsafe(24) + "\n")
    http_port = options.http_port if _port_is_free(options.http_port) else _free_port()
    config: dict[str, Any] = {
        # Resolve's own default: the postgres superuser, which may also replicate.
        "primary": {
            "host": primary.host,
            "port": primary.port,
            "user": primary.superuser,
            "password_file": str(password_file),
        },
        "standby": {
            "data_dir": str(workdir / "standby"),
            "port": _free_port(),
            "application_name": "laterbased_demo",
        },
        "monitor": {"interval": "2s"},
        "backup": {
            "directory": str(workdir / "backups"),
            "schedule": options.schedule,
            "databases": [LIBRARY],
            "retention_days": 1,
            "skip_unchanged": False,
            "verify_schedule": "*/5 * * * *",
        },
        "http": {"host": "127.0.0.1", "port": http_port, "token_file": str(token_file)},
        "state_dir": str(workdir / "state"),
        "timezone": "UTC",
    }
    if options.upload and _rclone_available():
        config["upload"] = {
            "remote": "demo-offsite",
            "path": "resolve",
            "remotes": [{"name": "demo-offsite", "type": "local", "params": {}}],
        }
        # a local-directory remote: the path is absolute on this machine
        config["upload"]["path"] = str(workdir / "offsite")
    return config


def _rclone_available() -> bool:
    try:
        find_rclone(UploadConfig())
    except ToolMissing:
        return False
    return True


async def _write_forever(primary: PgServer) -> None:
    """An 'editor' saving projects every few seconds, so replication and backups move.

    Survives the primary going away (reconnects), since the demo is also a place to try
    stopping things and watching /status react.
    """
    while True:
        try:
            conn = await primary.connect(LIBRARY)
            try:
                while True:
                    await asyncio.sleep(WRITE_EVERY)
                    name = await touch_a_project(conn)
                    logger.debug("demo writer saved project=%s", name)
            finally:
                await conn.close(timeout=2)
        except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError) as exc:
            logger.warning("demo writer: %s; retrying", exc)
            await asyncio.sleep(WRITE_EVERY)


def _banner(config: Config, primary: PgServer, workdir: Path, options: DemoOptions) -> str:
    url = f"http://{config.http.host}:{config.http.port}"
    upload = (
        f"\n  off-site:  {config.upload.remote}:{config.upload.path} (rclone, local remote)"
        if config.upload.enabled
        else ""
    )
    ending = (
        "Ctrl-C stops everything; --keep was given, so the files stay in " + str(workdir)
        if options.keep
        else "Ctrl-C stops everything and removes " + str(workdir)
    )
    return f"""
laterbased demo is running.
  "Resolve" primary: 127.0.0.1:{primary.port}, database "{LIBRARY}"
                     (a writer saves a project every {WRITE_EVERY:.0f}s)
  standby:   127.0.0.1:{config.standby.port}, streaming through slot {config.standby.slot_name}
  status:    {url}/status          (open it in a browser)
  health:    {url}/healthz   {url}/replica?lag=1MB
  metrics:   {url}/metrics
  backups:   {config.backup_directory}  (schedule '{config.backup.schedule}'){upload}
  try:       laterbased backups list --config {workdir / "laterbased.yaml"}
             laterbased backup-now --config {workdir / "laterbased.yaml"}
{ending}
"""


async def _announce_when_ready(daemon: Daemon, text: str) -> None:
    await daemon.ready.wait()
    print(text, flush=True)


async def _run(config: Config, primary: PgServer, workdir: Path, options: DemoOptions) -> int:
    daemon = Daemon(config, loader=lambda: load_config(workdir / "laterbased.yaml", {}))
    fatal: LaterbasedError | None = None
    async with asyncio.TaskGroup() as group:
        writer = group.create_task(_write_forever(primary))
        announcer = group.create_task(
            _announce_when_ready(daemon, _banner(config, primary, workdir, options))
        )
        try:
            code = await daemon.serve()
        except LaterbasedError as exc:
            # Raised outside the task group, so the CLI reports it as a plain message
            # instead of an exception group traceback.
            fatal = exc
        finally:
            writer.cancel()
            announcer.cancel()
    if fatal is not None:
        raise fatal
    return code


def run_demo(options: DemoOptions) -> int:
    """Set up, run until Ctrl-C/SIGTERM, tear down. Returns the exit code."""
    try:
        bindir = find_pg_bindir()
    except RuntimeError as exc:
        raise ToolMissing(
            f"the demo needs PostgreSQL server binaries: {exc}. "
            "Install them with: sudo bash scripts/setup"
        ) from exc
    workdir = _make_workdir(options)
    primary: PgServer | None = None
    try:
        print(f"starting a throw-away primary with {bindir}/postgres …", file=sys.stderr)
        primary = PgServer(bindir)
        primary.create_database(LIBRARY)
        asyncio.run(_fill_library(primary))
        config_data = demo_config(workdir, primary, options)
        config_path = workdir / "laterbased.yaml"
        config_path.write_text(yaml.safe_dump(config_data, sort_keys=False, allow_unicode=True))
        config = load_config(config_path, {})
        return asyncio.run(_run(config, primary, workdir, options))
    finally:
        if primary is not None and not options.keep:
            primary.cleanup()
        elif primary is not None:
            primary.stop()
            print(
                f"kept: primary data in {primary.base_dir}, demo files in {workdir}",
                file=sys.stderr,
            )
        if not options.keep:
            with contextlib.suppress(OSError):
                shutil.rmtree(workdir)


async def _fill_library(primary: PgServer) -> None:
    conn = await primary.connect(LIBRARY)
    try:
        await create_sample_library(conn)
    finally:
        await conn.close()
