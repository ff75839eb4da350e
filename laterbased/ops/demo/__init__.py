"""``laterbased demo``: see the whole thing work without a Resolve server."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any


def register(subparsers: Any, common: argparse.ArgumentParser) -> None:
    # The demo writes its own configuration: of the common options only logging applies.
    logging_only = argparse.ArgumentParser(add_help=False)
    group = logging_only.add_argument_group("logging")
    group.add_argument("--log-level", choices=["debug", "info", "warning", "error"], default=None)
    group.add_argument("--log-format", choices=["text", "json"], default=None)
    parser = subparsers.add_parser(
        "demo",
        parents=[logging_only],
        help="run the daemon against a throw-away local 'Resolve' server",
        description="Start a throw-away local PostgreSQL primary holding a Resolve-like "
        "project library (with a writer that saves a project every few seconds), then run "
        "the real daemon against it: a standby streaming through a replication slot, a "
        "backup every minute (copied to a local rclone remote when rclone is available), "
        "the status page and metrics. Ctrl-C stops everything and removes what the demo "
        "created. As root, the servers run as the 'postgres' OS user.",
    )
    parser.add_argument(
        "--keep", action="store_true", help="keep the data, backups and config after Ctrl-C"
    )
    parser.add_argument(
        "--http-port",
        type=int,
        default=8434,
        help="status/metrics port (default 8434; a free one is chosen if it is taken)",
    )
    parser.add_argument(
        "--schedule",
        default="* * * * *",
        help="backup schedule, cron syntax (default: every minute)",
    )
    parser.add_argument(
        "--dir",
        type=Path,
        default=None,
        help="where to put the demo's files (default: a new temporary directory)",
    )
    parser.add_argument("--no-upload", action="store_true", help="do not demonstrate rclone")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from laterbased.ops.args import configure_logging
    from laterbased.ops.demo.session import DemoOptions, run_demo

    configure_logging(args, None)
    return run_demo(
        DemoOptions(
            keep=args.keep,
            http_port=args.http_port,
            schedule=args.schedule,
            directory=args.dir,
            upload=not args.no_upload,
        )
    )
