"""``laterbased prepare-primary``: make the Resolve server ready for a standby."""

from __future__ import annotations

import argparse
import asyncio
import getpass
import json
import os
import sys
from pathlib import Path
from typing import Any

from laterbased.config import Config
from laterbased.errors import EXIT_FAILURE, EXIT_OK, LaterbasedError
from laterbased.ops.args import configure_logging, load_from_args
from laterbased.ops.prepare_primary.steps import (
    DEFAULT_MAX_SLOT_WAL_KEEP_SIZE,
    SetupOptions,
    SetupReport,
    prepare_primary,
)

DESCRIPTION = """\
Prepare the Resolve PostgreSQL server (the primary) for a laterbased standby, idempotently:
ensure the replication role (LOGIN REPLICATION), bound the WAL a slot may keep
(max_slot_wal_keep_size, default 10GB, on PostgreSQL 13+, when it is unlimited: an abandoned
standby cannot fill the server's disk; --no-wal-cap leaves it unlimited), the physical
replication slot, check wal_level / max_wal_senders / max_replication_slots / hot_standby
(printing exactly what to set when a restart is needed), print the pg_hba.conf line this
host needs and where pg_hba.conf is (and whether the server admits it: a real replication
connection decides), reload the configuration, and finally open a real replication
connection to prove a standby can connect.

The admin password comes from --password-file, $PGPASSWORD, the configured password when
the admin is primary.user, or a prompt on a terminal; never from the command line.
"""

EPILOG = "exit codes: 0 ready, 1 something is missing (listed), 78 bad configuration"


def register(subparsers: Any, common: argparse.ArgumentParser) -> None:
    parser = subparsers.add_parser(
        "prepare-primary",
        parents=[common],
        help="prepare the Resolve server: role, slot, settings, pg_hba line, test",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--admin-user",
        default=None,
        help="superuser to connect as (default: primary.user, i.e. postgres)",
    )
    parser.add_argument(
        "--password-file",
        type=Path,
        default=None,
        help="file holding the admin user's password (first line)",
    )
    parser.add_argument(
        "--create-role",
        metavar="NAME",
        default=None,
        help="use a separate replication role NAME (created with LOGIN REPLICATION) instead "
        "of primary.user; then set primary.user: NAME in the configuration",
    )
    parser.add_argument(
        "--role-password-file",
        type=Path,
        default=None,
        help="password for the replication role (default: primary.password / REPL_PASSWORD "
        "when the role is primary.user; asked on a terminal otherwise)",
    )
    parser.add_argument(
        "--reset-password",
        action="store_true",
        help="also set the replication role's password when the role already exists",
    )
    parser.add_argument(
        "--apply",
        action="store_true",
        help="accepted for old scripts: the WAL cap is now set by default (see --no-wal-cap)",
    )
    parser.add_argument(
        "--max-slot-wal-keep-size",
        default=DEFAULT_MAX_SLOT_WAL_KEEP_SIZE,
        metavar="SIZE",
        help=f"the WAL cap set when the server has none (default "
        f"{DEFAULT_MAX_SLOT_WAL_KEEP_SIZE}); keep it below the server's free disk space",
    )
    parser.add_argument(
        "--no-wal-cap",
        action="store_true",
        help="leave max_slot_wal_keep_size unlimited (-1): the slot then keeps every WAL "
        "file an absent standby has not received, until the server's disk is full",
    )
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="change nothing on the server; show what would change (with --apply too)",
    )
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.set_defaults(handler=cmd_prepare_primary)


def _read_secret_file(path: Path, what: str) -> str:
    try:
        return path.read_text(encoding="utf-8").splitlines()[0] if path.stat().st_size else ""
    except (OSError, UnicodeDecodeError, IndexError) as exc:
        raise LaterbasedError(f"{what}: cannot read {path}: {exc}") from None


def _prompt(text: str) -> str | None:
    if not (sys.stdin.isatty() and sys.stderr.isatty()):
        return None
    return getpass.getpass(text)


def _admin_password(args: argparse.Namespace, config: Config, admin_user: str) -> str | None:
    if args.password_file is not None:
        return _read_secret_file(args.password_file, "--password-file")
    if os.environ.get("PGPASSWORD"):
        return os.environ["PGPASSWORD"]
    if admin_user == config.primary.user and config.primary.password:
        return config.primary.password.reveal()
    return _prompt(f"password for PostgreSQL user {admin_user}: ")


def _role_password(
    args: argparse.Namespace, config: Config, role: str, admin_user: str, admin: str | None
) -> str | None:
    if args.role_password_file is not None:
        return _read_secret_file(args.role_password_file, "--role-password-file")
    if role == config.primary.user and config.primary.password:
        return config.primary.password.reveal()
    if role == admin_user:
        return admin
    first = _prompt(f"password for the replication role {role}: ")
    if first is None:
        return None
    if _prompt(f"again, password for {role}: ") != first:
        raise LaterbasedError("the two passwords differ; nothing was changed")
    return first


def options_from_args(args: argparse.Namespace, config: Config) -> SetupOptions:
    admin_user = args.admin_user or config.primary.user
    role = args.create_role or config.primary.user
    admin_password = _admin_password(args, config, admin_user)
    return SetupOptions(
        admin_user=admin_user,
        admin_password=admin_password,
        role=role,
        role_password=_role_password(args, config, role, admin_user, admin_password),
        separate_role=args.create_role is not None,
        reset_password=args.reset_password,
        apply=args.apply,
        dry_run=args.dry_run,
        max_slot_wal_keep_size=args.max_slot_wal_keep_size,
        wal_cap=not args.no_wal_cap,
    )


_MARKS = {
    "ok": "ok",
    "changed": "changed",
    "would-change": "would change",
    "warn": "WARN",
    "missing": "MISSING",
}


def render(report: SetupReport, options: SetupOptions, config: Config) -> str:
    lines = [
        f"prepare-primary {report.server}"
        + (" (dry run: nothing changed)" if options.dry_run else "")
    ]
    for step in report.steps:
        lines.append(f"  [{_MARKS[step.status]:>12}] {step.name}: {step.message}")
        if step.hint and step.status in ("missing", "warn"):
            lines.append(f"  {'':>14}   → {step.hint}")
    lines.append("")
    if report.hba_line:
        lines.append("pg_hba.conf line for this laterbased host:")
        lines.append(f"    {report.hba_line}")
        if report.hba_file:
            lines.append(f"  this server's file: {report.hba_file}")
        lines.append(
            "  Resolve on macOS: /Library/Application Support/PostgreSQL/<VERSION>/data/"
            "pg_hba.conf; on Windows: C:\\Program Files\\PostgreSQL\\<VERSION>\\data\\pg_hba.conf"
        )
        lines.append("")
    if options.separate_role and options.role != config.primary.user:
        lines.append(
            f"Set primary.user: {options.role} (PRIMARY_USER={options.role}) and its password "
            "in primary.password (REPL_PASSWORD) so laterbased uses this role."
        )
    if report.ready:
        lines.append("READY: a standby can bootstrap from this server.")
    else:
        names = ", ".join(step.name for step in report.missing)
        lines.append(f"NOT READY: {len(report.missing)} missing: {names}")
    return "\n".join(lines)


def cmd_prepare_primary(args: argparse.Namespace) -> int:
    config = load_from_args(args)
    configure_logging(args, config)
    options = options_from_args(args, config)
    report = asyncio.run(prepare_primary(config, options))
    if args.json:
        print(json.dumps(report.as_dict(), indent=2))
    else:
        print(render(report, options, config))
    return EXIT_OK if report.ready else EXIT_FAILURE
