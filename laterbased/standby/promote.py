"""Promotion: make the local standby a primary, from the daemon's API or the command line.

``SELECT pg_promote()`` when the configured login may call it, else ``pg_ctl promote`` as
the run-as user (the same request to the postmaster, no superuser login needed). Either way
we wait until the server has left recovery.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
from pathlib import Path
from typing import Any

import asyncpg
from aiohttp import web

from laterbased.config import Config
from laterbased.errors import JobFailed, LaterbasedError
from laterbased.http import STATE_KEY, json_response
from laterbased.pg.binaries import find_bindir
from laterbased.pg.connect import PgUnavailable, connect
from laterbased.proc import resolve_run_as, run
from laterbased.state import State

from . import safety
from .layout import Layout
from .supervisor import is_promoted, mark_promoted

logger = logging.getLogger(__name__)

PROMOTE_WAIT = 60
_lock = asyncio.Lock()


class PromoteRefused(LaterbasedError):
    """Promotion makes no sense now (no standby, not running, already primary)."""


def local_host(config: Config) -> str:
    """Where we reach our own server over TCP: its listen address, loopback for wildcards."""
    first = config.standby.listen_addresses.split(",")[0].strip()
    if first in {"", "*", "0.0.0.0", "::", "localhost"}:  # noqa: S104 - we connect, not bind
        return "127.0.0.1"
    return first


async def _connect_local(config: Config) -> Any:
    primary = config.primary
    return await connect(
        host=local_host(config),
        port=config.standby.port,
        user=primary.user,
        password=primary.password.reveal() if primary.password else None,
        database=primary.database,
        timeout=primary.connect_timeout,
        application_name="laterbased_promote",
    )


async def _promote_sql(config: Config) -> bool:
    """pg_promote(); False when the login may not call it (so pg_ctl must)."""
    try:
        conn = await _connect_local(config)
    except PgUnavailable as exc:
        if exc.reason == "auth":
            return False
        raise
    try:
        promoted = await conn.fetchval("SELECT pg_promote(true, $1)", PROMOTE_WAIT)
    except asyncpg.InsufficientPrivilegeError:
        return False
    except asyncpg.UndefinedFunctionError:
        return False  # before PostgreSQL 12
    finally:
        await asyncio.shield(conn.close())
    if not promoted:
        raise JobFailed(f"pg_promote() did not finish within {PROMOTE_WAIT}s")
    return True


async def _promote_pg_ctl(config: Config, data_dir: Path) -> None:
    major = await asyncio.to_thread(safety.cluster_major, data_dir)
    bindir = await asyncio.to_thread(find_bindir, major, config.standby.bin_dir)
    run_as = resolve_run_as(config.standby.run_as)
    result = await run(
        [str(bindir / "pg_ctl"), "promote", "-w", "-t", str(PROMOTE_WAIT), "-D", str(data_dir)],
        run_as=run_as,
        log_name="pg_ctl promote",
        timeout=PROMOTE_WAIT + 30,
    )
    if result.returncode != 0:
        raise JobFailed("pg_ctl promote failed: " + " | ".join(result.stderr_tail[-3:]))


async def promote_server(config: Config) -> str:
    """Promote the standby postgres at ``standby.data_dir``; return how it was done."""
    data_dir = Layout.from_config(config).data_dir
    if not await asyncio.to_thread((data_dir / "PG_VERSION").is_file):
        # No standby was ever cloned here (or standby.data_dir / PGDATA points elsewhere).
        raise PromoteRefused(
            f"no standby in {data_dir} (no PG_VERSION there): nothing to promote; "
            "check standby.data_dir (PGDATA)"
        )
    major = await asyncio.to_thread(safety.cluster_major, data_dir)
    if await asyncio.to_thread(is_promoted, data_dir, major):
        raise PromoteRefused(f"{data_dir} is not a standby (already promoted)")
    if safety.live_postmaster(data_dir) is None:
        raise PromoteRefused(f"no PostgreSQL server is running on {data_dir}; nothing to promote")
    if await _promote_sql(config):
        how = "pg_promote()"
    else:
        await _promote_pg_ctl(config, data_dir)
        how = "pg_ctl promote"
    logger.warning("promoted the standby on %s with %s", data_dir, how)
    return how


async def promote_in_daemon(state: State) -> dict[str, Any]:
    """Promote the supervised standby and record it in ``state`` (one at a time)."""
    async with _lock:
        st = state.standby
        if not state.config.standby.enabled:
            raise PromoteRefused("no standby is configured (standby.enabled is false)")
        if st.role == "primary":
            raise PromoteRefused("already promoted: this server is a primary")
        if st.phase != "running" or st.pid is None:
            raise PromoteRefused(
                f"the standby is not running (phase {st.phase}: {st.message or 'no detail'}); "
                "nothing to promote yet"
            )
        how = await promote_server(state.config)
        mark_promoted(state, how=how)
        return {"role": st.role, "promoted_at": st.promoted_at, "method": how}


async def handle_promote(request: web.Request) -> web.Response:
    """POST /api/promote with ``Authorization: Bearer <http.token>``."""
    state = request.app[STATE_KEY]
    token = state.config.http.token
    if not token:
        return json_response(
            {
                "error": "promotion over HTTP is disabled: set http.token (or "
                "LATERBASED_HTTP_TOKEN_FILE) and restart laterbased, or run "
                "'laterbased promote' on this host"
            },
            status=403,
        )
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(
        # surrogateescape: header bytes that are not UTF-8 are refused, not a crash.
        given.strip().encode("utf-8", "surrogateescape"), token.reveal().encode("utf-8")
    ):
        response = json_response({"error": "missing or wrong bearer token"}, status=401)
        response.headers["WWW-Authenticate"] = 'Bearer realm="laterbased"'
        return response
    try:
        result = await promote_in_daemon(state)
    except PromoteRefused as exc:
        return json_response({"error": str(exc)}, status=409)
    except (JobFailed, PgUnavailable, OSError) as exc:
        logger.error("promotion failed: %s", exc)
        return json_response({"error": f"promotion failed: {exc}"}, status=503)
    return json_response(result)


def add_promote_route(app: web.Application) -> None:
    app.router.add_post("/api/promote", handle_promote)
