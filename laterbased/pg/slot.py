"""Physical replication slot on the primary, created before the base backup."""

from __future__ import annotations

import logging
import re
from typing import Any

import asyncpg

from laterbased.errors import RefuseToRun
from laterbased.pg import sql

logger = logging.getLogger(__name__)

SLOT_NAME = re.compile(r"^[a-z0-9_]{1,63}$")


def validate_slot_name(name: str) -> None:
    """Raise RefuseToRun unless ``name`` is a valid replication slot name."""
    if not SLOT_NAME.match(name):
        raise RefuseToRun(
            f"invalid replication slot name {name!r}: use 1-63 lower-case letters, "
            "digits and underscores"
        )


def create_slot_query(version_num: int) -> str:
    """Create a physical slot reserving WAL at once; 9.5 cannot (no immediately_reserve)."""
    return sql.CREATE_PHYSICAL_SLOT if version_num >= 90600 else sql.CREATE_PHYSICAL_SLOT_PRE96


async def ensure_physical_slot(conn: Any, name: str) -> bool:
    """Make sure a physical slot ``name`` exists on the server of ``conn`` (an asyncpg
    connection). Returns True if this call created it (with WAL reserved immediately).

    A logical or temporary slot of that name is not ours to reuse: RefuseToRun.
    """
    validate_slot_name(name)
    version_num = int(await conn.fetchval(sql.SERVER_VERSION_NUM))
    kind_query = (
        sql.REPLICATION_SLOT_KIND if version_num >= 100000 else sql.REPLICATION_SLOT_KIND_PRE10
    )
    existing = await conn.fetchrow(kind_query, name)
    if existing is not None:
        _check_reusable(existing, name)
        logger.info("reusing physical replication slot %s", name)
        return False
    create_query = create_slot_query(version_num)
    if create_query == sql.CREATE_PHYSICAL_SLOT_PRE96:
        logger.warning(
            "PostgreSQL %s cannot reserve WAL when creating slot %s; WAL is kept only once "
            "the standby first connects",
            version_num,
            name,
        )
    try:
        await conn.fetchval(create_query, name)
    except asyncpg.exceptions.DuplicateObjectError:
        # Created by someone else between our lookup and our create: check what it is.
        existing = await conn.fetchrow(kind_query, name)
        if existing is None:
            raise RefuseToRun(
                f"replication slot {name!r} was reported to exist but then vanished; "
                "is another process creating and dropping it?"
            ) from None
        _check_reusable(existing, name)
        logger.info("reusing physical replication slot %s (created concurrently)", name)
        return False
    logger.info("created physical replication slot %s", name)
    return True


def _check_reusable(row: Any, name: str) -> None:
    if row["slot_type"] != "physical":
        raise RefuseToRun(
            f"replication slot {name!r} exists on the primary but is a {row['slot_type']} "
            "slot, not a physical one; choose another standby.slot_name or drop it with "
            f"SELECT pg_drop_replication_slot('{name}') if nothing uses it"
        )
    if row["temporary"]:
        raise RefuseToRun(
            f"replication slot {name!r} on the primary is a temporary slot owned by another "
            "session; choose another standby.slot_name"
        )
