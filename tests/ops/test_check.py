"""laterbased check against a real primary, a real streaming standby, real pg_dump and rclone."""

from __future__ import annotations

import json
import shutil
import socket
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from backup_files import publish_real_backup
from config_support import quiet_config
from pgserver import NASTY_PASSWORD, PgServer, free_port
from streaming_standby import StreamingStandby

from laterbased import cli
from laterbased.config import Config, HttpConfig, load_config
from laterbased.core.state import State
from laterbased.ops.check.checks import CheckResult, Facts, check_http_port, exit_code, run_checks
from laterbased.records.catalogue import Catalogue
from laterbased.web.server import HttpServer, build_app

pytestmark = pytest.mark.slow

SLOT = "laterbase_standby_slot"


@dataclass
class GoodSetup:
    server: PgServer
    replica: StreamingStandby
    work: Path

    def environ(self, **overrides: str) -> dict[str, str]:
        env = {
            "PRIMARY_HOST": self.server.host,
            "PRIMARY_PORT": str(self.server.port),
            "PRIMARY_USER": self.server.replication_user,
            "REPL_PASSWORD": NASTY_PASSWORD,
            "PGDATA": str(self.replica.data_dir),
            "LOCAL_BACKUP_PATH": str(self.work / "backups"),
            "LATERBASED_STATE_DIR": str(self.work / "state"),
            "LATERBASED_HTTP_PORT": str(free_port()),
            "RCLONE_REMOTE_NAME": "vault",
            "RCLONE_REMOTE_PATH": str(self.work / "remote"),
            "RCLONE_REMOTE_1_NAME": "vault",
            "RCLONE_REMOTE_1_TYPE": "local",
        }
        env.update(overrides)
        return {k: v for k, v in env.items() if v != ""}

    def config(self, **overrides: str) -> Config:
        return load_config(None, self.environ(**overrides))


@pytest.fixture(scope="module")
def good(pg_bindir: Path) -> Iterator[GoodSetup]:
    server = PgServer(pg_bindir)
    work = Path(tempfile.mkdtemp(prefix="laterbased-check-"))
    replica = StreamingStandby(server, SLOT, user=server.replication_user, password=NASTY_PASSWORD)
    try:
        server.sql(f"SELECT pg_create_physical_replication_slot('{SLOT}', true)")
        # As prepare-primary leaves it: the slot's WAL is bounded (check has a line for it).
        server.sql("ALTER SYSTEM SET max_slot_wal_keep_size = '10GB'")
        server.sql("SELECT pg_reload_conf()")
        deadline = time.monotonic() + 30
        while server.sql("SHOW max_slot_wal_keep_size") != "10GB":
            assert time.monotonic() < deadline, "max_slot_wal_keep_size not reloaded"
            time.sleep(0.1)
        done = replica.basebackup()
        assert done.returncode == 0, done.stderr
        replica.start(until_streaming=True)
        publish_real_backup(server, Catalogue(work / "backups"))
        yield GoodSetup(server, replica, work)
    finally:
        replica.cleanup()
        server.cleanup()
        shutil.rmtree(work, ignore_errors=True)


def by_name(results: list[CheckResult]) -> dict[str, CheckResult]:
    return {r.name: r for r in results}


def describe(results: list[CheckResult]) -> str:
    return "\n".join(f"{r.status} {r.name}: {r.message} {r.hint}" for r in results)


async def test_good_setup_is_all_ok(good: GoodSetup) -> None:
    results = await run_checks(good.config())
    assert all(r.status == "OK" for r in results), describe(results)
    names = set(by_name(results))
    assert {
        "configuration",
        "primary reachable",
        "authentication",
        "replication privilege",
        "pg_hba replication",
        "wal_level",
        f"slot {SLOT}",
        "max_slot_wal_keep_size",
        "standby binaries",
        "pg_dump",
        "standby identity",
        "collation",
        "settings for Linux",
        "backup directory",
        "newest backup",
        "rclone remote",
        "http port",
    } <= names
    assert "active" in by_name(results)[f"slot {SLOT}"].message
    assert "clone of this primary" in by_name(results)["standby identity"].message
    assert exit_code(results) == 0


async def test_wrong_password_fails_auth_and_replication_lines(good: GoodSetup) -> None:
    results = await run_checks(good.config(REPL_PASSWORD="not-the-password"))
    found = by_name(results)
    assert found["authentication"].status == "FAIL"
    assert "REPL_PASSWORD" in found["authentication"].hint
    assert found["pg_hba replication"].status == "FAIL"
    assert "not-the-password" not in describe(results)
    assert exit_code(results) == 2


async def test_unwritable_backup_dir_fails(good: GoodSetup) -> None:
    # We are root, so permissions cannot stop us: a path below a regular file can.
    blocker = good.work / "a-file"
    blocker.write_text("not a directory")
    results = await run_checks(good.config(LOCAL_BACKUP_PATH=str(blocker / "backups")))
    line = by_name(results)["backup directory"]
    assert line.status == "FAIL"
    assert "not a directory" in line.message


async def test_rclone_remote_down_fails(good: GoodSetup) -> None:
    results = await run_checks(
        good.config(
            RCLONE_REMOTE_1_TYPE="webdav",
            RCLONE_REMOTE_1_PARAM_URL=f"http://127.0.0.1:{free_port()}/dav",
            RCLONE_REMOTE_PATH="backups",
        )
    )
    line = by_name(results)["rclone remote"]
    assert line.status == "FAIL", describe(results)
    assert "not reachable" in line.message


async def test_stale_backup_warns(good: GoodSetup) -> None:
    results = await run_checks(good.config(LATERBASED_BACKUP_STALE_AFTER="0s"))
    line = by_name(results)["newest backup"]
    assert line.status == "WARN"
    assert "stale for postgres" in line.message


async def test_busy_http_port_warns(good: GoodSetup) -> None:
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        results = await run_checks(good.config(LATERBASED_HTTP_PORT=str(port)))
    assert by_name(results)["http port"].status == "WARN"


async def test_hba_missing_slot_inactive_slot_and_foreign_standby(
    good: GoodSetup, make_primary: Callable[..., PgServer]
) -> None:
    other = make_primary()
    other.append_hba("")  # keep the harness' lines, then drop the replication one
    hba = other.data_dir / "pg_hba.conf"
    hba.write_text(
        "".join(
            line + "\n"
            for line in hba.read_text().splitlines()
            if line.strip() and not line.startswith("host replication")
        )
    )
    other.reload()
    env = {"PRIMARY_HOST": other.host, "PRIMARY_PORT": str(other.port)}
    results = await run_checks(good.config(**env))
    found = by_name(results)
    assert found["pg_hba replication"].status == "FAIL", describe(results)
    assert "prepare-primary" in found["pg_hba replication"].hint
    # The slot is missing on this primary while the standby data dir is already a clone.
    assert found[f"slot {SLOT}"].status == "FAIL"
    assert "missing" in found[f"slot {SLOT}"].message
    # ... and that clone belongs to another cluster.
    assert found["standby identity"].status == "FAIL"
    assert "another cluster" in found["standby identity"].message

    # Not cloned yet: a missing slot is only a warning (the bootstrap creates it).
    fresh_env = {**env, "PGDATA": str(good.work / "not-cloned")}
    found = by_name(await run_checks(good.config(**fresh_env)))
    assert found[f"slot {SLOT}"].status == "WARN"

    # An inactive slot holding WAL: WARN with the amount.
    other.sql(f"SELECT pg_create_physical_replication_slot('{SLOT}', true)")
    other.sql(
        "CREATE TABLE filler AS SELECT g, repeat('x', 200) AS pad FROM generate_series(1, 20000) g"
    )
    other.sql("SELECT pg_switch_wal()")
    found = by_name(await run_checks(good.config(**fresh_env)))
    line = found[f"slot {SLOT}"]
    assert line.status == "WARN"
    assert "inactive" in line.message and "retains" in line.message
    assert "0 B" not in line.message


def test_cli_json_and_exit_code(
    good: GoodSetup, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    secret = tmp_path / "repl_password"
    secret.write_text(NASTY_PASSWORD + "\n")
    env_file = tmp_path / ".env"
    env_file.write_text(
        "".join(
            f"{k}={v}\n"
            for k, v in good.environ(LATERBASED_BACKUP_STALE_AFTER="0s").items()
            if k != "REPL_PASSWORD"
        )
        + f"REPL_PASSWORD_FILE={secret}\n"
    )
    code = cli.main(["check", "--env-file", str(env_file), "--json"])
    out = capsys.readouterr().out
    data = json.loads(out)
    assert code == 1, out
    assert data["status"] == "WARN"
    assert NASTY_PASSWORD not in out
    code = cli.main(["check", "--env-file", str(env_file)])
    out = capsys.readouterr().out
    assert code == 1
    assert "WARN  newest backup" in out


def test_invalid_configuration_is_a_failure_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    env_file = tmp_path / ".env"
    env_file.write_text("PRIMARY_PORT=54x2\n")
    code = cli.main(["check", "--env-file", str(env_file)])
    out = capsys.readouterr().out
    assert code == 2
    assert "FAIL  configuration  primary.port" in out


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
