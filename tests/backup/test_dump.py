"""The dump job against a real PostgreSQL server and a Resolve-like database."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import stat
import subprocess
import tempfile
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import asyncpg
import pytest
import pytest_asyncio
from backup_support import RESOLVE_DB, build_resolve_db, db_digest, make_config
from child_argv import record_child_argv
from pgserver import PgServer
from waiting import wait_for

from laterbased.backup.dump import discover_databases, primary_server, run_dumps
from laterbased.records.catalogue import Catalogue, encode_name

pytestmark = pytest.mark.slow


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def resolve_db(primary: PgServer) -> AsyncIterator[str]:
    await build_resolve_db(primary, RESOLVE_DB)
    yield RESOLVE_DB


@pytest.fixture
def backup_dir() -> Iterator[Path]:
    base = Path(tempfile.mkdtemp(prefix="laterbased-dump-test-"))
    try:
        yield base / "backups"
    finally:
        subprocess.run(["rm", "-rf", str(base)], check=False)


def restore(server: PgServer, dump: Path, target: str) -> None:
    quoted = '"' + target.replace('"', '""') + '"'
    server.sql(f"CREATE DATABASE {quoted} TEMPLATE template0 ENCODING 'UTF8'")
    result = subprocess.run(
        [
            str(server.bindir / "pg_restore"),
            "--exit-on-error",
            "--no-password",
            "-h", server.host,
            "-p", str(server.port),
            "-U", server.superuser,
            "-d", target,
            str(dump),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PGPASSFILE": str(server.passfile)},
        check=False,
    )
    assert result.returncode == 0, result.stderr


async def test_dump_restores_into_new_utf8_database_with_same_rows_and_bytes(
    primary: PgServer, resolve_db: str, backup_dir: Path
) -> None:
    config = make_config(primary, backup_dir, databases=(resolve_db,), skip_unchanged=False)
    outcomes = await run_dumps(config, Catalogue(backup_dir), "dump-test-1")
    assert [o.result for o in outcomes] == ["success"], outcomes
    record = outcomes[0].record
    assert record is not None
    # The file lives under the encoded name; the manifest keeps the real one.
    assert record.path.parent == backup_dir / encode_name(resolve_db)
    assert record.path.name.endswith(".backup")
    assert stat.S_IMODE(record.path.stat().st_mode) == 0o600
    assert stat.S_IMODE(record.path.parent.stat().st_mode) == 0o700
    listed = Catalogue(backup_dir).list_backups(resolve_db)
    assert [r.database for r in listed] == [resolve_db]
    assert listed[0].size == record.path.stat().st_size
    assert listed[0].pg_dump_version and "PostgreSQL" in listed[0].pg_dump_version
    # pg_dump of the server's own major, also with a newer one installed beside it: Resolve's
    # own Restore (pg_restore 13 on Resolve 18-20) may not read a newer pg_dump's archive.
    major = primary.bindir.parent.name
    assert f"(PostgreSQL) {major}." in listed[0].pg_dump_version, listed[0].pg_dump_version
    assert not list((backup_dir / ".partial").iterdir()), "nothing left in .partial"

    target = "restored ü " + os.urandom(3).hex()
    restore(primary, record.path, target)
    assert await db_digest(primary, target) == await db_digest(primary, resolve_db)


async def test_plain_gzip_format_writes_a_gzip_sql_file(
    primary: PgServer, resolve_db: str, backup_dir: Path
) -> None:
    config = make_config(
        primary, backup_dir, databases=(resolve_db,), format="plain-gzip", skip_unchanged=False
    )
    outcomes = await run_dumps(config, Catalogue(backup_dir), "dump-test-gz")
    record = outcomes[0].record
    assert record is not None and record.path.name.endswith(".sql.gz")
    text = subprocess.run(
        ["gzip", "-dc", str(record.path)], capture_output=True, check=True, timeout=60
    ).stdout
    assert b'CREATE TABLE public."SM_Project"' in text
    assert b"pg_dump:" not in text, "stderr must never end up in the dump"


async def test_second_dump_of_an_unchanged_database_is_skipped(
    primary: PgServer, resolve_db: str, backup_dir: Path
) -> None:
    config = make_config(primary, backup_dir, databases=(resolve_db,))
    catalogue = Catalogue(backup_dir)
    first = await run_dumps(config, catalogue, "dump-test-a")
    assert first[0].result == "success"
    second = await run_dumps(config, catalogue, "dump-test-b")
    assert second[0].result == "unchanged", second[0].detail
    assert len(catalogue.list_backups(resolve_db)) == 1
    assert catalogue.list_backups(resolve_db)[0].confirmed_at is not None

    primary.sql('INSERT INTO "BtVideoInfo" VALUES (-1, NULL)', resolve_db)
    third = await run_dumps(config, catalogue, "dump-test-c")
    assert third[0].result == "success", "a write must produce a new backup"
    assert len(catalogue.list_backups(resolve_db)) == 2


async def test_a_write_committed_just_before_the_run_is_in_the_new_backup(
    primary: PgServer, resolve_db: str, backup_dir: Path
) -> None:
    """The data-loss case on PostgreSQL 13: its statistics reach pg_stat_database late (the
    collector), so a fingerprint of them alone called a just-written database "unchanged".
    Each round commits one row, by a client that has already gone (psql) and by one still
    connected and idle, then runs at once: the new backup must hold the row."""
    config = make_config(primary, backup_dir, databases=(resolve_db,))
    catalogue = Catalogue(backup_dir)
    assert (await run_dumps(config, catalogue, "commit-race-0"))[0].result == "success"
    writer = await primary.connect(resolve_db)
    try:
        for round_number in range(1, 7):
            row_id = -1000 - round_number
            if round_number % 2:
                primary.sql(f'INSERT INTO "BtVideoInfo" VALUES ({row_id}, NULL)', resolve_db)
            else:
                await writer.execute(f'INSERT INTO "BtVideoInfo" VALUES ({row_id}, NULL)')
            outcome = (await run_dumps(config, catalogue, f"commit-race-{round_number}"))[0]
            assert outcome.result == "success", (
                f"round {round_number}: a committed write was called {outcome.result!r}: "
                f"{outcome.detail}"
            )
            assert outcome.record is not None
            target = f"commit race {round_number} " + os.urandom(3).hex()
            restore(primary, outcome.record.path, target)
            found = primary.sql(
                f'SELECT count(*) FROM "BtVideoInfo" WHERE "VideoInfoId" = {row_id}', target
            )
            assert found.strip() == "1", f"round {round_number}: the row is not in the backup"
    finally:
        await writer.close()


async def test_a_write_in_progress_during_a_dump_is_in_the_next_backup(
    primary: PgServer, resolve_db: str, backup_dir: Path
) -> None:
    """A transaction that had written but not committed when the dump started is invisible
    to that dump; it commits afterwards without any new transaction starting. The next run
    must not call the database unchanged."""
    config = make_config(primary, backup_dir, databases=(resolve_db,))
    catalogue = Catalogue(backup_dir)
    writer = await primary.connect(resolve_db)
    try:
        transaction = writer.transaction()
        await transaction.start()
        await writer.execute('INSERT INTO "BtVideoInfo" VALUES (-2000, NULL)')
        during = (await run_dumps(config, catalogue, "in-flight-1"))[0]
        assert during.result == "success", during.detail
        await transaction.commit()
    finally:
        await writer.close()
    after = (await run_dumps(config, catalogue, "in-flight-2"))[0]
    assert after.result == "success", f"the late commit was called {after.result!r}"
    assert after.record is not None
    target = "in flight " + os.urandom(3).hex()
    restore(primary, after.record.path, target)
    found = primary.sql('SELECT count(*) FROM "BtVideoInfo" WHERE "VideoInfoId" = -2000', target)
    assert found == "1", "the late commit is not in the next backup"


async def test_discovery_finds_only_databases_with_sm_project(
    primary: PgServer, resolve_db: str
) -> None:
    primary.create_database("not resolve")
    config = make_config(primary, Path("/nonexistent"))
    found = await discover_databases(primary_server(config))
    assert resolve_db in found
    assert "not resolve" not in found and "postgres" not in found


async def test_failed_dump_publishes_nothing_and_reports_why(
    primary: PgServer, backup_dir: Path
) -> None:
    config = make_config(primary, backup_dir, databases=("no such database",))
    outcomes = await run_dumps(config, Catalogue(backup_dir), "dump-test-fail")
    assert outcomes[0].result == "failed"
    assert "no such database" in outcomes[0].detail
    assert Catalogue(backup_dir).list_backups() == []
    assert not any(p.is_file() for p in backup_dir.rglob("*") if ".partial" not in p.parts)


async def test_dump_honours_primary_sslmode(primary: PgServer, backup_dir: Path) -> None:

    config = make_config(primary, backup_dir, databases=("postgres",), skip_unchanged=False)
    strict = dataclasses.replace(
        config, primary=dataclasses.replace(config.primary, sslmode="require")
    )
    server = primary_server(strict)
    assert "sslmode=require" in server.conninfo("postgres")
    # The harness primary offers no SSL: require must fail, with the reason, and publish
    # nothing.
    outcomes = await run_dumps(strict, Catalogue(backup_dir), "dump-test-ssl")
    assert outcomes[0].result == "failed"
    assert "SSL" in outcomes[0].detail
    assert Catalogue(backup_dir).list_backups() == []


async def test_disk_full_fails_the_run_and_keeps_old_backups(
    primary: PgServer, backup_dir: Path
) -> None:
    small = "small " + os.urandom(2).hex()
    primary.create_database(small)
    primary.sql('CREATE TABLE "SM_Project" (id int); INSERT INTO "SM_Project" VALUES (1)', small)
    backup_dir.mkdir(parents=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(backup_dir)], check=True)
    try:
        config = make_config(primary, backup_dir, databases=(small,), skip_unchanged=False)
        catalogue = Catalogue(backup_dir)
        good = await run_dumps(config, catalogue, "dump-test-small")
        assert good[0].result == "success"
        # 3 MB of random bytes cannot fit in what is left of 1 MB.
        conn = await primary.connect(small)
        try:
            await conn.execute("CREATE TABLE big (b bytea)")
            for _ in range(3):
                await conn.execute("INSERT INTO big VALUES ($1)", os.urandom(1_000_000))
        finally:
            await conn.close()
        full = await run_dumps(config, catalogue, "dump-test-full")
        assert full[0].result == "failed"
        assert "No space left" in full[0].detail or "space" in full[0].detail.lower()
        records = catalogue.list_backups(small)
        assert [r.file for r in records] == [good[0].record.file]  # type: ignore[union-attr]
        assert records[0].path.stat().st_size == records[0].size
        assert not list((backup_dir / ".partial").iterdir())
    finally:
        subprocess.run(["umount", "-l", str(backup_dir)], check=False)


async def test_globals_dump_has_roles_but_no_password_hashes(
    primary: PgServer, resolve_db: str, backup_dir: Path
) -> None:
    config = make_config(
        primary, backup_dir, databases=(resolve_db,), dump_globals=True, skip_unchanged=False
    )
    outcomes = await run_dumps(config, Catalogue(backup_dir), "dump-test-globals")
    assert [o.result for o in outcomes] == ["success", "success"]
    record = outcomes[1].record
    assert record is not None and record.path.parent == backup_dir / "@globals"
    text = record.path.read_text()
    assert "CREATE ROLE replicator" in text
    assert "SCRAM-SHA-256$" not in text and "PASSWORD" not in text


async def test_the_password_never_reaches_pg_dump_or_pg_dumpall_argv(
    primary: PgServer, resolve_db: str, backup_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Any local user can read a child's argv (ps, /proc/<pid>/cmdline): the password goes
    through the passfile only."""
    children = record_child_argv(monkeypatch)
    config = make_config(
        primary, backup_dir, databases=(resolve_db,), dump_globals=True, skip_unchanged=False
    )
    outcomes = await run_dumps(config, Catalogue(backup_dir), "dump-test-argv")
    assert [o.result for o in outcomes] == ["success", "success"], outcomes
    assert {"pg_dump", "pg_dumpall"} <= set(children.programs()), children.argvs
    assert children.containing(primary.superuser_password) == []


@pytest.fixture
def work() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="laterbased-test-") as base:
        yield Path(base)


async def test_skip_unchanged_does_not_miss_a_write_whose_session_is_still_busy(
    make_primary: Callable[..., PgServer], work: Path
) -> None:
    """A backend reports its write counters to pg_stat_database only when it goes idle. A
    row committed by a session that is still running something else is invisible to the
    fingerprint: the run must not call the database unchanged (it used to skip the dump
    and confirm the old backup as fresh, with a committed row in no backup)."""
    server = make_primary()
    server.create_database("proj")
    server.sql("CREATE TABLE t (id int); INSERT INTO t VALUES (0)", database="proj")
    config = make_config(server, work / "backups", databases=("proj",))
    catalogue = Catalogue(config.backup_directory)
    [first] = await run_dumps(config, catalogue, "review-1")
    assert first.result == "success", first.detail

    writer = await server.connect("proj")
    busy = asyncio.create_task(
        writer.execute("BEGIN; INSERT INTO t VALUES (1); COMMIT; SELECT pg_sleep(30)")
    )
    try:
        await wait_for(
            lambda: server.sql("SELECT count(*) FROM t", database="proj") == "2",
            "the busy session's row committed",
            10,
        )
        [second] = await run_dumps(config, catalogue, "review-2")
    finally:
        busy.cancel()
        with contextlib.suppress(asyncio.CancelledError, asyncpg.PostgresError):
            await busy
        writer.terminate()
    assert second.result == "success", f"committed row missed: {second.result} {second.detail}"
