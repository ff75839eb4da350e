"""restore (issue 19): a name in the wrong case lists the names there are, and a library
laterbased restored stays out of the automatic backups unless --back-up says otherwise."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import pytest
from backup_files import publish_real_backup
from pgserver import PgServer

from laterbased import cli
from laterbased.backup.dump import discover_databases, primary_server
from laterbased.config import Config, load_config
from laterbased.errors import JobFailed
from laterbased.ops.restore.steps import RestoreRequest, restore
from laterbased.records.catalogue import Catalogue

pytestmark = pytest.mark.slow

LIBRARY = "Resolve Projects"


@pytest.fixture
def server(make_primary: Callable[..., PgServer]) -> PgServer:
    server = make_primary()
    server.create_database(LIBRARY)
    server.sql(
        'CREATE TABLE "SM_Project" (id int); INSERT INTO "SM_Project" VALUES (1)',
        database=LIBRARY,
    )
    return server


def config_for(server: PgServer, work: Path) -> Config:
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


def discovered(config: Config) -> list[str]:
    return asyncio.run(discover_databases(primary_server(config)))


async def test_a_database_name_in_the_wrong_case_names_the_ones_there_are(
    server: PgServer, tmp_path: Path
) -> None:
    config = config_for(server, tmp_path)
    publish_real_backup(server, Catalogue(config.backup_directory), LIBRARY)
    with pytest.raises(JobFailed) as refused:
        await restore(config, RestoreRequest(target_db="x", database="resolve projects"))
    message = str(refused.value)
    assert "no backup of database 'resolve projects'" in message
    assert "did you mean --database 'Resolve Projects'?" in message
    assert "backed-up databases here: 'Resolve Projects'" in message


def test_a_restored_library_stays_out_of_the_automatic_backups_unless_asked(
    server: PgServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = config_for(server, tmp_path)
    publish_real_backup(server, Catalogue(config.backup_directory), LIBRARY)
    asyncio.run(restore(config, RestoreRequest(target_db="Last Tuesday", database=LIBRARY)))
    comment = server.sql("SELECT shobj_description(oid, 'pg_database') FROM pg_database "
                         "WHERE datname = 'Last Tuesday'")
    assert comment.startswith("laterbased: restored ") and "backup.databases" in comment
    assert discovered(config) == [LIBRARY]

    # --back-up, through the command: it joins the backups, and the command says which.
    env_file = tmp_path / ".env"
    env_file.write_text(
        f"PRIMARY_HOST={server.host}\nPRIMARY_PORT={server.port}\n"
        f"PRIMARY_USER={server.superuser}\nREPL_PASSWORD={server.superuser_password}\n"
        f"LOCAL_BACKUP_PATH={tmp_path / 'backups'}\nLATERBASED_STATE_DIR={tmp_path / 'state'}\n"
    )
    code = cli.main(["restore", "--env-file", str(env_file), "--database", LIBRARY,
                     "--target-db", "Kept Copy", "--back-up"])
    assert code == 0
    assert "joins laterbased's automatic backups" in capsys.readouterr().out
    assert sorted(discovered(config)) == ["Kept Copy", LIBRARY]
    code = cli.main(["restore", "--env-file", str(env_file), "--database", LIBRARY,
                     "--target-db", "Look Only"])
    assert code == 0
    assert "not in laterbased's automatic backups" in capsys.readouterr().out
    assert "Look Only" not in discovered(config)
