"""The test PostgreSQL server itself: the foundation every integration test stands on."""

from __future__ import annotations

import os
import pwd
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from pgserver import NASTY_PASSWORD, PgServer

from laterbased.pg.connect import PgUnavailable, connect
from laterbased.proc import pid_alive, pids_with_cwd_under

pytestmark = pytest.mark.slow


async def test_replicator_connects_with_nasty_password_and_runs_sql(primary: PgServer) -> None:
    assert primary.replication_password == NASTY_PASSWORD
    conn = await connect(
        host=primary.host,
        port=primary.port,
        user=primary.replication_user,
        password=primary.replication_password,
        database="postgres",
        timeout=10,
    )
    try:
        assert await conn.fetchval("SELECT current_user") == "replicator"
        assert await conn.fetchval("SELECT rolreplication FROM pg_roles "
                                   "WHERE rolname = current_user")
        assert await conn.fetchval("SELECT current_setting('wal_level')") == "replica"
    finally:
        await conn.close()


async def test_wrong_password_is_reported_as_auth_failure_without_the_password(
    primary: PgServer,
) -> None:
    with pytest.raises(PgUnavailable) as caught:
        await connect(
            host=primary.host,
            port=primary.port,
            user=primary.replication_user,
            password="wrong-secret-xyz",
            database="postgres",
            timeout=10,
        )
    assert caught.value.reason == "auth"
    assert "wrong-secret-xyz" not in str(caught.value)


async def test_unreachable_server_is_reported_as_unreachable(free_port: int) -> None:
    with pytest.raises(PgUnavailable) as caught:
        await connect(
            host="127.0.0.1", port=free_port, user="x", password="y", database="z", timeout=5
        )
    assert caught.value.reason == "unreachable"


def test_replication_protocol_works_with_passfile(primary: PgServer) -> None:
    argv = [
        str(primary.bindir / "psql"),
        "-X", "-A", "-t",
        f"host={primary.host} port={primary.port} user={primary.replication_user} "
        "dbname=replication replication=true",
        "-c", "IDENTIFY_SYSTEM",
    ]
    result = subprocess.run(
        argv,
        capture_output=True,
        text=True,
        check=False,
        timeout=30,
        env={**os.environ, "PGPASSFILE": str(primary.passfile)},
        stdin=subprocess.DEVNULL,
    )
    assert result.returncode == 0, result.stderr
    system_id = primary.sql("SELECT system_identifier FROM pg_control_system()")
    assert result.stdout.startswith(system_id + "|")
    assert NASTY_PASSWORD not in " ".join(argv)


def test_server_runs_as_unprivileged_user_in_shared_tmp(primary: PgServer) -> None:
    pid = primary.pid
    assert pid is not None and pid_alive(pid)
    owner = Path(f"/proc/{pid}").stat().st_uid
    if os.geteuid() == 0:
        assert owner == pwd.getpwnam("postgres").pw_uid
    else:
        assert owner == os.geteuid()
    assert primary.base_dir.parent == Path(os.environ.get("TMPDIR", "/tmp"))
    assert (primary.data_dir.stat().st_mode & 0o777) == 0o700


def test_private_server_settings_stop_and_cleanup_leave_nothing(
    make_primary: Callable[..., PgServer],
) -> None:
    server = make_primary(wal_level="logical", max_slot_wal_keep_size="1MB")
    assert server.sql("SHOW wal_level") == "logical"
    assert server.sql("SHOW max_slot_wal_keep_size") == "1MB"
    server.set_conf(work_mem="7MB")
    assert server.sql("SHOW work_mem") == "7MB"
    server.create_database("it's a \"db\"")
    assert server.sql("SELECT count(*) FROM pg_database WHERE datname = 'it''s a \"db\"'") == "1"
    server.restart()
    pid = server.pid
    assert pid is not None
    base = server.base_dir
    server.cleanup()
    assert not pid_alive(pid)
    assert not base.exists()
    assert pids_with_cwd_under(base) == []


def test_cleanup_after_a_crash_kills_leftover_backends(
    make_primary: Callable[..., PgServer],
) -> None:
    server = make_primary()
    postmaster = server.pid
    assert postmaster is not None
    backends = [p for p in pids_with_cwd_under(server.data_dir) if p != postmaster]
    assert backends, "a running server has auxiliary processes"
    os.kill(postmaster, 9)  # simulate a crash: backends are orphaned in their own sessions
    server.cleanup()
    server.wait_until(
        lambda: not any(pid_alive(p) for p in [postmaster, *backends]),
        10,
        "every process of the crashed server gone",
    )


def test_no_password_in_any_command_line(primary: PgServer) -> None:
    secrets = [primary.replication_password.encode(), primary.superuser_password.encode()]
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            text = cmdline.read_bytes()
        except OSError:
            continue
        assert not any(secret in text for secret in secrets), cmdline
