"""The ``laterbased`` command line: the daemon and the operator commands around it."""

from __future__ import annotations

import argparse
import asyncio
import importlib
import json
import logging
import sys
from collections.abc import Sequence

import yaml

from laterbased import __version__
from laterbased.config import config_as_dict
from laterbased.errors import EXIT_CONFIG, EXIT_OK, EXIT_SOFTWARE, ConfigError, LaterbasedError
from laterbased.logs import setup_logging
from laterbased.ops import COMMAND_MODULES
from laterbased.ops.args import common_options, config_loader, configure_logging, load_from_args

logger = logging.getLogger("laterbased")

DESCRIPTION = """\
laterbased keeps a hot standby of a DaVinci Resolve PostgreSQL project library, takes
scheduled pg_dump backups (optionally copied off-site with rclone), and reports its health
over HTTP (/healthz, /primary, /replica, /status, /metrics).

Configuration comes from a YAML file (--config, or $LATERBASED_CONFIG), then the legacy
Laterbase .env names (PRIMARY_HOST, REPL_PASSWORD, …, also via --env-file), then
LATERBASED_<SECTION>_<KEY> variables. See config/laterbased.example.yaml.
"""

EPILOG = """\
exit codes: 0 ok, 1 failure, 3 refused to run (unsafe), 69 port in use, 78 bad config
"""


def build_parser() -> argparse.ArgumentParser:
    common = common_options()
    parser = argparse.ArgumentParser(
        prog="laterbased",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"laterbased {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    run = sub.add_parser(
        "run",
        parents=[common],
        help="run the daemon in the foreground",
        description="Run the daemon in the foreground: standby supervisor, replication "
        "monitor, backup scheduler and HTTP server. SIGTERM/SIGINT stop it cleanly (exit 0); "
        "SIGHUP re-reads the configuration (an invalid one is rejected, the old one kept).",
    )
    run.set_defaults(handler=cmd_run)

    config = sub.add_parser(
        "config",
        help="validate or show the effective configuration",
        description="Validate the configuration, or print the effective configuration "
        "(defaults + YAML + environment) with secrets masked.",
    )
    config_sub = config.add_subparsers(dest="config_command", metavar="ACTION")
    config_sub.required = True
    validate = config_sub.add_parser(
        "validate", parents=[common], help="check the configuration; exit 78 listing every problem"
    )
    validate.set_defaults(handler=cmd_config_validate)
    show = config_sub.add_parser(
        "show", parents=[common], help="print the effective configuration (secrets masked)"
    )
    show.add_argument("--json", action="store_true", help="JSON instead of YAML")
    show.set_defaults(handler=cmd_config_show)

    for module_name in COMMAND_MODULES:
        module = importlib.import_module(f"laterbased.ops.{module_name}")
        module.register(sub, common)
    return parser


def cmd_run(args: argparse.Namespace) -> int:
    from laterbased.daemon import run_daemon

    loader = config_loader(args)
    config = loader()
    configure_logging(args, config)
    return asyncio.run(run_daemon(config, loader))


def cmd_config_validate(args: argparse.Namespace) -> int:
    config = load_from_args(args)
    print("configuration is valid")
    parts = []
    if config.standby.enabled:
        parts.append(f"standby of {config.primary.host}:{config.primary.port}")
    if config.backup.enabled:
        parts.append(f"backups '{config.backup.schedule}' into {config.backup_directory}")
    if config.upload.enabled:
        parts.append(f"uploads to {config.upload.remote}:{config.upload.path}")
    for part in parts:
        print(f"  {part}")
    return EXIT_OK


def cmd_config_show(args: argparse.Namespace) -> int:
    config = load_from_args(args)
    data = config_as_dict(config)
    if args.json:
        print(json.dumps(data, indent=2))
    else:
        print(yaml.safe_dump(data, sort_keys=False, allow_unicode=True), end="")
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    # Until the config is read, log what we can (config errors are printed, not logged).
    if not logging.getLogger().handlers:
        setup_logging(args.log_level or "info", args.log_format or "text")
    try:
        code: int = args.handler(args)
    except ConfigError as exc:
        print("laterbased: invalid configuration:", file=sys.stderr)
        for problem in exc.problems:
            print(f"  - {problem}", file=sys.stderr)
        return EXIT_CONFIG
    except LaterbasedError as exc:
        print(f"laterbased: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130
    except Exception:
        logger.exception("unexpected error; please report it with this traceback")
        return EXIT_SOFTWARE
    return code


if __name__ == "__main__":
    sys.exit(main())
