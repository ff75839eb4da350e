"""The command line as a user types it: help, version, config validate/show, exit codes."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from laterbased import __version__
from laterbased.cli import build_parser


def laterbased(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("LATERBASED_")}
    environ |= env or {}
    return subprocess.run(
        [sys.executable, "-m", "laterbased", *args],
        capture_output=True, text=True, env=environ, timeout=60, check=False,
    )


def subcommand_paths() -> list[list[str]]:
    parser = build_parser()
    paths: list[list[str]] = []

    def walk(p: object, prefix: list[str]) -> None:
        for action in getattr(p, "_actions", []):
            choices = getattr(action, "choices", None)
            if isinstance(choices, dict):
                for name, sub in choices.items():
                    paths.append([*prefix, name])
                    walk(sub, [*prefix, name])

    walk(parser, [])
    return paths


def test_version() -> None:
    result = laterbased("--version")
    assert result.returncode == 0
    assert result.stdout.strip() == f"laterbased {__version__}"


def test_top_level_help_lists_the_commands() -> None:
    result = laterbased("--help")
    assert result.returncode == 0
    for command in ("run", "config"):
        assert command in result.stdout
    assert "78 bad config" in result.stdout


@pytest.mark.parametrize("path", subcommand_paths(), ids=" ".join)
def test_every_subcommand_has_help(path: list[str]) -> None:
    parser = build_parser()
    with pytest.raises(SystemExit) as exc:
        parser.parse_args([*path, "--help"])
    assert exc.value.code == 0


def test_config_validate_ok_and_show_masks_secrets(tmp_path: Path) -> None:
    env = {"PRIMARY_HOST": "resolve.local", "REPL_PASSWORD": "do-not-print-me"}
    result = laterbased("config", "validate", env=env)
    assert result.returncode == 0, result.stderr
    assert "configuration is valid" in result.stdout
    shown = laterbased("config", "show", env=env)
    assert shown.returncode == 0
    assert "resolve.local" in shown.stdout
    assert "do-not-print-me" not in shown.stdout + shown.stderr
    assert "********" in shown.stdout
    as_json = laterbased("config", "show", "--json", env=env)
    assert '"password": "********"' in as_json.stdout


def test_env_file_is_read_and_the_real_environment_wins(tmp_path: Path) -> None:
    env_file = tmp_path / ".env"
    env_file.write_text("PRIMARY_HOST=from-file\nPRIMARY_PORT=6432\n")
    shown = laterbased("config", "show", "--json", "--env-file", str(env_file),
                       env={"PRIMARY_PORT": "7432"})
    assert shown.returncode == 0, shown.stderr
    assert '"host": "from-file"' in shown.stdout
    assert '"port": 7432' in shown.stdout


def test_missing_env_file_is_a_config_error(tmp_path: Path) -> None:
    result = laterbased("config", "validate", "--env-file", str(tmp_path / "nope.env"))
    assert result.returncode == 78
    assert "cannot read" in result.stderr


def test_invalid_config_exits_78_without_traceback() -> None:
    result = laterbased("config", "validate", env={"PRIMARY_PORT": "x", "TZ": "Nowhere/City"})
    assert result.returncode == 78
    assert "primary.port: must be a whole number" in result.stderr
    assert "timezone: unknown time zone" in result.stderr
    assert "primary.host: required" in result.stderr
    assert "Traceback" not in result.stderr


def test_unknown_command_is_a_usage_error() -> None:
    result = laterbased("frobnicate")
    assert result.returncode == 2
    assert "invalid choice" in result.stderr
