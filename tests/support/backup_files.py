"""Real backups for tests: pg_dump of a test server, published through the catalogue
exactly as the backup job publishes them (data file + manifest with sha256)."""

from __future__ import annotations

import gzip
import hashlib
import os
import shutil
import subprocess
from datetime import UTC, datetime

from pgserver import PgServer

from laterbased.records.catalogue import BackupRecord, Catalogue


def publish_real_backup(
    server: PgServer,
    catalogue: Catalogue,
    database: str = "postgres",
    fmt: str = "custom",
    started: datetime | None = None,
    name: str | None = None,
) -> BackupRecord:
    """``name``: the data file's name (default: what the catalogue names it today)."""
    started = started or datetime.now(UTC)
    name = name or catalogue.file_name(database, fmt, started)
    partial = catalogue.new_partial(name)
    dump = partial.with_name(partial.name + ".raw")
    subprocess.run(
        [
            str(server.bindir / "pg_dump"),
            "-Fc" if fmt == "custom" else "-Fp",
            "-f",
            str(dump),
            "-h",
            server.host,
            "-p",
            str(server.port),
            "-U",
            server.superuser,
            "-d",
            database,
        ],
        check=True,
        timeout=120,
        capture_output=True,
        env={**os.environ, "PGPASSFILE": str(server.passfile)},
    )
    if fmt == "plain-gzip":
        with open(dump, "rb") as source, gzip.open(partial, "wb") as sink:
            shutil.copyfileobj(source, sink)
        dump.unlink()
    else:
        dump.rename(partial)
    data = partial.read_bytes()
    return catalogue.publish(
        partial,
        BackupRecord(
            database=database,
            file=name,
            directory=catalogue.database_dir(database),
            format=fmt,
            size=len(data),
            sha256=hashlib.sha256(data).hexdigest(),
            started=started,
            finished=datetime.now(UTC),
            source="primary",
        ),
    )
