"""A discovered database dropped from the primary leaves health after a grace period; its
backups stay, listed as "database gone" (a restored copy backed up, then dropped, kept
/healthz at 503 for good)."""

from __future__ import annotations

import asyncio
import dataclasses
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import aiohttp
import pytest
from backup_support import make_config
from pgserver import PgServer
from web_support import serving

from laterbased.backup.runner import run_backup_chain
from laterbased.config import HttpConfig
from laterbased.core.state import State
from laterbased.health import verdicts as health
from laterbased.records.catalogue import Catalogue
from laterbased.web.status import render_status_page, status_document

pytestmark = pytest.mark.slow


def make_library(server: PgServer, name: str) -> None:
    server.create_database(name)
    server.sql('CREATE TABLE "SM_Project" (id int); INSERT INTO "SM_Project" VALUES (1)', name)


def backup_checks(state: State) -> dict[str, health.Check]:
    return {
        c.name: c for c in health.evaluate(state, time.time()) if c.name.startswith("backup")
    }


async def test_a_dropped_database_warns_then_leaves_health_and_its_backups_stay_listed(
    make_primary: Callable[..., PgServer],
) -> None:
    primary = make_primary()
    await asyncio.to_thread(make_library, primary, "Main Library")
    await asyncio.to_thread(make_library, primary, "Restored Copy")
    base = Path(tempfile.mkdtemp(prefix="laterbased-gone-test-"))
    try:
        config = make_config(primary, base / "backups", stale_after=1.0, gone_grace=3600.0)
        state = State(config=config)
        state.ready = True
        first = await run_backup_chain(state, trigger="test")
        assert first.result == "success", first.to_json()
        assert set(backup_checks(state)) == {"backup:Main Library", "backup:Restored Copy"}
        await asyncio.to_thread(primary.sql, 'DROP DATABASE "Restored Copy"')
        # Older than backup.stale_after (1 s): before, the dropped one turned critical.
        await asyncio.sleep(1.5)
        second = await run_backup_chain(state, trigger="test")
        assert second.result == "success", second.to_json()

        checks = backup_checks(state)
        assert checks["backup:Main Library"].ok
        gone = checks["backup:Restored Copy"]
        assert gone.severity == "warning" and "database gone" in gone.reason, gone

        # After the grace period it leaves health; its backups stay, listed as gone.
        state.config = dataclasses.replace(
            config,
            backup=dataclasses.replace(config.backup, gone_grace=1.0),
            http=HttpConfig(host="127.0.0.1", port=0),
        )
        assert set(backup_checks(state)) == {"backup:Main Library"}
        assert health.is_healthy(
            [c for c in health.evaluate(state, time.time()) if c.name != "primary"]
        )
        document = status_document(state, time.time())
        listed = {b["database"]: b for b in document["backups"]}
        assert listed["Restored Copy"]["gone"] is True
        assert listed["Restored Copy"]["local_count"] == 1
        assert listed["Main Library"]["gone"] is False
        page = render_status_page(document, state.config.zone)
        assert "database gone" in page
        assert len(Catalogue(base / "backups").list_backups("Restored Copy")) == 1

        # What /healthz answers over HTTP says the same.
        async with (
            serving(state) as url,
            aiohttp.ClientSession() as session,
            session.get(f"{url}/healthz") as answer,
        ):
            body = await answer.json()
        assert "backup:Restored Copy" not in [c["name"] for c in body["checks"]]

        # Created again under the same name: it is backed up and judged again.
        await asyncio.to_thread(make_library, primary, "Restored Copy")
        third = await run_backup_chain(state, trigger="test")
        assert third.result == "success", third.to_json()
        assert backup_checks(state)["backup:Restored Copy"].ok
    finally:
        shutil.rmtree(base, ignore_errors=True)
