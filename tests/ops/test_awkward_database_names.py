"""Fault 12 of the matrix in one chain, through the CLI a user types: a database whose name has
spaces, double and single quotes, a slash, a backslash and unicode is dumped (`backup-now`),
listed under its real name (`backups list`), and restored (`restore --latest`) into a new
database, also with an awkward name, with the same rows."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from backup_support import cli, environment
from pgserver import PgServer, free_port

pytestmark = pytest.mark.slow

NAME = 'Proj "Grade" / it\'s \\ 1 ü 🎬'
TARGET = "Restored / " + os.urandom(3).hex() + ' "ü"'


def literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def ident(text: str) -> str:
    return '"' + text.replace('"', '""') + '"'


@pytest.fixture
def workdir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="lb-names-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def laterbased(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return cli(env, *args, timeout=300)


def test_odd_database_name_is_dumped_listed_and_restored(
    primary: PgServer, workdir: Path
) -> None:
    exists = primary.sql(f"SELECT count(*) FROM pg_database WHERE datname = {literal(NAME)}")
    if exists == "0":
        primary.create_database(NAME)
        primary.sql(
            'CREATE TABLE "SM_Project" (id int, name text); INSERT INTO "SM_Project" '
            "SELECT i, 'p' || i FROM generate_series(1, 321) i",
            NAME,
        )
    env = environment(primary, workdir, free_port(), None, database=NAME)
    try:
        done = laterbased(env, "backup-now", "--json")
        assert done.returncode == 0, done.stdout + done.stderr
        assert json.loads(done.stdout)["result"] == "success"
        # One directory per database, one path component: the slash did not make a subdir.
        [directory] = [p for p in (workdir / "backups").iterdir() if not p.name.startswith(".")]
        assert "/" not in directory.name and list(directory.glob("*.json"))

        listed = laterbased(env, "backups", "list", "--json")
        assert listed.returncode == 0, listed.stderr
        [row] = json.loads(listed.stdout)
        assert row["database"] == NAME
        table = laterbased(env, "backups", "list", "--database", NAME)
        assert table.returncode == 0 and NAME in table.stdout, table.stdout + table.stderr

        restored = laterbased(env, "restore", "--database", NAME, "--latest", "--target-db", TARGET)
        assert restored.returncode == 0, restored.stdout + restored.stderr
        assert primary.sql('SELECT count(*) FROM "SM_Project"', TARGET) == "321"
    finally:
        primary.sql(f"DROP DATABASE IF EXISTS {ident(TARGET)}")
