"""restore: real backups (pg_dump) into real servers, from the catalogue and an rclone remote."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import pytest
from backup_files import publish_real_backup
from child_argv import record_child_argv
from pgserver import PgServer

from laterbased import cli
from laterbased.config import Config, load_config
from laterbased.errors import JobFailed, RefuseToRun
from laterbased.ops.restore.steps import Restorer, RestoreRequest, aside_name, restore
from laterbased.records.catalogue import Catalogue, encode_name

pytestmark = pytest.mark.slow

SOURCE = 'Résolve "Proj" 1'
TARGET = 'Restored "Proj" ü'
ROWS = 2500


def qi(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


@pytest.fixture
def server(make_primary: Callable[..., PgServer]) -> PgServer:
    server = make_primary()
    server.create_database(SOURCE)
    server.sql(
        'CREATE TABLE "SM_Project" (id serial PRIMARY KEY, name text NOT NULL);'  # noqa: S608
        'CREATE TABLE clips (id int, project int REFERENCES "SM_Project", note text);'
        "INSERT INTO \"SM_Project\" (name) SELECT 'project ' || g "
        f"FROM generate_series(1, {ROWS}) g;"
        "INSERT INTO clips SELECT g, 1 + g % 100, 'clip ✓ ' || g "
        "FROM generate_series(1, 4000) g;",
        database=SOURCE,
    )
    return server


def config_for(server: PgServer, work: Path, **extra: str) -> Config:
    env = {
        "PRIMARY_HOST": server.host,
        "PRIMARY_PORT": str(server.port),
        "PRIMARY_USER": server.superuser,
        "REPL_PASSWORD": server.superuser_password,
        "LOCAL_BACKUP_PATH": str(work / "backups"),
        "LATERBASED_STATE_DIR": str(work / "state"),
    }
    env.update(extra)
    return load_config(None, env)


def counts(server: PgServer, database: str) -> tuple[str, str]:
    return (
        server.sql('SELECT count(*) FROM "SM_Project"', database=database),
        server.sql("SELECT count(*) FROM clips", database=database),
    )


def database_exists(server: PgServer, name: str) -> bool:
    literal = "'" + name.replace("'", "''") + "'"
    return server.sql(f"SELECT count(*) FROM pg_database WHERE datname = {literal}") == "1"  # noqa: S608


async def test_restore_latest_local_backup_into_a_quoted_name(
    server: PgServer, tmp_path: Path
) -> None:
    config = config_for(server, tmp_path)
    catalogue = Catalogue(config.backup_directory)
    publish_real_backup(server, catalogue, SOURCE, started=datetime.now(UTC) - timedelta(hours=2))
    server.sql("INSERT INTO \"SM_Project\" (name) VALUES ('late')", database=SOURCE)
    publish_real_backup(server, catalogue, SOURCE)

    result = await restore(config, RestoreRequest(target_db=TARGET, database=SOURCE, jobs=2))
    assert result.target_db == TARGET
    assert result.tables == 2
    assert counts(server, TARGET) == counts(server, SOURCE) == (str(ROWS + 1), "4000")
    assert (
        server.sql(
            f"SELECT pg_encoding_to_char(encoding) FROM pg_database WHERE datname = '{TARGET}'"  # noqa: S608
        )
        == "UTF8"
    )
    # No work database is left behind.
    assert (
        server.sql("SELECT count(*) FROM pg_database WHERE datname LIKE 'laterbased_restore_%'")
        == "0"
    )

    # --at picks the older backup (before the 'late' row).
    older = 'older "Proj"'
    at = datetime.now(UTC) - timedelta(hours=1)
    await restore(config, RestoreRequest(target_db=older, database=SOURCE, at=at))
    assert counts(server, older) == (str(ROWS), "4000")


@pytest.mark.parametrize("fmt", ["custom", "plain-gzip"])
async def test_the_password_never_reaches_pg_restore_or_psql_argv(
    server: PgServer, tmp_path: Path, fmt: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Any local user can read a child's argv (ps, /proc/<pid>/cmdline): the password goes
    through the passfile only, for both kinds of backup."""
    config = config_for(server, tmp_path)
    publish_real_backup(server, Catalogue(config.backup_directory), SOURCE, fmt=fmt)
    children = record_child_argv(monkeypatch)
    await restore(config, RestoreRequest(target_db=TARGET, database=SOURCE))
    assert counts(server, TARGET) == counts(server, SOURCE)
    program = "pg_restore" if fmt == "custom" else "psql"
    assert program in children.programs(), children.argvs
    assert children.containing(server.superuser_password) == []


async def test_latest_never_picks_a_backup_dated_in_the_future(
    server: PgServer, tmp_path: Path
) -> None:
    config = config_for(server, tmp_path)
    catalogue = Catalogue(config.backup_directory)
    real = publish_real_backup(
        server, catalogue, SOURCE, started=datetime.now(UTC) - timedelta(hours=1)
    )
    server.sql("INSERT INTO \"SM_Project\" (name) VALUES ('clock ran fast')", database=SOURCE)
    # Made while the clock ran two days fast.
    publish_real_backup(server, catalogue, SOURCE, started=datetime.now(UTC) + timedelta(days=2))
    target = 'clock "Proj"'
    await restore(config, RestoreRequest(target_db=target, database=SOURCE))
    assert counts(server, target) == (str(ROWS), "4000"), "the newest backup with a true date"

    # Alone, it is still not taken as the latest: the refusal says how to have it anyway.
    catalogue.delete(real)
    with pytest.raises(JobFailed, match=r"dated in the future .* --file "):
        await restore(config, RestoreRequest(target_db="never made", database=SOURCE))
    assert not database_exists(server, "never made")


async def test_existing_target_is_refused_and_replace_keeps_the_old_one_aside(
    server: PgServer, tmp_path: Path
) -> None:
    config = config_for(server, tmp_path)
    publish_real_backup(server, Catalogue(config.backup_directory), SOURCE)
    await restore(config, RestoreRequest(target_db=TARGET, database=SOURCE))
    server.sql("INSERT INTO clips VALUES (-1, 1, 'edited after restore')", database=TARGET)

    with pytest.raises(RefuseToRun, match="already exists"):
        await restore(config, RestoreRequest(target_db=TARGET, database=SOURCE))
    assert counts(server, TARGET) == (str(ROWS), "4001")

    result = await restore(config, RestoreRequest(target_db=TARGET, database=SOURCE, replace=True))
    assert result.moved_aside is not None
    assert result.moved_aside.startswith(TARGET + "_before_restore_")
    assert counts(server, TARGET) == (str(ROWS), "4000")
    # The old database is kept, with its edit.
    assert counts(server, result.moved_aside) == (str(ROWS), "4001")


async def test_plain_gzip_backup_is_restored_through_psql(server: PgServer, tmp_path: Path) -> None:
    config = config_for(server, tmp_path)
    publish_real_backup(server, Catalogue(config.backup_directory), SOURCE, fmt="plain-gzip")
    await restore(config, RestoreRequest(target_db=TARGET, database=SOURCE))
    assert counts(server, TARGET) == (str(ROWS), "4000")


async def test_damaged_backup_is_refused_before_touching_the_server(
    server: PgServer, tmp_path: Path
) -> None:
    config = config_for(server, tmp_path)
    record = publish_real_backup(server, Catalogue(config.backup_directory), SOURCE)
    data = bytearray(record.path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    record.path.write_bytes(bytes(data))
    with pytest.raises(JobFailed, match="does not match its manifest"):
        await restore(config, RestoreRequest(target_db=TARGET, database=SOURCE))
    assert not database_exists(server, TARGET)


async def test_restore_downloads_from_the_rclone_remote_when_not_local(
    server: PgServer, tmp_path: Path
) -> None:
    remote_dir = tmp_path / "remote"
    config = config_for(
        server,
        tmp_path,
        RCLONE_REMOTE_NAME="vault",
        RCLONE_REMOTE_PATH=str(remote_dir),
        RCLONE_REMOTE_1_NAME="vault",
        RCLONE_REMOTE_1_TYPE="local",
    )
    catalogue = Catalogue(config.backup_directory)
    publish_real_backup(server, catalogue, SOURCE)
    # What an upload leaves on the remote: the local layout, mirrored; then the local copy
    # is gone (retention, or a new machine).
    shutil.copytree(config.backup_directory / encode_name(SOURCE), remote_dir / encode_name(SOURCE))
    shutil.rmtree(config.backup_directory / encode_name(SOURCE))

    result = await restore(config, RestoreRequest(target_db=TARGET, database=SOURCE))
    assert result.source.startswith("vault:")
    assert counts(server, TARGET) == (str(ROWS), "4000")


def test_cli_restore_from_file_and_refusal_exit_code(
    server: PgServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = config_for(server, tmp_path)
    record = publish_real_backup(server, Catalogue(config.backup_directory), SOURCE)
    env_file = tmp_path / ".env"
    env_file.write_text(
        f"PRIMARY_HOST={server.host}\nPRIMARY_PORT={server.port}\nPRIMARY_USER=postgres\n"
        f"REPL_PASSWORD={server.superuser_password}\nLOCAL_BACKUP_PATH={tmp_path / 'backups'}\n"
        f"LATERBASED_STATE_DIR={tmp_path / 'state'}\n"
    )
    argv = [
        "restore",
        "--env-file",
        str(env_file),
        "--file",
        str(record.path),
        "--target-db",
        TARGET,
        "-j",
        "2",
    ]
    assert cli.main(argv) == 0
    out = capsys.readouterr()
    assert "sha256 verified" in out.out
    assert "Add Project Library" in out.out
    assert server.superuser_password not in out.out + out.err
    assert counts(server, TARGET) == (str(ROWS), "4000")
    assert cli.main(argv) == 3
    assert "already exists" in capsys.readouterr().err


def test_aside_name_fits_postgresql_identifier_limit() -> None:
    moment = datetime(2026, 11, 26, 14, 0, tzinfo=UTC)
    name = aside_name("ü" * 40, moment)
    assert len(name.encode("utf-8")) <= 63
    assert name.endswith("_before_restore_20261126T140000Z")


@pytest.fixture
def work() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="laterbased-test-") as base:
        yield Path(base)


LOOSE_SOURCE = "review proj"


def restore_config(server: PgServer, work: Path) -> Config:
    return load_config(
        None,
        {
            "PRIMARY_HOST": server.host,
            "PRIMARY_PORT": str(server.port),
            "PRIMARY_USER": server.superuser,
            "REPL_PASSWORD": server.superuser_password,
            "LOCAL_BACKUP_PATH": str(work / "backups"),
            "LATERBASED_STATE_DIR": str(work / "state"),
        },
    )


def database_names(server: PgServer) -> set[str]:
    return set(server.sql("SELECT datname FROM pg_database").splitlines())


async def test_replace_that_fails_halfway_leaves_the_target_under_its_name(
    make_primary: Callable[..., PgServer], work: Path
) -> None:
    """--replace renames the old database aside, then the restored one in. When the second
    rename fails, the old one must still carry the name Resolve opens (it used to stay
    renamed aside, and the restored copy was dropped: the project library vanished)."""
    server = make_primary()
    server.create_database("Target")
    server.sql("CREATE TABLE keep (id int); INSERT INTO keep VALUES (1)", database="Target")
    work_name = "laterbased_restore_review"
    server.create_database(work_name)
    config = restore_config(server, work)
    restorer = Restorer(config, RestoreRequest(target_db="Target", replace=True))
    holder = await server.connect(work_name)  # the second rename cannot proceed
    try:
        with pytest.raises(asyncpg.PostgresError, match="accessed by other users"):
            await restorer._swap(work_name)
    finally:
        await holder.close()
    names = database_names(server)
    assert "Target" in names, f"the target lost its name: {sorted(names)}"
    assert not [n for n in names if n.startswith("Target_before_restore_")]
    assert server.sql("SELECT count(*) FROM keep", database="Target") == "1"


async def test_truncated_plain_gzip_file_fails_the_restore(
    make_primary: Callable[..., PgServer], work: Path
) -> None:
    """A .sql.gz without a manifest (--file) cannot be checked by sha256; a truncated one
    must fail the restore, not restore part of the database and report success."""
    server = make_primary()
    server.create_database(LOOSE_SOURCE)
    server.sql(
        "CREATE TABLE clips (id int PRIMARY KEY, note text);"
        "INSERT INTO clips SELECT g, md5(g::text) FROM generate_series(1, 200000) g;"
        "CREATE TABLE later (id int); INSERT INTO later VALUES (1);",
        database=LOOSE_SOURCE,
    )
    config = restore_config(server, work)
    record = publish_real_backup(
        server, Catalogue(config.backup_directory), LOOSE_SOURCE, "plain-gzip"
    )
    loose = work / "loose.sql.gz"
    data = record.path.read_bytes()
    loose.write_bytes(data[: len(data) // 2])
    with pytest.raises(JobFailed, match="damaged|truncated|ended"):
        await restore(config, RestoreRequest(target_db="Truncated", file=loose))
    assert "Truncated" not in database_names(server)
    assert not [n for n in database_names(server) if n.startswith("laterbased_restore_")]
