"""Promotion: make the local standby a primary, from the daemon's API or the command line.

Both refuse while the old primary still answers (:func:`refuse_while_old_primary_runs`):
two writable servers are two diverging project libraries. ``force`` goes past that check.

``SELECT pg_promote()`` when the configured login may call it, else ``pg_ctl promote`` as
the run-as user (the same request to the postmaster, no superuser login needed). Either way
we wait until the server has left recovery.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from pathlib import Path
from typing import Any

import asyncpg

from laterbased.config import Config
from laterbased.core.actions import ActionInvalid, ActionOutcome
from laterbased.core.state import GLOBALS_KEY, State
from laterbased.errors import EXIT_REFUSE, JobFailed, LaterbasedError
from laterbased.pg.binaries import find_bindir
from laterbased.pg.connect import PgUnavailable, connect, connect_primary
from laterbased.proc import resolve_run_as, run
from laterbased.standby import configure, failover, safety
from laterbased.standby.layout import Layout

logger = logging.getLogger(__name__)

PROMOTE_WAIT = 60
# How long a promotion waits for the server to come up again on the failover endpoint
# (beyond standby.stop_timeout for the stop): crash recovery is not needed, it was clean.
FAILOVER_MOVE_WAIT = 60.0
# How long to try the old primary before calling it gone: a dead host must not stall a
# failover at 3 a.m. for the full connect_timeout.
PRIMARY_PROBE_TIMEOUT = 5.0
# The "reason" of the API's 409 answer when the old primary still runs (the CLI exits 3).
OLD_PRIMARY_RUNNING = "old_primary_running"
_lock = asyncio.Lock()


class PromoteRefused(LaterbasedError):
    """Promotion makes no sense now (no standby, not running, already primary)."""


class OldPrimaryRunning(PromoteRefused):
    """The old primary still answers: promoting now would make two writable servers."""

    exit_code = EXIT_REFUSE


async def old_primary_still_up(config: Config) -> str | None:
    """Why the configured primary counts as still running, or None when it is gone.

    A refused login is an answer too: the server runs. A standby (in recovery) there is no
    second writable server, so it counts as gone.
    """
    primary = config.primary
    if primary.host is None:
        return None
    where = f"{primary.host}:{primary.port}"
    quick = dataclasses.replace(
        primary, connect_timeout=min(primary.connect_timeout, PRIMARY_PROBE_TIMEOUT)
    )
    try:
        conn = await connect_primary(quick, application_name="laterbased-promote-check")
    except PgUnavailable as exc:
        if exc.reason in {"auth", "server", "ssl"}:
            return f"the old primary {where} is still running (it answered: {exc})"
        return None
    try:
        async with asyncio.timeout(PRIMARY_PROBE_TIMEOUT):
            in_recovery = await conn.fetchval("SELECT pg_is_in_recovery()")
    except TimeoutError:
        conn.terminate()  # close() would wait for the answer that never comes
        return f"the old primary {where} is still running (it accepted a connection)"
    finally:
        with contextlib.suppress(TimeoutError):  # on timeout close() terminates it
            await asyncio.shield(conn.close(timeout=PRIMARY_PROBE_TIMEOUT))
    if in_recovery:
        return None  # it is a standby itself now: no second writable server
    return f"the old primary {where} is still running and accepting writes"


async def refuse_while_old_primary_runs(config: Config, *, force: bool) -> str | None:
    """The split-brain guard of every promotion (``laterbased promote`` and the API).

    Raises :class:`OldPrimaryRunning` while the old primary answers, unless ``force``;
    with ``force`` returns why it still counts as running (for the caller to report),
    None when it is gone.
    """
    still_up = await old_primary_still_up(config)
    if still_up is not None and not force:
        raise OldPrimaryRunning(
            f"refusing to promote: {still_up}. Two writable servers make two diverging "
            "project libraries. Quit Resolve on every client, stop PostgreSQL on the old "
            "primary (or power it off), then promote again; --force (over HTTP: "
            '{"force": true}) promotes anyway'
        )
    return still_up


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
        # pg_ctl stops waiting when the server stops; the supervisor restarts a promoted
        # server on the failover endpoint at once, which can land inside that wait. The
        # promotion happened all the same when the standby marker is gone.
        if await asyncio.to_thread(configure.is_promoted, data_dir, major):
            logger.info(
                "pg_ctl promote stopped waiting (%s), but %s is promoted",
                " | ".join(result.stderr_tail[-1:]) or "no message",
                data_dir,
            )
            return
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
    if await asyncio.to_thread(configure.is_promoted, data_dir, major):
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


async def promote_in_daemon(
    state: State, *, check_old_primary: bool = False, force: bool = False
) -> dict[str, Any]:
    """Promote the supervised standby and record it in ``state`` (one at a time).

    With ``check_old_primary`` (the API does), :func:`refuse_while_old_primary_runs` runs
    once the standby is known to be promotable, and ``force`` goes past it.
    """
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
        forced_past = None
        if check_old_primary:
            forced_past = await refuse_while_old_primary_runs(state.config, force=force)
            if forced_past is not None:
                logger.warning("promoting although %s (force)", forced_past)
        config = state.config
        if st.port is not None and st.port != config.standby.port:
            # standby.port was reloaded: the running server still listens on its old port.
            config = dataclasses.replace(
                config, standby=dataclasses.replace(config.standby, port=st.port)
            )
        started = time.monotonic()
        how = await promote_server(config)
        mark_promoted(state, how=how)
        await _wait_on_failover_endpoint(state)
        libraries, st.library_owners = await _list_libraries(state)
        st.libraries = tuple(libraries)
        result: dict[str, Any] = {
            "role": st.role,
            "promoted_at": st.promoted_at,
            "method": how,
            "seconds": round(time.monotonic() - started, 1),
            "port": st.port,
            "listen_addresses": st.listen_addresses,
            "libraries": list(st.libraries),
            "library_owners": dict(st.library_owners),
        }
        if st.failover_problem is not None:
            result["failover_problem"] = st.failover_problem
        if forced_past is not None:
            result["forced_past"] = forced_past
        return result


async def _wait_on_failover_endpoint(state: State) -> None:
    """Wake the supervisor and wait until the promoted server accepts connections on the
    failover endpoint (or the supervisor said why it cannot move there)."""
    st, standby = state.standby, state.config.standby
    st.wake.set()
    deadline = time.monotonic() + FAILOVER_MOVE_WAIT + standby.stop_timeout
    while time.monotonic() < deadline:
        if st.failover_problem is not None:
            return
        on_endpoint = st.port == standby.promoted_port and (
            st.listen_addresses == standby.promoted_listen_addresses
        )
        if on_endpoint and st.phase == "promoted" and st.pid is not None:
            return
        await asyncio.sleep(0.1)
    logger.warning(
        "the promoted server did not come up on port %s within %.0fs; see the log",
        standby.promoted_port,
        FAILOVER_MOVE_WAIT + standby.stop_timeout,
    )


async def _list_libraries(state: State) -> tuple[list[str], dict[str, str]]:
    """The Resolve libraries on the promoted server (names for the workstations) with the
    login owning each, or the ones laterbased backs up (owners unknown) when it cannot look
    (the answer must not fail for this)."""
    config, st = state.config, state.standby
    known = sorted(set(config.backup.databases) | set(state.backups) - {GLOBALS_KEY})
    primary = config.primary
    try:
        proof = await failover.prove_libraries(
            host=local_host(config),
            port=st.port or config.standby.promoted_port,
            user=primary.user,
            password=primary.password.reveal() if primary.password else None,
            maintenance_db=primary.database,
            connect_timeout=primary.connect_timeout,
            write=False,
        )
    except (PgUnavailable, asyncpg.PostgresError, OSError) as exc:
        logger.warning("cannot list the libraries on the promoted server: %s", exc)
        return known, {}
    return (sorted(proof.opened) or known), proof.owners


def _force_requested(params: dict[str, Any]) -> bool:
    """``force`` of the request body (absent: False)."""
    force = params.get("force", False)
    if not isinstance(force, bool):
        raise ActionInvalid('force must be true or false, e.g. {"force": true}')
    return force


def register_actions(state: State) -> None:
    """Offer ``promote`` (POST /api/promote; ``{"force": true}`` promotes although the old
    primary still answers) while the standby is supervised."""

    async def promote(params: dict[str, Any]) -> ActionOutcome:
        force = _force_requested(params)
        try:
            result = await promote_in_daemon(state, check_old_primary=True, force=force)
        except OldPrimaryRunning as exc:
            logger.warning("POST /api/promote: %s", exc)
            return ActionOutcome(409, {"error": str(exc), "reason": OLD_PRIMARY_RUNNING})
        except PromoteRefused as exc:
            return ActionOutcome(409, {"error": str(exc)})
        except (JobFailed, PgUnavailable, OSError) as exc:
            logger.error("promotion failed: %s", exc)
            return ActionOutcome(503, {"error": f"promotion failed: {exc}"})
        return ActionOutcome(200, result)

    state.actions["promote"] = promote


def mark_promoted(state: State, *, how: str = "") -> None:
    """Record that the local server is a primary now (idempotent)."""
    st = state.standby
    if st.role == "primary" and st.promoted_at is not None:
        return
    st.role = "primary"
    st.phase = "promoted"
    st.promoted_at = time.time()
    st.message = "promoted: accepts writes, no longer follows the old primary"
    logger.warning("standby promoted to primary%s", f" ({how})" if how else "")
    state.record_event("warning", f"standby promoted to primary{f' ({how})' if how else ''}")
