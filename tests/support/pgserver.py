"""The test harness's real PostgreSQL servers live in the package (``laterbased.pg.localcluster``)
so that ``laterbased demo`` starts its throw-away primary with the very same code."""

from laterbased.pg.localcluster import (
    NASTY_PASSWORD,
    REPLICATION_USER,
    SUPERUSER,
    PgServer,
    ensure_postgres_user,
    find_pg_bindir,
    free_port,
    pg_server,
)

__all__ = [
    "NASTY_PASSWORD",
    "REPLICATION_USER",
    "SUPERUSER",
    "PgServer",
    "ensure_postgres_user",
    "find_pg_bindir",
    "free_port",
    "pg_server",
]
