"""A small database shaped like a DaVinci Resolve project library, for the demo and tests.

Resolve's schema is large and undocumented; what matters for us is its shape: quoted
mixed-case table names (``"SM_Project"``, ``"Sm2SysIdEntry"``), binary blobs of project data
that do not compress, large objects, and the ``public."SM_Project"`` table by which
laterbased recognises a Resolve database.
"""

from __future__ import annotations

import os
from typing import Any

SCHEMA = """
CREATE TABLE IF NOT EXISTS public."SM_Project" (
    "SM_Project_id" uuid PRIMARY KEY,
    "ProjectName" text NOT NULL,
    "LastModified" timestamptz NOT NULL DEFAULT now(),
    "FrameRate" numeric(6,3) NOT NULL DEFAULT 25,
    "Revision" integer NOT NULL DEFAULT 1
);
CREATE TABLE IF NOT EXISTS public."Sm2SysIdEntry" (
    "Sm2SysIdEntry_id" bigserial PRIMARY KEY,
    "SysId" uuid NOT NULL,
    "ClassName" text NOT NULL
);
CREATE TABLE IF NOT EXISTS public."SM_Timeline" (
    "SM_Timeline_id" uuid PRIMARY KEY,
    "SM_Project_id" uuid NOT NULL REFERENCES public."SM_Project",
    "Name" text NOT NULL,
    "TimelineBlob" bytea NOT NULL
);
CREATE TABLE IF NOT EXISTS public."BtVideoInfo" (
    "BtVideoInfo_id" uuid PRIMARY KEY,
    "Clip" text NOT NULL,
    "Thumbnail" oid
);
CREATE INDEX IF NOT EXISTS "SM_Timeline_project_idx" ON public."SM_Timeline" ("SM_Project_id");
"""

PROJECTS = ("Feature Grade v3", "Commercial — Spring Spot", "Doc Series Ep 101", "Trailer")


async def create_sample_library(
    conn: Any, *, timelines_per_project: int = 3, blob_bytes: int = 64 * 1024
) -> None:
    """Create and fill the Resolve-like tables on an asyncpg connection.

    Blobs are random bytes so a compressed dump stays as big as the data, like real
    Resolve timelines; each clip's thumbnail is a large object.
    """
    await conn.execute(SCHEMA)
    for name in PROJECTS:
        project_id = await conn.fetchval(
            'INSERT INTO public."SM_Project" ("SM_Project_id", "ProjectName") '
            "VALUES (gen_random_uuid(), $1) RETURNING \"SM_Project_id\"",
            name,
        )
        await conn.execute(
            'INSERT INTO public."Sm2SysIdEntry" ("SysId", "ClassName") VALUES ($1, $2)',
            project_id,
            "SM_Project",
        )
        for number in range(timelines_per_project):
            await conn.execute(
                'INSERT INTO public."SM_Timeline" '
                '("SM_Timeline_id", "SM_Project_id", "Name", "TimelineBlob") '
                "VALUES (gen_random_uuid(), $1, $2, $3)",
                project_id,
                f"Timeline {number + 1}",
                os.urandom(blob_bytes),
            )
        thumbnail = await conn.fetchval("SELECT lo_from_bytea(0, $1)", os.urandom(4096))
        await conn.execute(
            'INSERT INTO public."BtVideoInfo" ("BtVideoInfo_id", "Clip", "Thumbnail") '
            "VALUES (gen_random_uuid(), $1, $2)",
            f"{name} A001_C002.braw",
            thumbnail,
        )


async def touch_a_project(conn: Any) -> str:
    """What an editor saving a project does, roughly: bump one project's revision."""
    name: str = await conn.fetchval(
        'UPDATE public."SM_Project" SET "Revision" = "Revision" + 1, "LastModified" = now() '
        'WHERE "SM_Project_id" = (SELECT "SM_Project_id" FROM public."SM_Project" '
        "ORDER BY random() LIMIT 1) RETURNING \"ProjectName\""
    )
    return name
