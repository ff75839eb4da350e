"""Helpers for the backup tests: a config aimed at a test server, a Resolve-like database,
a digest of a database's content to compare a restore with its source, a backup published
into a catalogue by hand, and the CLI of a backups-only laterbased configured from the
environment."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from config_support import primary_config
from pgserver import PgServer

from laterbased.config import (
    BackupConfig,
    Config,
    HttpConfig,
    StandbyConfig,
)
from laterbased.records.catalogue import BackupRecord, Catalogue

# A space, a non-ASCII letter, a quote and a slash: every way a name breaks a file name.
RESOLVE_DB = "Resolve Projekt ü's/1"


def make_config(
    server: PgServer,
    backup_dir: Path,
    *,
    http: HttpConfig | None = None,
    **backup: Any,
) -> Config:
    backup.setdefault("directory", backup_dir)
    return Config(
        primary=primary_config(server, superuser=True, connect_timeout=10.0),
        standby=StandbyConfig(enabled=False),
        backup=BackupConfig(**backup),
        http=http or HttpConfig(enabled=False),
        state_dir=backup_dir.parent,
        timezone="UTC",
    )


async def build_resolve_db(server: PgServer, name: str, *, blob_rows: int = 12) -> None:
    """Quoted mixed-case tables like Resolve's, incompressible bytea, large objects."""
    server.create_database(name)
    conn = await server.connect(name)
    try:
        await conn.execute(
            """
            CREATE TABLE "SM_Project" (
                "SM_Project_id" serial PRIMARY KEY,
                "ProjectName" text NOT NULL,
                "DbVersion" integer,
                "Data" bytea
            );
            CREATE TABLE "Sm2SysIdEntry" (
                "SysId" uuid PRIMARY KEY,
                "Name" text,
                "Payload" bytea
            );
            CREATE TABLE "BtVideoInfo" ("VideoInfoId" bigint, "Info" jsonb);
            CREATE INDEX "Sm2SysIdEntry_Name_idx" ON "Sm2SysIdEntry" ("Name");
            """
        )
        for index in range(blob_rows):
            await conn.execute(
                'INSERT INTO "SM_Project" ("ProjectName", "DbVersion", "Data") '
                "VALUES ($1, $2, $3)",
                f"Projekt {index} — Grading ü",
                index,
                os.urandom(100_000),
            )
        await conn.execute(
            'INSERT INTO "Sm2SysIdEntry" SELECT gen_random_uuid(), \'clip \' || i, '
            "decode(md5(i::text), 'hex') FROM generate_series(1, 2000) AS i"
        )
        await conn.execute(
            """INSERT INTO "BtVideoInfo" SELECT i, jsonb_build_object('fps', 24, 'n', i)
               FROM generate_series(1, 500) AS i"""
        )
        for _ in range(3):
            await conn.execute("SELECT lo_from_bytea(0, $1)", os.urandom(200_000))
        await conn.execute("ANALYZE")
    finally:
        await conn.close()


async def db_digest(server: PgServer, name: str) -> dict[str, Any]:
    """Row counts and content hashes of the Resolve-like tables and large objects."""
    conn = await server.connect(name)
    try:
        return {
            "SM_Project": await conn.fetchval('SELECT count(*) FROM "SM_Project"'),
            "SM_Project_md5": await conn.fetchval(
                """SELECT md5(string_agg("ProjectName" || md5("Data"), ','
                   ORDER BY "SM_Project_id")) FROM "SM_Project" """
            ),
            "Sm2SysIdEntry": await conn.fetchval('SELECT count(*) FROM "Sm2SysIdEntry"'),
            "Sm2SysIdEntry_md5": await conn.fetchval(
                """SELECT md5(string_agg("SysId"::text || "Name" || md5("Payload"), ','
                   ORDER BY "SysId")) FROM "Sm2SysIdEntry" """
            ),
            "BtVideoInfo": await conn.fetchval('SELECT count(*) FROM "BtVideoInfo"'),
            "large_objects": await conn.fetchval(
                "SELECT md5(string_agg(md5(lo_get(oid)), ',' ORDER BY oid)) "
                "FROM pg_largeobject_metadata"
            ),
            "lo_count": await conn.fetchval("SELECT count(*) FROM pg_largeobject_metadata"),
            "encoding": await conn.fetchval(
                "SELECT pg_encoding_to_char(encoding) FROM pg_database "
                "WHERE datname = current_database()"
            ),
        }
    finally:
        await conn.close()


def publish(catalogue: Catalogue, database: str, started: datetime, data: bytes) -> BackupRecord:
    name = catalogue.file_name(database, "custom", started)
    partial = catalogue.new_partial(name)
    partial.write_bytes(data)
    record = BackupRecord(
        database=database,
        file=name,
        directory=catalogue.database_dir(database),
        format="custom",
        size=len(data),
        sha256="ab" * 32,
        started=started,
        finished=started + timedelta(seconds=3),
        source="primary",
        server_version="15.4",
    )
    return catalogue.publish(partial, record)


ROOT = Path(__file__).resolve().parents[2]  # the repository: the CLI runs from there


CLI_DB = "cli proj é"


def environment(
    primary: PgServer,
    workdir: Path,
    port: int,
    token: str | None,
    *,
    database: str = CLI_DB,
    catch_up: bool = False,
) -> dict[str, str]:
    """A backups-only laterbased of ``database`` on ``primary``, from the environment alone,
    backing up into ``workdir/backups``; with ``catch_up`` its first dump starts at once."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LATERBASED_", "PG"))}
    env.update(
        PRIMARY_HOST=primary.host,
        PRIMARY_PORT=str(primary.port),
        PRIMARY_USER=primary.superuser,
        LATERBASED_PRIMARY_PASSWORD=primary.superuser_password,
        LATERBASED_STANDBY_ENABLED="false",
        LATERBASED_STATE_DIR=str(workdir),
        LATERBASED_BACKUP_DIRECTORY=str(workdir / "backups"),
        LATERBASED_BACKUP_DATABASES=database,
        LATERBASED_BACKUP_CATCH_UP=str(catch_up).lower(),
        LATERBASED_HTTP_PORT=str(port),
    )
    if token:
        env["LATERBASED_HTTP_TOKEN"] = token
    return env


def cli(
    env: dict[str, str], *args: str, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "laterbased", *args],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
