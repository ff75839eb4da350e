"""``laterbased pgadmin-servers``: a pgAdmin 4 servers.json with the primary and standby."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

from laterbased.errors import EXIT_OK, EXIT_USAGE
from laterbased.ops.args import configure_logging, load_from_args
from laterbased.ops.pgadmin.servers import passfile_lines, servers_document
from laterbased.pg.passfile import write_passfile
from laterbased.proc import RunAs

DESCRIPTION = """\
Write a pgAdmin 4 servers.json listing the Resolve primary and the laterbased standby in a
"Laterbase" group (name, host, port, maintenance database, user, SSL mode). Load it with
pgAdmin's `setup.py load-servers FILE`, or mount it as PGADMIN_SERVER_JSON_FILE in the
pgAdmin container. The file never contains a password. With --with-passfile PATH,
laterbased also writes the configured password into the libpq passfile PATH (mode 0600)
and servers.json points pgAdmin at it.
"""


def register(subparsers: Any, common: argparse.ArgumentParser) -> None:
    parser = subparsers.add_parser(
        "pgadmin-servers",
        parents=[common],
        help="write a pgAdmin servers.json with the primary and the standby",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "-o", "--output", type=Path, default=None, help="write here (default: stdout)"
    )
    parser.add_argument(
        "--with-passfile",
        type=Path,
        metavar="PATH",
        default=None,
        help="write the configured password into this passfile (0600) and reference it; "
        "without a configured password, only reference an existing passfile",
    )
    parser.add_argument(
        "--passfile-ref",
        metavar="PATH",
        default=None,
        help="the passfile's path as pgAdmin sees it, if different (e.g. inside the "
        "pgAdmin container: /pgpass); default: the --with-passfile path",
    )
    parser.add_argument(
        "--passfile-owner",
        metavar="UID[:GID]",
        default=None,
        help="owner of the written passfile, for a pgAdmin running as another user "
        "(the pgAdmin container runs as 5050:0)",
    )
    parser.add_argument(
        "--standby-host",
        default=None,
        help="how pgAdmin reaches the standby (default: standby.listen_addresses' first "
        "address, or localhost)",
    )
    parser.set_defaults(handler=cmd_pgadmin_servers)


def _owner(text: str | None) -> RunAs | None:
    if text is None:
        return None
    uid_text, _sep, gid_text = text.partition(":")
    uid = int(uid_text)
    gid = int(gid_text) if gid_text else uid
    return RunAs(name=str(uid), uid=uid, gid=gid, home="/")


def _write_atomically(path: Path, content: str) -> None:
    fd, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(content)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(temp, 0o644)
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise


def cmd_pgadmin_servers(args: argparse.Namespace) -> int:
    config = load_from_args(args)
    configure_logging(args, config)
    try:
        owner = _owner(args.passfile_owner)
    except ValueError:
        print("laterbased: --passfile-owner takes numbers: UID or UID:GID", file=sys.stderr)
        return EXIT_USAGE
    reference: str | None = None
    if args.with_passfile is not None:
        reference = args.passfile_ref or str(args.with_passfile)
        lines = passfile_lines(config, args.standby_host)
        if lines:
            asyncio.run(write_passfile(args.with_passfile, lines, owner))
            print(f"wrote passfile {args.with_passfile} (mode 0600)", file=sys.stderr)
        elif not args.with_passfile.exists():
            print(
                f"laterbased: no password configured and {args.with_passfile} does not exist; "
                "set primary.password (REPL_PASSWORD) or create the passfile",
                file=sys.stderr,
            )
            return EXIT_USAGE
    document = servers_document(config, passfile=reference, standby_host=args.standby_host)
    text = json.dumps(document, indent=2) + "\n"
    if args.output is None:
        sys.stdout.write(text)
    else:
        _write_atomically(args.output, text)
        print(f"wrote {args.output} ({len(document['Servers'])} servers)", file=sys.stderr)
    return EXIT_OK
