"""``laterbased accept-primary``: accept the cluster that answers at the primary's address now.

laterbased remembers the system identifier of its primary (``<state_dir>/primary-identity.json``,
see :mod:`laterbased.records.identity`). When another cluster answers there (a fresh ``initdb``, a
reinstalled server, another host at the same address) it takes no backups of it and creates
no slot on it until the operator runs this command with that cluster's identifier.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
from typing import Any

from laterbased.config import Config
from laterbased.errors import EXIT_FAILURE, EXIT_OK, RefuseToRun
from laterbased.ops.args import configure_logging, load_from_args
from laterbased.pg import sql
from laterbased.pg.connect import PgUnavailable, connect_primary
from laterbased.records import identity

DESCRIPTION = """\
Accept the PostgreSQL cluster that answers at primary.host:primary.port as laterbased's
primary from now on.

laterbased records the system identifier of its primary (every initdb makes a new one; a
failover to a standby of the same cluster keeps it). When another cluster answers at that
address, /healthz is critical naming both identifiers, no dump of it goes into the existing
backup series and no replication slot is created on it. If that server is really the new
primary (the library was moved or restored there), run this command with the identifier it
reports, as shown by /healthz or by running this command without --system-identifier.

Afterwards its dumps join the existing series of each database name, and the old cluster's
backups age out under the usual retention: copy them elsewhere first if you need them longer.
The standby still holds the old cluster: it is moved aside (never deleted) and cloned afresh
only with standby.reclone_on_mismatch: true; otherwise stop laterbased and move
standby.data_dir aside yourself. A running daemon picks the change up at its next poll.

exit codes: 0 accepted (or already accepted), 1 not accepted (identifier missing or not the
primary's, primary unreachable), 78 bad configuration
"""


def register(subparsers: Any, common: argparse.ArgumentParser) -> None:
    parser = subparsers.add_parser(
        "accept-primary",
        parents=[common],
        help="accept a new primary cluster (another system identifier) at primary.host",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--system-identifier",
        metavar="ID",
        default=None,
        help="the new primary's system identifier, as a confirmation: it must be the one "
        "the primary reports now",
    )
    parser.set_defaults(handler=cmd_accept_primary)


def cmd_accept_primary(args: argparse.Namespace) -> int:
    config = load_from_args(args)
    configure_logging(args, config)
    return asyncio.run(accept_primary(config, args.system_identifier))


async def primary_identifier(config: Config) -> str | None:
    """The system identifier the configured primary reports now (None: cannot be read)."""
    conn = await connect_primary(config.primary, application_name="laterbased-accept-primary")
    try:
        timeout = config.monitor.query_timeout
        version_num = int(await conn.fetchval(sql.SERVER_VERSION_NUM, timeout=timeout))
        return await identity.read_primary_identifier(conn, config, version_num, timeout)
    finally:
        with contextlib.suppress(Exception):
            await conn.close(timeout=config.monitor.query_timeout)


async def accept_primary(config: Config, confirmed: str | None) -> int:
    if config.primary.host is None:
        print("laterbased: primary.host is not set: no primary to accept", file=sys.stderr)
        return EXIT_FAILURE
    where = identity.primary_address(config)
    try:
        observed = await primary_identifier(config)
    except PgUnavailable as exc:
        print(f"laterbased: cannot ask the primary {where}: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    if observed is None:
        print(
            f"laterbased: the primary {where} does not tell its system identifier (see the "
            "warning above); nothing accepted",
            file=sys.stderr,
        )
        return EXIT_FAILURE
    try:
        accepted = await asyncio.to_thread(identity.load_accepted, config.state_dir)
    except RefuseToRun as exc:  # a damaged record: this command is how to write it anew
        print(f"laterbased: {exc}", file=sys.stderr)
        accepted = None
    if accepted is not None and accepted.system_identifier == observed:
        print(f"the primary {where} is the accepted cluster already (system identifier "
              f"{observed}, {accepted.how})")
        return EXIT_OK
    before = (
        f"laterbased accepted {accepted.system_identifier} ({accepted.how})"
        if accepted is not None
        else "no cluster was accepted yet"
    )
    if confirmed != observed:
        wrong = (
            f"--system-identifier {confirmed} is not what it reports. "
            if confirmed is not None
            else ""
        )
        print(
            f"laterbased: the primary {where} has system identifier {observed}; {before}. "
            f"{wrong}To accept it as the new primary, run:\n"
            f"  laterbased accept-primary --system-identifier {observed}",
            file=sys.stderr,
        )
        return EXIT_FAILURE
    await asyncio.to_thread(
        identity.save_accepted, config.state_dir, observed, f"accepted by accept-primary at {where}"
    )
    print(f"accepted the primary {where}, system identifier {observed} ({before}).")
    print(
        "Its backups join the existing series; the old cluster's age out under retention "
        f"(backup directory {config.backup_directory})."
    )
    if config.standby.enabled:
        if config.standby.reclone_on_mismatch:
            print("The standby of the old cluster is moved aside (not deleted) and cloned "
                  "afresh from the new primary.")
        else:
            print(
                "The standby still holds the old cluster and cannot follow the new primary: "
                "set standby.reclone_on_mismatch: true, or stop laterbased and move "
                f"{config.standby_data_dir} aside."
            )
    return EXIT_OK
