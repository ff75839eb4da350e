"""``laterbased backups list`` and ``laterbased backup-now``."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
from datetime import UTC, datetime
from typing import Any

import aiohttp

from laterbased.backup.prune import RetentionPolicy, decide
from laterbased.backup.runner import ChainResult, run_backup_chain
from laterbased.config import Config
from laterbased.core.local_token import client_token
from laterbased.core.state import State
from laterbased.errors import EXIT_FAILURE, EXIT_OK, JobFailed
from laterbased.pg import sql
from laterbased.pg.connect import PgUnavailable, connect_primary
from laterbased.records import wal_archive
from laterbased.records.catalogue import GLOBALS_NAME, BackupRecord, Catalogue
from laterbased.units import format_size

logger = logging.getLogger(__name__)

# Said of a backup written by a pg_dump newer than its server (manifest field
# resolve_restore_readable: false): Resolve's Project Manager restores with the server's
# major's pg_restore.
NOT_READABLE_BY_RESOLVE = "not readable by Resolve's own restore"
# Said of a backup that started after now (beyond FUTURE_TOLERANCE): made while the clock ran
# fast, or the clock is wrong now. Never the newest, never restore --latest.
DATED_IN_THE_FUTURE = "dated in the future: check the clock"


def shown_name(record: BackupRecord) -> str:
    """The DATABASE cell: the real name, or its Python-quoted spelling when printing it as
    is would mislead (a line break or control character breaks the table; the name of the
    globals' row, ``(globals)``, or leading/trailing spaces would pass for another)."""
    if record.is_globals:
        return GLOBALS_NAME
    name = record.database
    if not name.isprintable() or name != name.strip() or name == GLOBALS_NAME or not name:
        return repr(name)
    if name[0] in "'\"":
        return repr(name)  # else the quoted spelling of another name could pass for it
    return name


def register(subparsers: Any, common: argparse.ArgumentParser) -> None:
    backups = subparsers.add_parser(
        "backups",
        help="list local backups",
        description="Inspect the local backups (the manifests in the backup directory).",
    )
    actions = backups.add_subparsers(dest="backups_command", metavar="ACTION")
    actions.required = True
    listing = actions.add_parser(
        "list",
        parents=[common],
        help="show each backup: database, time, size, uploaded, verified, kept by which rule",
        description="Show every local backup laterbased made, oldest first, with the "
        "retention rule that keeps it (newest, min_keep, age, hourly/daily/weekly/monthly, "
        "not-uploaded) or 'delete' when the next prune will remove it. NOTE says when a "
        "backup is not readable by Resolve's own restore (written by a pg_dump newer than "
        "its server: no pg_dump of the server's major was installed), with the fix, and "
        "'dated in the future' for a backup made while the clock ran fast (never the "
        "newest). A name with a line break or other control character is shown quoted.",
    )
    listing.add_argument("--json", action="store_true", help="one JSON array instead of a table")
    listing.add_argument("--database", default=None, help="only this database (its real name)")
    listing.set_defaults(handler=cmd_backups_list)

    now = subparsers.add_parser(
        "backup-now",
        parents=[common],
        help="run a backup now: dump → upload (when configured) → prune",
        description="Run the same chain as a scheduled backup: dump → upload (when "
        "configured) → prune. When a laterbased daemon answers on http.host:http.port, it is "
        "asked to do it (POST /api/backup with http.token, or the local token the daemon "
        "writes into state_dir, readable by root and its run-as user); otherwise the chain "
        "runs in this process, after taking the backup directory's lock (refused while "
        "another laterbased process holds it) and emptying .partial/ of interrupted runs. "
        "Exit status 0 only when every step succeeded.",
    )
    now.add_argument("--database", default=None, help="dump only this database")
    now.add_argument("--json", action="store_true", help="print the run result as JSON")
    now.set_defaults(handler=cmd_backup_now)


def _load(args: argparse.Namespace) -> Config:
    from laterbased.ops.args import configure_logging, load_from_args

    config = load_from_args(args)
    configure_logging(args, config)
    return config


DATABASE_GONE = "database gone from the primary (its backups stay until retention)"


async def _primary_databases(config: Config) -> set[str] | None:
    """The databases on the primary now, or None when it cannot be asked (then no backup is
    called "gone": absence from a server we cannot see proves nothing)."""
    if config.primary.host is None:
        return None
    try:
        conn = await connect_primary(config.primary, application_name="laterbased-backups-list")
    except PgUnavailable as exc:
        logger.info("backups list: cannot ask the primary which databases exist: %s", exc)
        return None
    try:
        return {row["datname"] for row in await conn.fetch(sql.CONNECTABLE_DATABASES)}
    finally:
        await conn.close()


def cmd_backups_list(args: argparse.Namespace) -> int:
    config = _load(args)
    catalogue = Catalogue(config.backup_directory)
    records = catalogue.list_backups()
    existing = asyncio.run(_primary_databases(config)) if records else None
    policy = RetentionPolicy.from_config(config.backup, config.upload.enabled)
    now = datetime.now(UTC)
    decisions = decide(records, policy, now, config.zone)
    if args.database is not None:
        # The database of that name; the globals are not a database, even one called so.
        decisions = [d for d in decisions if d.record.series == args.database]
    if args.json:
        rows = [
            d.record.to_json()
            | {
                "path": str(d.record.path),
                "kept_by": d.rules,
                "keep": d.keep,
                "globals": d.record.is_globals,
                "future": d.record.from_the_future(now),
                "database_gone": _gone(d.record, existing),
            }
            for d in decisions
        ]
        print(json.dumps(rows, indent=2, ensure_ascii=False))
        return EXIT_OK
    if not decisions:
        if args.database is not None and records:
            # A typo in --database must not read as "there are no backups at all".
            known = ", ".join(repr(name) for name in sorted({r.database for r in records}))
            print(
                f"no backups of {args.database!r} in {config.backup_directory}; "
                f"backed-up databases: {known}"
            )
        else:
            print(f"no backups in {config.backup_directory}")
        _print_pitr_window(config)
        return EXIT_OK
    zone = config.zone
    header = ("DATABASE", "TIME", "SIZE", "UPLOADED", "VERIFIED", "KEPT BY", "NOTE")
    rows_text: list[tuple[str, ...]] = []
    fixes: list[str] = []
    for decision in decisions:
        record = decision.record
        verified = {None: "-", True: "ok", False: "FAILED"}[record.verified]
        note = ""
        if record.from_the_future(now):
            note = DATED_IN_THE_FUTURE
        if _gone(record, existing):
            note = ", ".join(filter(None, (note, DATABASE_GONE)))
        if record.resolve_restore_readable is False:
            note = ", ".join(filter(None, (note, NOT_READABLE_BY_RESOLVE)))
            if record.resolve_restore_detail and record.resolve_restore_detail not in fixes:
                fixes.append(record.resolve_restore_detail)
        rows_text.append(
            (
                shown_name(record),
                record.started.astimezone(zone).strftime("%Y-%m-%d %H:%M:%S %Z"),
                format_size(record.size),
                "yes" if record.uploaded_at else "no",
                verified,
                decision.describe(),
                note,
            )
        )
    widths = [max(len(row[i]) for row in [header, *rows_text]) for i in range(len(header))]
    for row in [header, *rows_text]:
        print(
            "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        )
    print(f"{len(decisions)} backup(s) in {config.backup_directory}")
    for fix in fixes:
        print(fix)
    _print_pitr_window(config)
    return EXIT_OK


def _print_pitr_window(config: Config) -> None:
    """The point-in-time window (restore --at to the second), when there is an archive."""
    root = config.backup_directory
    if not config.pitr.enabled and not wal_archive.wal_dir(root).is_dir():
        return
    window = wal_archive.coverage(root)
    bases = len(wal_archive.list_base_backups(root))
    zone = config.zone
    if window.earliest is None or window.latest is None:
        text = "nothing restorable to the second yet (no base backup the archive can carry on)"
    else:
        text = (
            f"{window.earliest.astimezone(zone).strftime('%Y-%m-%d %H:%M:%S %Z')} to "
            f"{window.latest.astimezone(zone).strftime('%Y-%m-%d %H:%M:%S %Z')}"
        )
    print(f"point in time (restore --at, any second): {text}; {bases} base backup(s)")
    for first, last in window.gaps:
        print(f"  WAL segments {first} to {last} are missing from the archive")


def _gone(record: BackupRecord, existing: set[str] | None) -> bool | None:
    """Whether the database of ``record`` is no longer on the primary (None: unknown)."""
    if existing is None or record.is_globals:
        return None
    return record.database not in existing


def _daemon_url(config: Config) -> str:
    host = config.http.host
    if host in {"0.0.0.0", "", "*"}:  # noqa: S104 - we connect, not listen
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{config.http.port}"


async def _ask_daemon(config: Config, database: str | None) -> dict[str, Any] | None:
    """The daemon's run result, or None when no daemon answers."""
    if not config.http.enabled:
        return None
    url = _daemon_url(config)
    # The chain may run for hours (pg_dump timeout); only connecting is bounded tightly.
    timeout = aiohttp.ClientTimeout(total=None, connect=5.0, sock_connect=5.0)
    try:
        async with aiohttp.ClientSession(timeout=timeout) as session:
            async with session.get(f"{url}/liveness") as probe:
                if probe.status != 200:
                    return None
            token, why_not = client_token(config)
            if token is None:
                raise JobFailed(
                    f"a laterbased daemon is running at {url}, and {why_not} (running a "
                    "second backup next to it is refused)"
                )
            headers = {"Authorization": f"Bearer {token}"}
            body = {"database": database} if database else {}
            async with session.post(f"{url}/api/backup", json=body, headers=headers) as answer:
                if answer.status in (401, 403):
                    detail = (await answer.json(content_type=None)).get("error", "")
                    raise JobFailed(f"the daemon at {url} refused the request: {detail}")
                result: dict[str, Any] = await answer.json(content_type=None)
                return result
    except aiohttp.ClientConnectionError:
        return None


def _print_result(result: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print(json.dumps(result, indent=2, ensure_ascii=False, default=str))
        return
    print(f"run {result.get('run')}: {result.get('result')}")
    for step in result.get("steps", []):
        parts = [f"  {step.get('step')}"]
        if step.get("database"):
            parts.append(str(step["database"]))
        parts.append(str(step.get("result")))
        if step.get("size") is not None:
            parts.append(format_size(int(step["size"])))
        if step.get("detail"):
            parts.append(str(step["detail"]))
        if step.get("deleted"):
            parts.append(f"deleted {len(step['deleted'])}")
        print(" ".join(parts))


async def _backup_now(config: Config, database: str | None) -> dict[str, Any]:
    answer = await _ask_daemon(config, database)
    if answer is not None:
        return answer
    logger.info("no daemon answers; running the backup in this process")
    catalogue = Catalogue(config.backup_directory)
    # Like the daemon at start: take the directory (a daemon with its HTTP API off, or
    # another backup-now, may be writing into it) and clear what an interrupted run left.
    held = await asyncio.to_thread(catalogue.claim)
    try:
        state = State(config=config)
        result: ChainResult = await run_backup_chain(
            state, databases=[database] if database else None, trigger="backup-now"
        )
    finally:
        held.release()
    return result.to_json()


def cmd_backup_now(args: argparse.Namespace) -> int:
    config = _load(args)
    # CatalogueBusy (another laterbased writes the directory) ends up in cli.main: exit 1.
    result = asyncio.run(_backup_now(config, args.database))
    _print_result(result, args.json)
    return EXIT_OK if result.get("result") == "success" else EXIT_FAILURE
