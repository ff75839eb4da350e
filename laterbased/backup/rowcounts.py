"""Exact row counts per table, the yardstick of the restore drill.

``pg_stat_user_tables.n_live_tup`` is an estimate; the drill needs exact numbers, so each
table is counted with ``count(*)``. The same query runs on the source (inside the snapshot
pg_dump uses, see ``jobs/dump.py``) and on the restored copy, so both sides agree on which
tables count: ordinary and partitioned tables outside the system schemas, permanent only
(a standby cannot read unlogged tables), not owned by an extension (their rows come from
the extension's own script). Large objects are counted as one more entry.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

LARGE_OBJECTS = "(large objects)"

TABLES_QUERY = """
SELECT t.schemaname, t.tablename
FROM pg_catalog.pg_tables t
JOIN pg_catalog.pg_namespace n ON n.nspname = t.schemaname
JOIN pg_catalog.pg_class c ON c.relnamespace = n.oid AND c.relname = t.tablename
WHERE t.schemaname NOT IN ('pg_catalog', 'information_schema')
  AND t.schemaname NOT LIKE 'pg\\_toast%'
  AND t.schemaname NOT LIKE 'pg\\_temp\\_%'
  AND c.relpersistence = 'p'
  AND NOT EXISTS (
      SELECT 1 FROM pg_catalog.pg_depend d
      WHERE d.classid = 'pg_catalog.pg_class'::regclass AND d.objid = c.oid
        AND d.deptype = 'e')
ORDER BY 1, 2
"""
LARGE_OBJECTS_QUERY = "SELECT count(*) FROM pg_catalog.pg_largeobject_metadata"


def quote_identifier(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def table_key(schema: str, table: str) -> str:
    """``"public"."SM_Project"``: unambiguous whatever characters the names hold."""
    return f"{quote_identifier(schema)}.{quote_identifier(table)}"


async def count_rows(conn: Any) -> dict[str, int]:
    """Exact rows of every table (see module docstring) on an asyncpg connection, in the
    connection's current transaction/snapshot."""
    counts: dict[str, int] = {}
    for row in await conn.fetch(TABLES_QUERY):
        key = table_key(row["schemaname"], row["tablename"])
        counts[key] = int(await conn.fetchval(f"SELECT count(*) FROM {key}"))  # noqa: S608
    counts[LARGE_OBJECTS] = int(await conn.fetchval(LARGE_OBJECTS_QUERY))
    return counts


def compare_counts(expected: Mapping[str, int], actual: Mapping[str, int]) -> list[str]:
    """Human descriptions of every difference; empty when both sides agree."""
    problems: list[str] = []
    for key in sorted(set(expected) | set(actual)):
        want, got = expected.get(key), actual.get(key)
        if want == got:
            continue
        if got is None:
            problems.append(f"{key} missing after restore (source has {want} rows)")
        elif want is None:
            problems.append(f"{key} appeared after restore with {got} rows")
        else:
            problems.append(f"{key} has {got} rows, source had {want}")
    return problems
