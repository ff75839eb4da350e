"""Resolve's own Restore must read every backup (issue 13).

Resolve's Project Manager restores a library with its bundled ``pg_restore`` (13 on Resolve
18-20) and offers ``.backup`` files. So custom archives are named ``.backup`` (older
``.dump`` ones keep working), every backup is read with the pg_restore of its server's
major, a backup written by a newer pg_dump says so in its manifest, ``backups list``,
``check`` and the log, and each format restores with the server's own client."""

from __future__ import annotations

import dataclasses
import gzip
import logging
import os
import shutil
import subprocess
import tempfile
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from backup_files import publish_real_backup
from backup_support import build_resolve_db, cli, db_digest, environment, make_config
from pgserver import PgServer, free_port

from laterbased.backup.dump import run_dumps
from laterbased.backup.prune import RetentionPolicy, prune
from laterbased.backup.runner import run_verify_job
from laterbased.config import Config
from laterbased.core.state import State
from laterbased.ops.check.checks import Facts, check_binaries
from laterbased.ops.restore.steps import RestoreRequest, restore
from laterbased.records.catalogue import Catalogue

pytestmark = pytest.mark.slow

PG_ROOT = Path("/usr/lib/postgresql")
SOURCE = "Resolve Restore ü's 1"

# Exact rows of every user table, whatever the tables are (what Resolve would show).
TABLE_ROWS = """
SELECT n.nspname || '.' || c.relname AS name,
       (xpath('/row/c/text()', query_to_xml(format('SELECT count(*) AS c FROM %I.%I',
                                                   n.nspname, c.relname), false, true, '')
       ))[1]::text::bigint AS rows
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind IN ('r', 'p') AND n.nspname NOT IN ('pg_catalog', 'information_schema')
ORDER BY 1
"""
LARGE_OBJECTS = """
SELECT count(*) AS n,
       md5(string_agg(oid::text || ':' || md5(lo_get(oid)), ',' ORDER BY oid)) AS digest
FROM pg_largeobject_metadata
"""


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def source(primary: PgServer) -> AsyncIterator[str]:
    await build_resolve_db(primary, SOURCE, blob_rows=4)
    # A large object of its own, so a restore that drops them cannot pass unnoticed.
    primary.sql("SELECT lo_from_bytea(0, convert_to('Resolve still image ✓', 'UTF8'))", SOURCE)
    yield SOURCE


@pytest.fixture
def work() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="laterbased-resolve-restore-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def fresh_utf8_database(server: PgServer, label: str) -> str:
    name = f"{label} {os.urandom(3).hex()}"
    server.sql(f"CREATE DATABASE \"{name}\" TEMPLATE template0 ENCODING 'UTF8'")
    return name


async def content(server: PgServer, database: str) -> dict[str, Any]:
    conn = await server.connect(database)
    try:
        tables = {row["name"]: row["rows"] for row in await conn.fetch(TABLE_ROWS)}
        large = await conn.fetchrow(LARGE_OBJECTS)
        encoding = await conn.fetchval(
            "SELECT pg_encoding_to_char(encoding) FROM pg_database "
            "WHERE datname = current_database()"
        )
    finally:
        await conn.close()
    return {"tables": tables, "large_objects": (large["n"], large["digest"]), "enc": encoding}


def client_env(server: PgServer) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    return env | {"PGPASSFILE": str(server.passfile)}


def connection(server: PgServer, database: str) -> list[str]:
    return ["-h", server.host, "-p", str(server.port), "-U", server.superuser, "-d", database]


@pytest.mark.parametrize("fmt", ["custom", "plain-gzip"])
async def test_each_format_restores_with_the_servers_own_client_into_a_fresh_utf8_database(
    primary: PgServer, pg_major: int, source: str, work: Path, fmt: str
) -> None:
    config = make_config(primary, work / "backups", databases=(source,), format=fmt,
                         skip_unchanged=False)
    [outcome] = await run_dumps(config, Catalogue(work / "backups"), f"resolve-{fmt}")
    record = outcome.record
    assert outcome.result == "success" and record is not None, outcome
    assert record.path.name.endswith(".backup" if fmt == "custom" else ".sql.gz")
    assert record.resolve_restore_readable is True
    # What Resolve's own Restore runs: the client of the server's major, nothing newer.
    client = PG_ROOT / str(pg_major) / "bin"
    target = fresh_utf8_database(primary, f"restored {fmt}")
    if fmt == "custom":
        argv = [str(client / "pg_restore"), "--exit-on-error", "--no-owner",
                *connection(primary, target), str(record.path)]
        done = subprocess.run(argv, capture_output=True, text=True, timeout=300, check=False,
                              env=client_env(primary))
    else:
        argv = [str(client / "psql"), "-X", "-q", "-v", "ON_ERROR_STOP=1",
                *connection(primary, target)]
        done = subprocess.run(argv, input=gzip.decompress(record.path.read_bytes()).decode(),
                              capture_output=True, text=True, timeout=300, check=False,
                              env=client_env(primary))
    assert done.returncode == 0, done.stderr
    restored, original = await content(primary, target), await content(primary, source)
    assert restored == original
    assert restored["enc"] == "UTF8"
    assert original["large_objects"][0] == 4, "3 large objects of the library, 1 of ours"
    assert restored["tables"]["public.SM_Project"] == 4


async def test_a_dump_file_of_an_earlier_version_is_listed_verified_restored_and_pruned(
    primary: PgServer, source: str, work: Path
) -> None:
    catalogue = Catalogue(work / "backups")
    started = datetime.now(UTC) - timedelta(days=20)
    # Named the old way: <db>-<stamp>.dump, its manifest <db>-<stamp>.json.
    old_name = catalogue.file_name(source, "custom", started).removesuffix(".backup") + ".dump"
    legacy = publish_real_backup(primary, catalogue, source, started=started, name=old_name)
    assert legacy.path.name.endswith(".dump") and legacy.manifest_path.suffix == ".json"
    assert legacy.manifest_path.name == old_name.removesuffix(".dump") + ".json"

    [listed] = catalogue.list_backups(source)
    assert listed.file == old_name and listed.good
    assert catalogue.foreign_files() == []
    config = make_config(primary, work / "backups", databases=(source,), skip_unchanged=False,
                         retention_days=7, min_keep=1)
    result = await run_verify_job(State(config=config))
    assert result["result"] == "success", result
    [after] = catalogue.list_backups(source)
    assert after.verified is True

    target = fresh_name("from old .dump")
    await restore(config, RestoreRequest(target_db=target, database=source))
    assert await db_digest(primary, target) == await db_digest(primary, source)

    [outcome] = await run_dumps(config, catalogue, "after-upgrade")
    assert outcome.record is not None and outcome.record.file.endswith(".backup")
    pruned = await prune(catalogue, RetentionPolicy(retention_days=7, min_keep=1),
                         datetime.now(UTC), UTC, "prune-legacy")
    assert [r.file for r in pruned.deleted] == [old_name]
    assert not legacy.path.exists() and not legacy.manifest_path.exists()
    assert [r.file for r in catalogue.list_backups(source)] == [outcome.record.file]


def fresh_name(label: str) -> str:
    return f"{label} {os.urandom(3).hex()}"


async def test_restore_reads_the_backup_with_its_servers_major_not_the_newest(
    primary: PgServer, pg_major: int, source: str, work: Path, caplog: pytest.LogCaptureFixture
) -> None:
    config = make_config(primary, work / "backups", databases=(source,), skip_unchanged=False)
    [outcome] = await run_dumps(config, Catalogue(work / "backups"), "restore-major")
    assert outcome.record is not None
    caplog.set_level(logging.INFO, logger="laterbased")
    target = fresh_name("restored by major")
    await restore(config, RestoreRequest(target_db=target, database=source))
    assert f"reading the backup with PostgreSQL {pg_major}'s pg_restore" in caplog.text
    assert await db_digest(primary, target) == await db_digest(primary, source)


def newer_pg_dump_config(primary: PgServer, work: Path, source: str) -> Config:
    config = make_config(primary, work / "backups", databases=(source,), skip_unchanged=False,
                         restore_drill=True)
    return dataclasses.replace(
        config, backup=dataclasses.replace(config.backup, bin_dir=PG_ROOT / "15" / "bin")
    )


# Needs a server older than the newest pg_dump installed: 13's, with 15's pg_dump configured.
@pytest.mark.pg_majors(13)
async def test_a_backup_by_a_newer_pg_dump_says_resolve_cannot_read_it_everywhere(
    primary: PgServer, source: str, work: Path, caplog: pytest.LogCaptureFixture
) -> None:
    config = newer_pg_dump_config(primary, work, source)
    caplog.set_level(logging.INFO, logger="laterbased")
    [outcome] = await run_dumps(config, Catalogue(work / "backups"), "newer-pg-dump")
    record = outcome.record
    assert outcome.result == "success" and record is not None, outcome
    assert "15." in (record.pg_dump_version or "")
    assert (record.server_version or "").startswith("13.")
    # The manifest says so, with both majors.
    assert record.resolve_restore_readable is False
    assert "pg_dump 15 archive of a PostgreSQL 13 server" in (record.resolve_restore_detail or "")
    # The log of the dump run says how to fix it.
    fix = [r.getMessage() for r in caplog.records if "not readable by Resolve" in r.getMessage()]
    assert fix and "postgresql-client-13" in fix[0] and "backup.bin_dir" in fix[0]
    assert "/usr/lib/postgresql/13/bin" in fix[0]

    # backups list says so.
    env = environment(primary, work, free_port(), None, database=source)
    env["LATERBASED_BACKUP_BIN_DIR"] = str(PG_ROOT / "15" / "bin")
    listed = cli(env, "backups", "list")
    assert listed.returncode == 0, listed.stderr
    assert "not readable by Resolve's own restore" in listed.stdout
    assert "postgresql-client-13" in listed.stdout
    # check warns before the first backup is even made.
    facts = Facts(config=config, version_num=int(primary.sql("SHOW server_version_num")))
    [pg_dump] = [r for r in await check_binaries(facts) if r.name == "pg_dump"]
    assert pg_dump.status == "WARN", pg_dump
    assert "not readable by Resolve's own restore" in pg_dump.message
    assert "postgresql-client-13" in pg_dump.hint

    # It is true: pg_restore 13, restoring as another owner (--no-owner, as our drill and
    # restore do), stops at pg_dump 15's CREATE SCHEMA public; pg_restore 15 skips it.
    target = fresh_utf8_database(primary, "as Resolve restores")
    done = subprocess.run(
        [str(PG_ROOT / "13" / "bin" / "pg_restore"), "--exit-on-error", "--no-owner",
         *connection(primary, target), str(record.path)],
        capture_output=True, text=True, timeout=300, check=False, env=client_env(primary),
    )
    assert done.returncode != 0 and 'schema "public" already exists' in done.stderr

    # So verify, the drill and restore read it with the pg_dump's major: the backup is
    # good, only Resolve cannot read it (verify says so; it is not marked damaged).
    result = await run_verify_job(State(config=config))
    assert result["result"] == "success", result
    [check] = result["checks"]
    assert "pg_restore --list ok (pg_restore 15," in check["detail"]
    assert "counts match the source" in check["detail"]
    assert "not readable by Resolve's own restore" in check["detail"]
    caplog.clear()
    target = fresh_name("newer pg_dump")
    await restore(config, RestoreRequest(target_db=target, database=source))
    assert "reading the backup with PostgreSQL 15's pg_restore" in caplog.text
    assert await db_digest(primary, target) == await db_digest(primary, source)


# A 13 server's backup read while backup.bin_dir names another major's programs.
@pytest.mark.pg_majors(13)
async def test_verify_and_its_drill_read_a_backup_with_its_servers_major_not_the_configured_one(
    primary: PgServer, source: str, work: Path
) -> None:
    config = make_config(primary, work / "backups", databases=(source,), skip_unchanged=False,
                         restore_drill=True)
    [outcome] = await run_dumps(config, Catalogue(work / "backups"), "server-major")
    assert outcome.record is not None and outcome.record.resolve_restore_readable is True
    elsewhere = dataclasses.replace(
        config, backup=dataclasses.replace(config.backup, bin_dir=PG_ROOT / "15" / "bin")
    )
    result = await run_verify_job(State(config=elsewhere))
    assert result["result"] == "success", result
    [check] = result["checks"]
    assert "pg_restore --list ok (pg_restore 13," in check["detail"]
    assert "counts match the source" in check["detail"]
    assert "not readable" not in check["detail"]
