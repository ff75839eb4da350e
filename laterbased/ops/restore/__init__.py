"""``laterbased restore``: a backup into a new database (never over an existing one)."""

from __future__ import annotations

import argparse
import asyncio
import os
from datetime import UTC, datetime, tzinfo
from pathlib import Path
from typing import Any

from laterbased.errors import EXIT_OK, LaterbasedError
from laterbased.ops.args import configure_logging, load_from_args
from laterbased.ops.restore.steps import RestoreRequest, restore

DESCRIPTION = """\
Restore a backup into a NEW database: the newest one of --database, or a file given with
--file, or --at TIME: with the point-in-time archive on (pitr:) and covering TIME, the
database exactly as it was then (newest base backup before TIME, WAL replayed to TIME in a
throw-away cluster, pg_dump of the one database), else the newest backup started at or
before TIME; the output says which. A TIME the archive cannot reach although its window
began before it (WAL segments missing, or not received yet) is refused with exit 3 and the
exact ranges that can be restored: pick a TIME inside one, or add --from-dump for the newest
dump at or before TIME. A backup that is not in the local backup
directory is downloaded from the rclone remote, and so is the point-in-time archive's part
TIME needs (a base backup and its WAL) when the local archive does not cover TIME (the
output says so). Its sha256 is checked against its manifest,
the database is created UTF8 from template0, filled with pg_restore (-j N in parallel) or
psql for plain .sql.gz backups, and only then given the --target-db name. An existing
database of that name is refused unless --replace, which renames it aside to
<name>_before_restore_<UTC time> (never dropped).

A restored database is marked (COMMENT ON DATABASE 'laterbased: restored ...') and left out
of laterbased's automatic backups, which otherwise take every Resolve library they find:
--back-up lets it join them (as does listing it in backup.databases).

Then, in DaVinci Resolve: Project Manager → Project Libraries → Add Project Library →
Connect → the server's address, database name = --target-db, user and password.
"""


def _moment(text: str) -> datetime:
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a time: use ISO format, e.g. 2026-11-26T14:00 or 2026-11-26T13:00:00Z"
        ) from None


def _local_moment(wall: datetime, zone: tzinfo) -> datetime:
    """A TIME without a zone, in the configured one; one that the clock change skips or
    shows twice is refused with the choices, never guessed (the night of the change is
    when a restore to 01:30 may be needed most)."""
    first, second = wall.replace(tzinfo=zone, fold=0), wall.replace(tzinfo=zone, fold=1)
    if first.utcoffset() == second.utcoffset():
        return first
    name = getattr(zone, "key", str(zone))
    if first.astimezone(UTC).astimezone(zone).replace(tzinfo=None) == wall:
        raise LaterbasedError(
            f"--at {wall.isoformat()} happens twice in {name} (the clocks went back): say "
            f"which with its offset, --at {first.isoformat()} (the first) or --at "
            f"{second.isoformat()} (the second)"
        )
    raise LaterbasedError(
        f"--at {wall.isoformat()} does not exist in {name} (the clocks went forward): "
        f"choose another time, or give an offset, e.g. --at {first.isoformat()}"
    )


def register(subparsers: Any, common: argparse.ArgumentParser) -> None:
    parser = subparsers.add_parser(
        "restore",
        parents=[common],
        help="restore a backup into a new database (refuses to overwrite)",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--database", help="the backed-up database to restore")
    which = parser.add_mutually_exclusive_group()
    which.add_argument(
        "--at",
        type=_moment,
        metavar="TIME",
        help="the database as it was at TIME when the point-in-time archive (pitr:) covers "
        "it, else the newest backup started at or before TIME (ISO 8601; no zone = the "
        "config's timezone, refused when the clock change shows that time twice or skips "
        "it); the output says which",
    )
    which.add_argument("--file", type=Path, metavar="PATH", help="restore this backup file")
    parser.add_argument(
        "--from-dump",
        action="store_true",
        help="with --at: the newest dump started at or before TIME, never the point-in-time "
        "archive (for a TIME the archive refuses: in a gap of its WAL)",
    )
    which.add_argument("--latest", action="store_true", help="the newest backup (default)")
    parser.add_argument(
        "--target-db", required=True, metavar="NAME", help="name of the database to create"
    )
    parser.add_argument("--target-host", help="server to restore into (default: primary.host)")
    parser.add_argument("--target-port", type=int, help="its port (default: primary.port)")
    parser.add_argument("--target-user", help="user to restore as (default: primary.user)")
    parser.add_argument(
        "--password-file",
        type=Path,
        help="password of --target-user (default: primary.password when it is primary.user, "
        "else $PGPASSWORD)",
    )
    parser.add_argument(
        "--replace",
        action="store_true",
        help="rename an existing --target-db aside (with a timestamp) first",
    )
    parser.add_argument(
        "--back-up",
        action="store_true",
        help="let the restored database join laterbased's automatic backups (by default it "
        "is marked restored and left out of them)",
    )
    parser.add_argument(
        "-j",
        "--jobs",
        type=int,
        default=2,
        help="parallel pg_restore jobs for custom-format backups (default 2)",
    )
    parser.set_defaults(handler=cmd_restore)


def cmd_restore(args: argparse.Namespace) -> int:
    config = load_from_args(args)
    configure_logging(args, config)
    if args.file is None and not args.database:
        raise LaterbasedError(
            "say which backup: --database NAME (optionally --at TIME), or --file PATH"
        )
    if args.from_dump and args.at is None:
        raise LaterbasedError("--from-dump goes with --at TIME")
    at = args.at
    if at is not None and at.tzinfo is None:
        at = _local_moment(at, config.zone)
    password = None
    if args.password_file is not None:
        try:
            password = args.password_file.read_text(encoding="utf-8").splitlines()[0]
        except (OSError, IndexError, UnicodeDecodeError) as exc:
            raise LaterbasedError(f"--password-file {args.password_file}: {exc}") from None
    elif args.target_user and args.target_user != config.primary.user:
        password = os.environ.get("PGPASSWORD")
    request = RestoreRequest(
        target_db=args.target_db,
        database=args.database,
        at=at,
        file=args.file,
        target_host=args.target_host,
        target_port=args.target_port,
        target_user=args.target_user,
        target_password=password,
        replace=args.replace,
        jobs=args.jobs,
        back_up=args.back_up,
        from_dump=args.from_dump,
    )
    result = asyncio.run(restore(config, request))
    print(f"restored {result.source}")
    if result.at_how:
        print(f"  --at: {result.at_how}")
    print(f"  into database {result.target_db!r} ({result.tables} tables, {result.seconds:.1f}s)")
    if result.moved_aside:
        print(f"  the previous {result.target_db!r} is now {result.moved_aside!r} (not dropped)")
    if args.back_up:
        print("  it joins laterbased's automatic backups (--back-up)")
    else:
        print(
            "  not in laterbased's automatic backups (marked restored; --back-up, or list it "
            "in backup.databases, to back it up)"
        )
    print(
        "  In Resolve: Project Manager → Project Libraries → Add Project Library → Connect, "
        f"database {result.target_db!r}"
    )
    return EXIT_OK
