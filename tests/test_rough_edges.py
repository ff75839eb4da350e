"""Rough edges found by using laterbased as its README says, as an operator would at 3 a.m."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import stat
import sys
import tempfile
from pathlib import Path
from typing import Any

import pytest
import yaml
from backup_files import publish_real_backup
from pgserver import PgServer, free_port

from laterbased import cli
from laterbased.config import (
    BackupConfig,
    Config,
    HttpConfig,
    PrimaryConfig,
    Secret,
    StandbyConfig,
    load_config,
)
from laterbased.core.state import SlotState, State
from laterbased.daemon import Daemon, Worker
from laterbased.errors import EXIT_REFUSE, ConfigError, RefuseToRun
from laterbased.health import verdicts as health
from laterbased.monitor.worker import Monitor
from laterbased.ops.check.checks import Facts, check_http_port
from laterbased.ops.demo.session import DemoOptions, demo_config
from laterbased.records.catalogue import Catalogue
from laterbased.web.server import HttpServer, build_app
from laterbased.web.status import render_status_page, status_document


def quiet_config(**overrides: Any) -> Config:
    """A config with nothing that needs a server: no standby, no backups, HTTP off."""
    values: dict[str, Any] = {
        "standby": StandbyConfig(enabled=False),
        "backup": BackupConfig(enabled=False),
        "http": HttpConfig(enabled=False),
        # A private state_dir: the daemon locks its state_dir (one daemon per directory).
        "state_dir": Path(tempfile.mkdtemp(prefix="lb-rough-edges-")),
    }
    values.update(overrides)
    return Config(**values)


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


async def test_check_is_ok_when_the_port_is_held_by_the_running_laterbased() -> None:
    # `laterbased check` from cron/Nagios next to a healthy daemon exited 1 forever
    # ("127.0.0.1:8434 is in use"): the daemon itself is the one holding the port.
    server = HttpServer(build_app(State(config=quiet_config())), "127.0.0.1", 0)
    await server.start()
    try:
        config = quiet_config(http=HttpConfig(host="127.0.0.1", port=server.port))
        line = await check_http_port(Facts(config))
    finally:
        await server.stop()
    assert line is not None
    assert line.status == "OK", line
    assert "served by a running laterbased" in line.message


async def test_check_warns_when_another_program_holds_the_port() -> None:
    with socket.socket() as other:
        other.bind(("127.0.0.1", 0))
        other.listen()
        port = other.getsockname()[1]
        config = quiet_config(http=HttpConfig(host="127.0.0.1", port=port))
        line = await check_http_port(Facts(config))
    assert line is not None
    assert line.status == "WARN", line
    assert "not a laterbased" in line.message


def test_status_page_speaks_yes_no_and_names_an_uncapped_slot() -> None:
    # The page showed "Streaming True", "Exists True" and "Safe WAL size –" in the demo: Python
    # spelling, and a dash where the fact is that nothing caps the slot's WAL on the primary.
    state = State(config=Config(primary=PrimaryConfig(host="resolve.local"), timezone="UTC"))
    state.primary.reachable = True
    state.primary.slot = SlotState(
        name="laterbase_standby_slot",
        exists=True,
        active=False,
        retained_bytes=0,
        wal_status="reserved",
        safe_wal_size=None,
    )
    page = render_status_page(status_document(state, state.started_at + 5), state.config.zone)
    assert "True" not in page and "False" not in page
    assert "<th>Exists</th><td>yes</td>" in page
    assert "<th>Active</th><td>no</td>" in page
    assert "unlimited (max_slot_wal_keep_size not set on the primary)" in page


def test_relative_paths_from_an_old_env_are_refused_naming_the_variable() -> None:
    # An old Laterbase .env said LOCAL_BACKUP_PATH=./backups (relative to the compose
    # directory). laterbased took it as "backups" relative to wherever the daemon runs
    # (/ under systemd, where the unit may not write), and `config validate` said valid.
    with pytest.raises(ConfigError) as caught:
        load_config(
            None,
            {
                "PRIMARY_HOST": "192.168.1.50",
                "LOCAL_BACKUP_PATH": "./backups",
                "PGDATA": "standby",
                "LATERBASED_STATE_DIR": "~/laterbased",
            },
        )
    problems = caught.value.problems
    assert any(
        p.startswith("backup.directory: must be an absolute path, not './backups'")
        and "(from LOCAL_BACKUP_PATH)" in p
        for p in problems
    ), problems
    assert any(p.startswith("standby.data_dir: must be an absolute path") for p in problems)
    assert not any(p.startswith("state_dir") for p in problems), "~ expands to a full path"


@pytest.mark.parametrize(
    ("environment", "expected"),
    [
        ({}, "from-yaml-file"),
        ({"REPL_PASSWORD": "from-legacy-env"}, "from-legacy-env"),
        ({"LATERBASED_PRIMARY_PASSWORD": "from-laterbased-env"}, "from-laterbased-env"),
        ({"LATERBASED_PRIMARY_PASSWORD_FILE": "{env_file}"}, "from-env-file"),
        (
            {"REPL_PASSWORD_FILE": "{env_file}", "LATERBASED_PRIMARY_PASSWORD": "top"},
            "top",
        ),
    ],
)
def test_password_precedence_holds_for_secret_files(
    tmp_path: Path, environment: dict[str, str], expected: str
) -> None:
    # A YAML `password_file:` beat LATERBASED_PRIMARY_PASSWORD (and REPL_PASSWORD): trying a
    # new password from the environment silently kept the old one, against the README's
    # "YAML < legacy .env names < LATERBASED_*".
    (tmp_path / "yaml.secret").write_text("from-yaml-file\n")
    (tmp_path / "env.secret").write_text("from-env-file\n")
    config_file = tmp_path / "laterbased.yaml"
    config_file.write_text(
        f"primary:\n  host: resolve.local\n  password_file: {tmp_path / 'yaml.secret'}\n"
    )
    env = {k: v.format(env_file=tmp_path / "env.secret") for k, v in environment.items()}
    config = load_config(config_file, env)
    assert config.primary.password is not None
    assert config.primary.password.reveal() == expected


async def test_wrong_password_is_a_refused_login_not_an_unreachable_primary(
    primary: PgServer, caplog: pytest.LogCaptureFixture
) -> None:
    # /healthz said "primary: unreachable: ... password authentication failed": at 3 a.m.
    # "unreachable" sends you to the network, not to REPL_PASSWORD.
    config = quiet_config(
        primary=PrimaryConfig(
            host=primary.host,
            port=primary.port,
            user=primary.replication_user,
            password=Secret("certainly-not-the-password"),
            connect_timeout=5.0,
        ),
        timezone="UTC",
    )
    state = State(config=config)
    monitor = Monitor(state)
    caplog.set_level(logging.INFO, logger="laterbased.monitor")
    try:
        await monitor.poll_once()
    finally:
        monitor.close()
    check = health.check_primary(state, state.started_at + 1)
    assert check.severity == "critical"
    assert check.reason.startswith("login refused: "), check.reason
    assert "REPL_PASSWORD" in check.reason
    assert "primary refused our login" in caplog.text
    assert "primary unreachable" not in caplog.text
    assert "certainly-not-the-password" not in check.reason + caplog.text


def test_status_page_of_a_backup_only_daemon_with_a_refused_login() -> None:
    # A backups-only daemon showed "Streaming: no" (reads as a fault) and a wrong password
    # showed "Primary: unreachable".
    state = State(
        config=Config(
            primary=PrimaryConfig(host="resolve.local"),
            standby=StandbyConfig(enabled=False),
            timezone="UTC",
        )
    )
    state.primary.reachable = False
    state.primary.last_error = 'password authentication failed for user "postgres"'
    state.primary.last_error_reason = "auth"
    page = render_status_page(status_document(state, state.started_at + 5), state.config.zone)
    assert "no standby configured (backups only)" in page
    assert "<span class=critical>login refused</span>" in page
    assert ">unreachable<" not in page


def promote_config(tmp_path: Path, host: str, port: int, password: str) -> Path:
    config_file = tmp_path / "laterbased.yaml"
    (tmp_path / "password").write_text(password)
    config_file.write_text(
        "primary:\n"
        f"  host: {host}\n  port: {port}\n  user: postgres\n"
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
    secret = primary.replication_password if password == "right" else "not-it"
    config_file = promote_config(tmp_path, primary.host, primary.port, secret)
    code, out = await run_promote("--config", str(config_file))
    assert code == EXIT_REFUSE, out
    assert f"refusing to promote: the old primary {primary.host}:{primary.port} is still " in out
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


def test_backups_list_for_a_mistyped_database_names_the_ones_there_are(
    primary: PgServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # `backups list --database nope` said "no backups in DIR": at 3 a.m. that reads as
    # "everything is gone", when it was a typo.
    publish_real_backup(primary, Catalogue(tmp_path / "backups"))
    config_file = tmp_path / "laterbased.yaml"
    config_file.write_text(
        f"primary:\n  host: resolve.local\nbackup:\n  directory: {tmp_path / 'backups'}\n"
        f"state_dir: {tmp_path / 'state'}\n"
    )
    code = cli.main(["backups", "list", "--config", str(config_file), "--database", "Postgres"])
    out = capsys.readouterr().out
    assert code == 0
    assert "no backups of 'Postgres' in " in out
    assert "backed-up databases: 'postgres'" in out


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
