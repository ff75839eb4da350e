"""``laterbased promote``: fail over to the local standby.

Asks the running daemon (``POST /api/promote`` with the bearer token, ``{"force": true}``
with ``--force``) so it records the promotion and stops treating the server as a standby;
when no daemon answers, promotes the server directly (``pg_promote()``, or ``pg_ctl
promote`` as the run-as user). Either way the same split-brain guard runs first
(:func:`laterbased.standby.promote.refuse_while_old_primary_runs`).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import Any

import aiohttp

from laterbased.config import Config
from laterbased.core.local_token import client_token
from laterbased.errors import EXIT_FAILURE, EXIT_OK, EXIT_REFUSE, JobFailed
from laterbased.ops.args import configure_logging, load_from_args

DESCRIPTION = """\
Promote the local standby to a primary (failover). Run it only when the Resolve primary
is gone for good: afterwards the old primary and this server are two separate databases.

It first makes sure the old primary is gone: when primary.host still answers as a primary
(or answers at all, refusing our login), it refuses with exit 3, because two writable
servers mean two diverging project libraries. Stop PostgreSQL there first, or pass --force.

With the daemon running, this goes through its HTTP API (POST /api/promote, with
http.token or the local token the daemon keeps in state_dir; the daemon runs the same check,
--force is passed on); without it, the standby postgres is promoted directly. Then point
Resolve's Project Manager at this host and the standby port (see README, "Standby and failover").

exit codes: 0 promoted, 1 failed (or nothing to promote), 3 refused: the old primary still
answers, 78 bad configuration
"""


def register(subparsers: Any, common: argparse.ArgumentParser) -> None:
    parser = subparsers.add_parser(
        "promote",
        parents=[common],
        help="promote the standby to a primary (failover)",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--force",
        action="store_true",
        help="promote even though the old primary still answers (you are switching it off "
        "yourself and accept that writes made there after now are not on this server)",
    )
    parser.set_defaults(handler=cmd_promote)


def cmd_promote(args: argparse.Namespace) -> int:
    config = load_from_args(args)
    configure_logging(args, config)
    return asyncio.run(promote(config, force=args.force))


async def _ask_daemon(
    config: Config, *, force: bool, seconds: float = 120.0
) -> tuple[int, dict[str, Any]] | None:
    """(status, body) from the daemon's API, or None when no daemon answers."""
    host = config.http.host
    if host in {"", "0.0.0.0", "::", "*"}:  # noqa: S104 - we connect, not bind
        host = "127.0.0.1"
    url = f"http://{host}:{config.http.port}/api/promote"
    headers = {}
    token, why_not = client_token(config)  # http.token, else the daemon's local token
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    timeout = aiohttp.ClientTimeout(total=seconds, connect=5)
    try:
        async with (
            aiohttp.ClientSession(timeout=timeout) as session,
            session.post(url, headers=headers, json={"force": force}) as response,
        ):
            body = await response.json(content_type=None)
            body = body if isinstance(body, dict) else {}
            if response.status == 401 and why_not:
                body["error"] = f"{body.get('error', 'unauthorized')}: {why_not}"
            return response.status, body
    except aiohttp.ClientConnectorError:
        return None  # nothing listens: no daemon, promote directly
    except (TimeoutError, aiohttp.ClientError) as exc:
        # A daemon is there but did not answer in time (or hung up mid-answer): it may be
        # promoting right now. Promoting behind its back would be worse than stopping.
        raise JobFailed(
            f"the daemon at {url} did not give an answer ({type(exc).__name__}: {exc}); it "
            "may still be promoting: look at /status or the log before trying again"
        ) from exc


async def promote(config: Config, *, force: bool = False) -> int:
    from laterbased.standby.promote import (
        OLD_PRIMARY_RUNNING,
        OldPrimaryRunning,
        PromoteRefused,
        promote_server,
        refuse_while_old_primary_runs,
    )

    if not config.standby.enabled:
        print("laterbased: no standby is configured (standby.enabled is false)", file=sys.stderr)
        return EXIT_FAILURE
    answer = await _ask_daemon(config, force=force) if config.http.enabled else None
    if answer is not None:
        status, body = answer
        if status == 200:
            if body.get("forced_past"):
                print(f"laterbased: {body['forced_past']}; promoted anyway (--force)",
                      file=sys.stderr)
            print(f"promoted by the running daemon ({body.get('method')}); role: primary")
            _print_next_steps(config)
            return EXIT_OK
        if status == 409 and body.get("reason") == OLD_PRIMARY_RUNNING:
            print(f"laterbased: {body.get('error')}", file=sys.stderr)
            return EXIT_REFUSE
        if status != 403:
            print(f"laterbased: the daemon refused: {body.get('error', status)}", file=sys.stderr)
            return EXIT_FAILURE
        print(
            "the daemon runs but HTTP promotion is disabled (no http.token); promoting the "
            "server directly; the daemon notices within its check interval",
            file=sys.stderr,
        )
    try:
        forced_past = await refuse_while_old_primary_runs(config, force=force)
    except OldPrimaryRunning as exc:
        print(f"laterbased: {exc}", file=sys.stderr)
        return EXIT_REFUSE
    if forced_past is not None:
        print(f"laterbased: {forced_past}; promoting anyway (--force)", file=sys.stderr)
    try:
        how = await promote_server(config)
    except PromoteRefused as exc:
        print(f"laterbased: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    print(f"promoted with {how}; role: primary")
    _print_next_steps(config)
    return EXIT_OK


def _print_next_steps(config: Config) -> None:
    print(
        f"next: in DaVinci Resolve's Project Manager, connect the project library on this "
        f"host, port {config.standby.port} (listen_addresses: "
        f"{config.standby.listen_addresses}); keep the old primary switched off"
    )
