"""The backup jobs stop, kill and delete only what is provably their own, and never follow a
planted symbolic link: the .partial directory, a database's directory, a leftover pg_dump, a
leftover restore-drill cluster (issue 14, items 4, 7). Real PostgreSQL, real processes."""

from __future__ import annotations

import asyncio
import os
import signal
import stat
import subprocess
from pathlib import Path

import asyncpg
import pytest
from backup_support import make_config
from bystanders import survived, victim_with_an_open_file
from daemon_process import DaemonProcess, minimal_config, write_config
from pgserver import PgServer, ensure_postgres_user, free_port
from waiting import wait_for

from laterbased.backup.drill import DRILL_PREFIX, remove_leftovers
from laterbased.backup.dump import run_dumps
from laterbased.pg.binaries import find_bindir
from laterbased.proc import pid_alive, pids_with_cwd_under
from laterbased.records.catalogue import Catalogue, writers_into

pytestmark = pytest.mark.slow


async def test_a_symlinked_partial_dir_is_refused_and_its_target_and_processes_are_untouched(
    primary: PgServer, state_dir: Path
) -> None:
    backup_dir = state_dir / "backups"
    backup_dir.mkdir()
    with victim_with_an_open_file() as (victim, sleeper):
        (backup_dir / ".partial").symlink_to(victim)
        config = minimal_config(
            state_dir,
            primary={"host": primary.host, "port": primary.port, "user": primary.superuser,
                     "password": primary.superuser_password},
            backup={"enabled": True, "directory": str(backup_dir), "databases": ["postgres"]},
        )
        config_path = write_config(state_dir / "laterbased.yaml", config)
        daemon = await DaemonProcess.start(config_path, config["http"]["port"])
        try:
            assert await daemon.wait_exit(timeout=60) == 3
        finally:
            await daemon.stop()
        assert f"{backup_dir / '.partial'} is a symbolic link" in daemon.log
        assert survived(sleeper), "a foreign process was killed"
        assert (victim / "precious.log").exists()
        assert stat.S_IMODE(victim.stat().st_mode) == 0o755


async def test_clean_partial_kills_our_leftover_pg_dump_but_no_other_program(
    primary: PgServer, pg_major: int, tmp_path: Path
) -> None:
    catalogue = Catalogue(tmp_path / "backups")
    catalogue.prepare()
    primary.sql("CREATE TABLE IF NOT EXISTS held_by_a_lock (id int)")
    bindir = find_bindir(str(pg_major), None)
    # A pg_dump that stays at work: it waits for a lock an open transaction holds.
    locker = await asyncpg.connect(
        host=primary.host, port=primary.port, user=primary.superuser,
        password=primary.superuser_password, database="postgres",
    )
    try:
        await locker.execute("BEGIN; LOCK TABLE held_by_a_lock IN ACCESS EXCLUSIVE MODE")
        with open(catalogue.new_partial("postgres-x.backup"), "wb") as out:
            dump = subprocess.Popen(
                [str(bindir / "pg_dump"), "--format=custom", "--no-password",
                 f"--dbname=host={primary.host} port={primary.port} dbname=postgres "
                 f"user={primary.superuser}"],
                stdout=out, env={**os.environ, "PGPASSWORD": primary.superuser_password},
            )
        with open(catalogue.partial / "not-a-dump.out", "wb") as out:
            other = subprocess.Popen(["sleep", "300"], stdout=out)
        try:
            await wait_for(lambda: {dump.pid, other.pid} <= set(writers_into(catalogue.partial)),
                           "both processes have their file open")
            await wait_for(
                lambda: "held_by_a_lock" in primary.sql(
                    "SELECT string_agg(query, ' ') FROM pg_stat_activity WHERE wait_event_type"
                    " = 'Lock'") or dump.poll() is not None,
                "pg_dump waiting for the lock",
            )
            assert dump.poll() is None
            assert catalogue.clean_partial() == 2
            assert await asyncio.to_thread(dump.wait, 10) == -signal.SIGKILL
            assert survived(other), "a process that is not our pg_dump was killed"
            assert list(catalogue.partial.iterdir()) == []
        finally:
            for process in (dump, other):
                if process.poll() is None:
                    process.kill()
                    process.wait()
    finally:
        await locker.close()


async def test_a_link_planted_while_the_daemon_runs_fails_the_dump_run_and_is_not_followed(
    primary: PgServer, tmp_path: Path
) -> None:
    backup_dir = tmp_path / "backups"
    catalogue = Catalogue(backup_dir)
    held = catalogue.claim()  # the daemon took the directory at its start
    try:
        config = make_config(primary, backup_dir, databases=("postgres",), skip_unchanged=False)
        with victim_with_an_open_file() as (victim, sleeper):
            catalogue.partial.rmdir()
            catalogue.partial.symlink_to(victim)
            outcomes = await run_dumps(config, catalogue, "dump-planted-link")
            assert [(o.database, o.result) for o in outcomes] == [("*", "failed")]
            assert f"{catalogue.partial} is a symbolic link" in outcomes[0].detail
            assert sorted(p.name for p in victim.iterdir()) == ["precious.log"]
            assert stat.S_IMODE(victim.stat().st_mode) == 0o755
            assert survived(sleeper)
    finally:
        held.release()


async def test_a_leftover_drill_cluster_is_killed_and_removed_but_a_shell_inside_is_not(
    pg_bindir: Path, state_dir: Path
) -> None:
    user = ensure_postgres_user()
    state_dir.chmod(0o711)  # the postgres user passes through, as _make_work_dir arranges
    leftover = state_dir / f"{DRILL_PREFIX}killed"
    leftover.mkdir()
    os.chown(leftover, user.pw_uid, user.pw_gid)
    data = leftover / "data"
    subprocess.run([str(pg_bindir / "initdb"), "-D", str(data), "-A", "trust", "-U", "drill"],
                   user=user.pw_uid, group=user.pw_gid, cwd="/", check=True,
                   capture_output=True, timeout=120)
    # What a daemon killed mid-drill leaves: a temporary cluster running unsupervised.
    server = subprocess.Popen(
        [str(pg_bindir / "postgres"), "-D", str(data), "-k", str(leftover),
         "-p", str(free_port()), "-c", "listen_addresses="],
        user=user.pw_uid, group=user.pw_gid, cwd="/",
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    shell = subprocess.Popen(["sleep", "300"], cwd=data)
    try:
        await wait_for(lambda: len(pids_with_cwd_under(leftover)) >= 3,
                       "the leftover cluster's postmaster and its helpers")
        ours = [pid for pid in pids_with_cwd_under(leftover) if pid != shell.pid]
        assert remove_leftovers(state_dir) == 1
        assert await asyncio.to_thread(server.wait, 10) == -signal.SIGKILL
        await wait_for(lambda: not any(pid_alive(pid) for pid in ours),
                       "every process of the leftover cluster gone")
        assert survived(shell), "a process that is not a postgres was killed"
        assert not leftover.exists()
    finally:
        for process in (server, shell):
            if process.poll() is None:
                process.kill()
                process.wait()


async def test_a_link_planted_as_one_databases_directory_fails_that_database_only(
    primary: PgServer, tmp_path: Path
) -> None:
    other = "ownership_other_db"
    if not primary.sql(f"SELECT 1 FROM pg_database WHERE datname = '{other}'"):
        primary.sql(f"CREATE DATABASE {other}")
    backup_dir = tmp_path / "backups"
    catalogue = Catalogue(backup_dir)
    held = catalogue.claim()
    try:
        config = make_config(primary, backup_dir, databases=("postgres", other),
                             skip_unchanged=False)
        with victim_with_an_open_file() as (victim, sleeper):
            catalogue.database_dir("postgres").symlink_to(victim)
            outcomes = await run_dumps(config, catalogue, "dump-planted-db-link")
            results = {o.database: o.result for o in outcomes}
            assert results == {"postgres": "failed", other: "success"}, outcomes
            assert "is a symbolic link" in outcomes[0].detail
            assert sorted(p.name for p in victim.iterdir()) == ["precious.log"]
            assert stat.S_IMODE(victim.stat().st_mode) == 0o755
            assert survived(sleeper)
    finally:
        held.release()
