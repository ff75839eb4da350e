"""After a failover, the workstations are told the login they use, not laterbased's own.

Resolve creates each library with the workstations' login (``postgres`` by default). When
laterbased has its own replication role (``prepare-primary --create-role``), telling every
workstation to log in as that role at 3 a.m. sends them to a login they have no password for.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from config_support import primary_config, quiet_config
from pgserver import PgServer

from laterbased.core.failover import workstation_steps, workstation_user
from laterbased.standby.failover import prove_libraries

LIBRARY = "Grading Library"


def user_line(steps: list[str]) -> str:
    return next(line for line in steps if line.strip().startswith("User:"))


async def test_the_promoted_servers_libraries_come_with_the_login_owning_them(
    make_primary: Callable[..., PgServer],
) -> None:
    server = make_primary()
    server.sql("CREATE ROLE colorist LOGIN PASSWORD 'grade'")
    server.sql(f'CREATE DATABASE "{LIBRARY}" OWNER colorist')
    server.sql('CREATE TABLE public."SM_Project" (id int)', database=LIBRARY)
    server.sql('GRANT SELECT ON public."SM_Project" TO PUBLIC', database=LIBRARY)
    primary = primary_config(server)  # laterbased's own replication login
    proof = await prove_libraries(
        host=server.host,
        port=server.port,
        user=primary.user,
        password=primary.password.reveal() if primary.password else None,
        maintenance_db="postgres",
        connect_timeout=5,
        write=False,
    )
    assert LIBRARY in proof.opened, proof
    assert proof.owners[LIBRARY] == "colorist"
    config = dataclasses.replace(quiet_config(), primary=primary)
    line = user_line(workstation_steps(config, [LIBRARY], 5432, proof.owners))
    assert "User: colorist," in line
    assert primary.user not in line


def test_without_the_owners_the_workstations_are_not_sent_to_laterbaseds_own_login() -> None:
    config = quiet_config()
    own = dataclasses.replace(config.primary, user="laterbase")
    line = user_line(workstation_steps(dataclasses.replace(config, primary=own), ["Lib"], 5432))
    assert "the login the workstations used on the old server" in line
    assert "laterbase is laterbased's own" in line
    postgres = dataclasses.replace(config.primary, user="postgres")
    assert workstation_user(dataclasses.replace(config, primary=postgres), None) == "postgres"
    owners = {"A": "alice", "B": "bob"}
    assert workstation_user(config, owners) == (
        "the login owning each library (alice for A, bob for B)"
    )
