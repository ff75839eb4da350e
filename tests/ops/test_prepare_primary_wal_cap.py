"""prepare-primary bounds the slot it creates (issue 19): max_slot_wal_keep_size is set
(10GB) unless --no-wal-cap, and said so; ``check`` tells whether the cap is set; the
pg_hba.conf line is "ok" only when the server really admits replication from this host."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from pgserver import PgServer
from prepare_support import ROLE, SLOT, config_for, options_for

from laterbased.config import Config
from laterbased.ops.check.checks import run_checks
from laterbased.ops.prepare_primary.steps import prepare_primary

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]


def quiet_config_for(server: PgServer) -> Config:
    return config_for(server, LATERBASED_BACKUP_ENABLED="false", LATERBASED_HTTP_ENABLED="false")


async def cap_line(config: Config) -> tuple[str, str, str]:
    [line] = [r for r in await run_checks(config) if r.name == "max_slot_wal_keep_size"]
    return line.status, line.message, line.hint


async def test_prepare_primary_bounds_the_slot_it_creates_and_check_sees_the_cap(
    make_primary: Callable[..., PgServer],
) -> None:
    server = make_primary()
    config = quiet_config_for(server)
    report = await prepare_primary(config, options_for(server))  # no --apply
    assert report.ready, report.as_dict()
    steps = {step.name: step for step in report.steps}
    assert steps["max_slot_wal_keep_size"].status == "changed"
    assert "10GB" in steps["max_slot_wal_keep_size"].message
    assert "--no-wal-cap" in steps["max_slot_wal_keep_size"].message
    assert steps["slot"].status == "changed"
    assert server.sql("SHOW max_slot_wal_keep_size") == "10GB"
    # The slot is bounded: PostgreSQL reports how much more WAL it may keep.
    assert server.sql(
        f"SELECT safe_wal_size IS NOT NULL FROM pg_replication_slots WHERE slot_name = '{SLOT}'"  # noqa: S608
    ) == "t"
    status, message, _ = await cap_line(config)
    assert status == "OK" and "10.0 GiB" in message, message


async def test_no_wal_cap_leaves_it_unlimited_and_check_warns(
    make_primary: Callable[..., PgServer],
) -> None:
    server = make_primary()
    config = quiet_config_for(server)
    report = await prepare_primary(config, options_for(server, wal_cap=False))
    steps = {step.name: step for step in report.steps}
    assert steps["max_slot_wal_keep_size"].status == "warn"
    assert server.sql("SHOW max_slot_wal_keep_size") == "-1"
    status, message, hint = await cap_line(config)
    assert status == "WARN" and "unlimited" in message
    assert "prepare-primary" in hint and "max_slot_wal_keep_size = '10GB'" in hint


def test_dry_run_does_not_call_a_missing_replication_line_ok(
    make_primary: Callable[..., PgServer], tmp_path: Path
) -> None:
    server = make_primary()
    # As Resolve's installer leaves it: ordinary connections, no replication line.
    (server.data_dir / "pg_hba.conf").write_text(
        "local all all trust\nhost all all 127.0.0.1/32 scram-sha-256\n"
    )
    server.reload()
    server.sql(f"CREATE ROLE {ROLE} LOGIN REPLICATION PASSWORD 'x'")
    secret = tmp_path / "admin"
    secret.write_text(server.superuser_password)
    role_secret = tmp_path / "role"
    role_secret.write_text("x")
    env = {
        "PATH": "/usr/bin:/bin",
        "PRIMARY_HOST": server.host,
        "PRIMARY_PORT": str(server.port),
        "PRIMARY_USER": ROLE,
        "LATERBASED_HTTP_ENABLED": "false",
    }
    done = subprocess.run(
        [
            sys.executable, "-m", "laterbased", "prepare-primary", "--dry-run",
            "--admin-user", server.superuser, "--password-file", str(secret),
            "--role-password-file", str(role_secret), "--create-role", ROLE,
        ],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 1, done.stdout + done.stderr
    lines = [line for line in done.stdout.splitlines() if "] pg_hba.conf:" in line]
    assert len(lines) == 1, done.stdout
    assert "MISSING" in lines[0] and "ok]" not in lines[0], done.stdout
    assert "host    replication    laterbase_repl    127.0.0.1/32" in done.stdout
    assert "would ALTER SYSTEM SET max_slot_wal_keep_size = '10GB'" in done.stdout
    assert server.sql("SHOW max_slot_wal_keep_size") == "-1"  # a dry run changes nothing
