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
from laterbased.core.failover import old_primary_advice, workstation_steps
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
--force is passed on); without it, the standby postgres is promoted directly. The server
then moves to the failover endpoint (standby.failover_address, standby.failover_port;
laterbased check verifies that plan beforehand), and this prints what each workstation
enters in Resolve's Project Manager.

--rehearse changes nothing real: it clones the standby into a throw-away copy, promotes
that on a side port, proves every library opens (SM_Project read, a write accepted),
reports the time it took and removes it; the standby keeps streaming throughout.

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
    parser.add_argument(
        "--rehearse",
        action="store_true",
        help="a failover drill that changes nothing: clone the standby into a throw-away "
        "copy, promote it on a side port, open every library (SM_Project read, a write "
        "accepted), report the time, remove it; the standby keeps streaming",
    )
    parser.set_defaults(handler=cmd_promote)


def cmd_promote(args: argparse.Namespace) -> int:
    config = load_from_args(args)
    configure_logging(args, config)
    if args.rehearse:
        return asyncio.run(rehearse(config))
    return asyncio.run(promote(config, force=args.force))


async def rehearse(config: Config) -> int:
    """``--rehearse``: print what the drill proved, exit 0 only when every library opened."""
    from laterbased.standby.rehearsal import rehearse as run_rehearsal

    if not config.standby.enabled:
        print("laterbased: no standby is configured (standby.enabled is false)", file=sys.stderr)
        return EXIT_FAILURE
    try:
        report = await run_rehearsal(config)
    except (JobFailed, OSError) as exc:
        print(f"laterbased: rehearsal failed: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    if report.source_note:
        print(f"laterbased: cloned {report.source}: {report.source_note}", file=sys.stderr)
    print(
        f"rehearsal: cloned {report.source} in {report.clone_seconds:.1f}s; the copy was "
        f"promoted and every library opened {report.failover_seconds:.1f}s after it started "
        f"(side port {report.side_port}); the copy is removed, the standby kept streaming"
    )
    for name, projects in sorted(report.opened.items()):
        print(f"  ok    {name}: SM_Project readable ({projects} projects), a write accepted")
    for name, error in sorted(report.failed.items()):
        print(f"  FAIL  {name}: {error}")
    if not report.opened and not report.failed:
        print('  FAIL  no Resolve library (a database with public."SM_Project") found')
    return EXIT_OK if report.ok else EXIT_FAILURE


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
            print(
                f"promoted by the running daemon ({body.get('method')}) in "
                f"{body.get('seconds', '?')}s; role: primary"
            )
            if body.get("failover_problem"):
                print(f"laterbased: {body['failover_problem']}", file=sys.stderr)
            _print_next_steps(
                config,
                port=int(body.get("port") or config.standby.port),
                listen_addresses=str(body.get("listen_addresses") or ""),
                libraries=[str(name) for name in body.get("libraries") or []],
                owners={
                    str(name): str(owner)
                    for name, owner in (body.get("library_owners") or {}).items()
                },
            )
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
    standby = config.standby
    if standby.promoted_port != standby.port or (
        standby.promoted_listen_addresses != standby.listen_addresses
    ):
        print(
            f"the running laterbased moves it to the failover endpoint within its check "
            f"interval (start laterbased if it is not running): listen_addresses "
            f"{standby.promoted_listen_addresses} port {standby.promoted_port}"
        )
    _print_next_steps(
        config,
        port=standby.promoted_port,
        listen_addresses=standby.promoted_listen_addresses,
        libraries=list(config.backup.databases),
    )
    return EXIT_OK


def _print_next_steps(
    config: Config,
    *,
    port: int,
    listen_addresses: str,
    libraries: list[str],
    owners: dict[str, str] | None = None,
) -> None:
    """What each workstation enters in Resolve, and what to do with the old primary."""
    print(f"the promoted server listens on {listen_addresses or '?'} port {port}")
    for line in workstation_steps(config, libraries, port, owners):
        print(line)
    print(old_primary_advice(config))
