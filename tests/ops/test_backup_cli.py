"""``backup-now`` (in-process and through a running daemon), ``backups list``, verify."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from backup_files import publish_real_backup
from backup_support import CLI_DB, ROOT, cli, environment, make_config, publish
from pgserver import PgServer, free_port

from laterbased import cli as laterbased_cli
from laterbased.backup.runner import run_verify_job
from laterbased.core.state import State
from laterbased.records.catalogue import Catalogue

pytestmark = pytest.mark.slow
DB = CLI_DB


@pytest.fixture(scope="module")
def cli_db(primary: PgServer) -> str:
    primary.create_database(DB)
    primary.sql('CREATE TABLE "SM_Project" (id int); INSERT INTO "SM_Project" VALUES (1)', DB)
    return DB


@pytest.fixture
def workdir() -> Iterator[Path]:
    base = Path(tempfile.mkdtemp(prefix="laterbased-cli-test-"))
    try:
        yield base
    finally:
        subprocess.run(["rm", "-rf", str(base)], check=False)


def test_backup_now_without_daemon_runs_the_chain_and_list_shows_it(
    primary: PgServer, cli_db: str, workdir: Path
) -> None:
    env = environment(primary, workdir, free_port(), None)
    done = cli(env, "backup-now", "--json")
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["result"] == "success"
    assert [s["step"] for s in result["steps"]] == ["dump", "prune"]
    listed = cli(env, "backups", "list", "--json")
    assert listed.returncode == 0, listed.stderr
    [row] = json.loads(listed.stdout)
    assert row["database"] == cli_db and row["keep"] is True
    assert "newest" in row["kept_by"]
    table = cli(env, "backups", "list", "--database", cli_db)
    assert cli_db in table.stdout and "newest" in table.stdout
    failing = cli(env, "backup-now", "--database", "no such db")
    assert failing.returncode == 1
    assert "failed" in failing.stdout


def test_backup_now_without_daemon_cleans_partial_first_unless_another_process_holds_it(
    primary: PgServer, cli_db: str, workdir: Path
) -> None:
    env = environment(primary, workdir, free_port(), None)
    catalogue = Catalogue(workdir / "backups")
    catalogue.prepare()
    leftover = catalogue.new_partial("db-x.dump")
    leftover.write_bytes(b"half a dump of an interrupted run")
    # An orphaned pg_dump of a killed run, still writing into .partial: a real pg_dump,
    # kept waiting by a lock held on another database (only a provable pg_dump of ours is
    # ever killed; a stand-in program would rightly be left alone).
    other = "orphan source " + os.urandom(3).hex()
    primary.create_database(other)
    primary.sql("CREATE TABLE held (id int)", other)
    env_pg = {**os.environ, "PGPASSFILE": str(primary.passfile)}
    holder = subprocess.Popen(
        [*primary.psql_argv(other), "-c",
         "BEGIN; LOCK TABLE held IN ACCESS EXCLUSIVE MODE; SELECT pg_sleep(120)"],
        env=env_pg, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    primary.wait_until(
        lambda: primary.sql(
            "SELECT count(*) FROM pg_locks WHERE mode = 'AccessExclusiveLock' "
            "AND relation IS NOT NULL AND granted"
        ) != "0",
        30,
        "the lock holder to take its lock",
    )
    with open(catalogue.partial / "orphan.out", "wb") as out:
        orphan = subprocess.Popen(
            [str(primary.bindir / "pg_dump"), "--no-password", "-Fc", "-h", primary.host,
             "-p", str(primary.port), "-U", primary.superuser, "-d", other],
            env=env_pg, stdout=out, stderr=subprocess.DEVNULL,
        )
    primary.wait_until(
        lambda: primary.sql(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'pg_dump' "
            "AND wait_event_type = 'Lock'"
        ) != "0",
        30,
        "the orphan pg_dump to wait for its lock",
    )
    try:
        # Another laterbased process owns the directory (a daemon with HTTP off): hands off.
        with catalogue.lock():
            busy = cli(env, "backup-now")
        assert busy.returncode == 1
        assert f"another laterbased process (pid {os.getpid()})" in busy.stderr
        assert leftover.exists() and orphan.poll() is None, "nothing touched while busy"
        assert catalogue.list_backups() == []

        done = cli(env, "backup-now", "--json")
        assert done.returncode == 0, done.stderr
        assert orphan.wait(10) == -9, "the orphaned writer is killed"
        assert list(catalogue.partial.iterdir()) == [], ".partial emptied before the run"
        assert "removed 2 unfinished backup file(s)" in done.stderr
        assert len(catalogue.list_backups()) == 1
    finally:
        for process in (orphan, holder):
            if process.poll() is None:
                process.kill()
                process.wait()


def test_backup_now_asks_the_running_daemon_with_its_token(
    primary: PgServer, cli_db: str, workdir: Path
) -> None:
    port = free_port()
    for index, token in enumerate((None, "tok-" + os.urandom(6).hex())):
        env = environment(primary, workdir, port, token)
        log_path = workdir / f"daemon-{index}.log"
        with open(log_path, "ab") as log:
            daemon = subprocess.Popen(
                [sys.executable, "-m", "laterbased", "run"],
                env=env,
                cwd=ROOT,
                stdout=subprocess.DEVNULL,
                stderr=log,
            )
        try:
            deadline = time.monotonic() + 60
            while "laterbased ready" not in log_path.read_text():
                assert daemon.poll() is None, log_path.read_text()
                assert time.monotonic() < deadline, "daemon did not become ready"
                time.sleep(0.1)
            # Without http.token the command presents the daemon's local token (issue 19).
            done = cli(env, "backup-now")
            assert done.returncode == 0, done.stdout + done.stderr
            run_id = done.stdout.split()[1].rstrip(":")
            assert f"run={run_id}" in log_path.read_text()
        finally:
            daemon.terminate()
            assert daemon.wait(60) == 0


async def test_verify_marks_good_and_damaged_backups(
    primary: PgServer, cli_db: str, workdir: Path
) -> None:
    config = make_config(primary, workdir / "backups", databases=(cli_db,))
    state = State(config=config)
    from laterbased.backup.runner import run_backup_chain

    assert (await run_backup_chain(state)).result == "success"
    outcome = await run_verify_job(state)
    assert outcome["result"] == "success", outcome
    [record] = Catalogue(workdir / "backups").list_backups()
    assert record.verified is True and "pg_restore --list ok" in (record.verify_detail or "")
    with open(record.path, "r+b") as handle:
        handle.seek(record.size // 2)
        handle.write(b"\xff\x00garbage")
    outcome = await asyncio.wait_for(run_verify_job(state), 60)
    assert outcome["result"] == "failed"
    [record] = Catalogue(workdir / "backups").list_backups()
    assert record.verified is False and "checksum mismatch" in (record.verify_detail or "")
    assert state.job("verify").runs == {"success": 1, "failed": 1}


def test_backups_list_escapes_names_that_would_break_the_table_and_flags_future_dates(
    primary: PgServer, workdir: Path
) -> None:
    env = environment(primary, workdir, free_port(), None)
    catalogue = Catalogue(workdir / "backups")
    now = datetime.now(UTC)
    broken = "Grade\nFAKE  2020-01-01 00:00:00 UTC"  # a line break in a database name
    publish(catalogue, broken, now - timedelta(hours=3), b"1")
    publish(catalogue, "(globals)", now - timedelta(hours=2), b"2")
    publish(catalogue, DB, now + timedelta(days=2), b"3")  # the clock ran two days fast
    publish(catalogue, DB, now - timedelta(hours=1), b"4")

    table = cli(env, "backups", "list")
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    assert len(lines) == 1 + 4 + 1, "header, one line per backup, total: " + table.stdout
    assert any(line.startswith("'Grade\\nFAKE  2020-01-01 00:00:00 UTC' ") for line in lines)
    # A database called "(globals)" is not shown like the globals' row would be.
    assert any(line.startswith("'(globals)' ") for line in lines), lines
    own = [line for line in lines if line.startswith(DB)]
    future = [line for line in own if "dated in the future" in line]
    assert len(own) == 2 and len(future) == 1, lines
    assert "newest" not in future[0], "never the newest"
    assert "newest" in next(line for line in own if line not in future), lines

    listed = cli(env, "backups", "list", "--json")
    rows = json.loads(listed.stdout)
    assert [row["database"] for row in rows if row["future"]] == [DB]
    assert broken in [row["database"] for row in rows]


def test_backups_list_says_which_databases_are_gone_from_the_primary(
    primary: PgServer, workdir: Path
) -> None:
    """A library dropped on the primary (a restored copy dropped again, a renamed one): its
    backups stay, listed as "database gone"; one that exists is not marked; with the primary
    unreachable nothing is called gone."""
    kept = "kept library " + os.urandom(3).hex()
    dropped = "dropped library " + os.urandom(3).hex()
    primary.create_database(kept)
    env = environment(primary, workdir, free_port(), None)
    catalogue = Catalogue(workdir / "backups")
    now = datetime.now(UTC)
    publish(catalogue, kept, now - timedelta(hours=2), b"1")
    publish(catalogue, dropped, now - timedelta(hours=1), b"2")

    table = cli(env, "backups", "list")
    assert table.returncode == 0, table.stderr
    line_of = {name: next(x for x in table.stdout.splitlines() if x.startswith(name))
               for name in (kept, dropped)}
    assert "database gone" in line_of[dropped], table.stdout
    assert "database gone" not in line_of[kept], table.stdout
    listed = json.loads(cli(env, "backups", "list", "--json").stdout)
    rows = {row["database"]: row for row in listed}
    assert (rows[dropped]["database_gone"], rows[kept]["database_gone"]) == (True, False)

    unreachable = env | {"PRIMARY_PORT": str(free_port())}
    table = cli(unreachable, "backups", "list")
    assert table.returncode == 0, table.stderr
    assert "database gone" not in table.stdout, "absence from an unreachable server proves nothing"


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
    code = laterbased_cli.main(
        ["backups", "list", "--config", str(config_file), "--database", "Postgres"]
    )
    out = capsys.readouterr().out
    assert code == 0
    assert "no backups of 'Postgres' in " in out
    assert "backed-up databases: 'postgres'" in out
