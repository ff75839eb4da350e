"""``laterbased check``: one line per check, OK / WARN / FAIL, exit 0 / 1 / 2."""

from __future__ import annotations

import argparse
import asyncio
import json
from typing import Any

from laterbased.config import Config
from laterbased.errors import ConfigError
from laterbased.ops.args import configure_logging, load_from_args
from laterbased.ops.check.checks import CheckResult, as_json, exit_code, fail
from laterbased.ops.check.failover import run_all_checks

DESCRIPTION = """\
Check whether this setup will work, one line per check with a hint when it is not OK:
configuration; primary reachable; authentication; replication privilege; pg_hba admits a
replication connection (a real one); wal_level; the replication slot (exists, active,
retained WAL, wal_status); PostgreSQL binaries for the standby and pg_dump matching the
primary's major version; the local standby's system identifier; collation and platform of
the primary (macOS/Windows vs this Linux standby); primary settings that would stop the
standby here; backup directory writable with free space; age of the newest backup; rclone
and the remote; the HTTP port. The failover plan, while the primary is still healthy:
standby.failover_address is an address of this host, standby.failover_port is free, the
standby's pg_hba.conf admits the workstations (primary.user into each library), a firewall
reminder. Once the standby was promoted, it is checked as the primary (no slot advice).
"""

EPILOG = "exit codes (like a monitoring plugin): 0 all OK, 1 warnings, 2 failures"


def register(subparsers: Any, common: argparse.ArgumentParser) -> None:
    parser = subparsers.add_parser(
        "check",
        parents=[common],
        help="check the whole setup: OK/WARN/FAIL per line, exit 0/1/2",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    parser.set_defaults(handler=cmd_check)


def render(results: list[CheckResult]) -> str:
    width = max(len(r.name) for r in results)
    lines = []
    for result in results:
        lines.append(f"{result.status:<4}  {result.name:<{width}}  {result.message}")
        if result.hint and result.status != "OK":
            lines.append(f"{'':<4}  {'':<{width}}  → {result.hint}")
    failures = sum(r.status == "FAIL" for r in results)
    warnings = sum(r.status == "WARN" for r in results)
    lines.append("")
    lines.append(f"{len(results)} checks: {failures} failed, {warnings} warnings")
    return "\n".join(lines)


def cmd_check(args: argparse.Namespace) -> int:
    config: Config | None = None
    try:
        config = load_from_args(args)
    except ConfigError as exc:
        results = [fail("configuration", problem) for problem in exc.problems]
    configure_logging(args, config)
    if config is not None:
        results = asyncio.run(run_all_checks(config))
    if args.json:
        print(json.dumps(as_json(results), indent=2))
    else:
        print(render(results))
    return exit_code(results)
