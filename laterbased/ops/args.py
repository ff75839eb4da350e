"""What every command shares: the common options, and loading the configuration and
logging from them. Commands import this, never ``laterbased.cli`` (which imports them)."""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable
from pathlib import Path

from laterbased.config import Config, load_config, load_env_file
from laterbased.logs import setup_logging


def common_options() -> argparse.ArgumentParser:
    """Options every sub-command accepts, so `laterbased run --config X` reads naturally."""
    common = argparse.ArgumentParser(add_help=False)
    group = common.add_argument_group("configuration and logging")
    group.add_argument(
        "-c",
        "--config",
        type=Path,
        default=None,
        help="YAML configuration file (default: $LATERBASED_CONFIG; none: environment only)",
    )
    group.add_argument(
        "--env-file",
        type=Path,
        default=None,
        help="read variables from a docker-compose style .env file (the old Laterbase .env "
        "works as is); the real environment wins over the file, as in compose",
    )
    group.add_argument(
        "--log-level",
        choices=["debug", "info", "warning", "error"],
        default=None,
        help="log verbosity (default: log_level from config, else info)",
    )
    group.add_argument(
        "--log-format",
        choices=["text", "json"],
        default=None,
        help="text (one readable line per event) or json (one object per line)",
    )
    return common


def effective_environ(env_file: Path | None) -> dict[str, str]:
    """The environment as the config sees it: the .env file, overridden by real variables."""
    environ = dict(os.environ)
    env_file = env_file or (
        Path(environ["LATERBASED_ENV_FILE"]) if environ.get("LATERBASED_ENV_FILE") else None
    )
    if env_file is not None:
        from_file = load_env_file(env_file)
        environ = from_file | environ
    return environ


def config_loader(args: argparse.Namespace) -> Callable[[], Config]:
    """A function that (re-)reads the configuration from the same sources every time."""
    path: Path | None = args.config
    if path is None and os.environ.get("LATERBASED_CONFIG"):
        path = Path(os.environ["LATERBASED_CONFIG"])

    def load() -> Config:
        return load_config(path, effective_environ(args.env_file))

    return load


def load_from_args(args: argparse.Namespace) -> Config:
    return config_loader(args)()


def configure_logging(args: argparse.Namespace, config: Config | None) -> None:
    level = args.log_level or (config.log_level if config else "info")
    fmt = args.log_format or (config.log_format if config else "text")
    setup_logging(level, fmt)
