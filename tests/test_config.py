"""Configuration: precedence, legacy .env names, secrets from files, and every error at once."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from laterbased.config import (
    Config,
    ConfigError,
    Secret,
    config_as_dict,
    load_config,
    parse_env_file,
    secrets_of,
)

MINIMAL = {"PRIMARY_HOST": "resolve.local"}


def write_yaml(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "laterbased.yaml"
    path.write_text(text)
    return path


def problems(exc: pytest.ExceptionInfo[ConfigError]) -> list[str]:
    return exc.value.problems


def test_defaults_match_the_old_laterbase_setup() -> None:
    config = load_config(None, MINIMAL)
    assert config.primary.port == 5432
    assert config.primary.user == "postgres"
    assert config.standby.slot_name == "laterbase_standby_slot"
    assert config.backup.retention_days == 7
    assert config.backup.schedule == "0 * * * *"
    assert config.backup.databases == ()
    assert config.upload.enabled is False
    assert config.http.host == "127.0.0.1"
    assert config.http.port == 8434
    assert config.standby.listen_addresses == "127.0.0.1"


def test_legacy_env_names_are_read() -> None:
    env = {
        "PRIMARY_HOST": "10.0.0.5",
        "PRIMARY_PORT": "5433",
        "PRIMARY_USER": "resolve",
        "REPL_PASSWORD": "hunter2",
        "PRIMARY_DB": "ResolveProjects",
        "PGDATA": "/srv/standby",
        "LOCAL_BACKUP_PATH": "/srv/backups",
        "BACKUP_RETENTION_DAYS": "14",
        "RCLONE_REMOTE_NAME": "offsite",
        "RCLONE_REMOTE_PATH": "resolve/prod",
        "RCLONE_REMOTE_1_NAME": "offsite",
        "RCLONE_REMOTE_1_TYPE": "s3",
        "RCLONE_REMOTE_1_PARAM_ACCESS_KEY_ID": "AKIA",
        "RCLONE_REMOTE_1_PARAM_SECRET_ACCESS_KEY": "very-secret",
        "PGADMIN_EMAIL": "ops@example.com",
        "PGADMIN_PASSWORD": "pgadmin-pass",
        "TZ": "Europe/London",
    }
    config = load_config(None, env)
    assert config.primary.host == "10.0.0.5"
    assert config.primary.port == 5433
    assert config.primary.user == "resolve"
    assert config.primary.password == Secret("hunter2")
    assert config.backup.databases == ("ResolveProjects",)
    assert config.standby_data_dir == Path("/srv/standby")
    assert config.backup_directory == Path("/srv/backups")
    assert config.backup.retention_days == 14
    assert config.upload.remote == "offsite"
    assert config.upload.path == "resolve/prod"
    (remote,) = config.upload.remotes
    assert remote.name == "offsite"
    assert remote.type == "s3"
    assert remote.params["access_key_id"].reveal() == "AKIA"
    assert remote.params["secret_access_key"].reveal() == "very-secret"
    assert config.pgadmin.email == "ops@example.com"
    assert str(config.zone) == "Europe/London"


def test_primary_dbs_is_a_comma_list_and_wins_over_primary_db() -> None:
    config = load_config(None, MINIMAL | {"PRIMARY_DB": "one", "PRIMARY_DBS": "a, b ,c"})
    assert config.backup.databases == ("a", "b", "c")


def test_precedence_defaults_yaml_legacy_env_laterbased_env(tmp_path: Path) -> None:
    path = write_yaml(
        tmp_path,
        "primary:\n  host: from-yaml\n  port: 6000\n  user: yaml-user\n"
        "backup:\n  retention_days: 3\n  schedule: '@daily'\n",
    )
    only_yaml = load_config(path, {})
    assert (only_yaml.primary.host, only_yaml.primary.port) == ("from-yaml", 6000)
    legacy = load_config(path, {"PRIMARY_HOST": "from-legacy", "BACKUP_RETENTION_DAYS": "9"})
    assert legacy.primary.host == "from-legacy"
    assert legacy.primary.port == 6000  # untouched keys keep the YAML value
    assert legacy.backup.retention_days == 9
    newest = load_config(
        path,
        {
            "PRIMARY_HOST": "from-legacy",
            "LATERBASED_PRIMARY_HOST": "from-laterbased",
            "LATERBASED_BACKUP_SCHEDULE": "*/5 * * * *",
        },
    )
    assert newest.primary.host == "from-laterbased"
    assert newest.backup.schedule == "*/5 * * * *"
    assert newest.primary.user == "yaml-user"


def test_secret_from_file_strips_the_trailing_newline(tmp_path: Path) -> None:
    secret_file = tmp_path / "pw"
    secret_file.write_text("s3cr3t with spaces\n")
    config = load_config(None, MINIMAL | {"REPL_PASSWORD_FILE": str(secret_file)})
    assert config.primary.password == Secret("s3cr3t with spaces")
    yaml_path = write_yaml(
        tmp_path, f"primary:\n  host: h\n  password_file: {secret_file}\n"
    )
    assert load_config(yaml_path, {}).primary.password == Secret("s3cr3t with spaces")


def test_secrets_are_masked_in_repr_and_config_show() -> None:
    config = load_config(
        None,
        MINIMAL
        | {
            "REPL_PASSWORD": "hunter2-password",
            "RCLONE_REMOTE_1_NAME": "r",
            "RCLONE_REMOTE_1_TYPE": "s3",
            "RCLONE_REMOTE_1_PARAM_SECRET_ACCESS_KEY": "rclone-secret-key",
            "LATERBASED_HTTP_TOKEN": "api-token-value",
        },
    )
    shown = repr(config) + str(config_as_dict(config))
    for secret in ("hunter2-password", "rclone-secret-key", "api-token-value"):
        assert secret not in shown
    assert sorted(secrets_of(config)) == sorted(
        ["hunter2-password", "rclone-secret-key", "api-token-value"]
    )


def test_env_values_are_typed() -> None:
    config = load_config(
        None,
        MINIMAL
        | {
            "LATERBASED_STANDBY_ENABLED": "no",
            "LATERBASED_MONITOR_INTERVAL": "2m",
            "LATERBASED_MONITOR_MAX_LAG_BYTES": "32MB",
            "LATERBASED_BACKUP_FORMAT": "plain-gzip",
            "LATERBASED_NOTIFY_COMMAND": "/usr/local/bin/page-me",
        },
    )
    assert config.standby.enabled is False
    assert config.monitor.interval == 120.0
    assert config.monitor.max_lag_bytes == 32 * 1024 * 1024
    assert config.backup.format == "plain-gzip"
    assert config.notify.command == ("/usr/local/bin/page-me",)


def test_yaml_remotes_are_parsed(tmp_path: Path) -> None:
    path = write_yaml(
        tmp_path,
        "primary: {host: h}\n"
        "upload:\n  remote: offsite\n  path: p\n  remotes:\n"
        "    - name: offsite\n      type: local\n      params: {copy_links: 'true'}\n",
    )
    config = load_config(path, {})
    assert config.upload.remotes[0].name == "offsite"
    # Not a secret to rclone, so not one here either (config show prints it).
    assert config.upload.remotes[0].params["copy_links"] == "true"


def test_example_yaml_is_valid_and_documents_every_key() -> None:
    example = Path(__file__).parent.parent / "config" / "laterbased.example.yaml"
    config = load_config(example, MINIMAL)
    assert isinstance(config, Config)
    text = example.read_text()
    for section, values in config_as_dict(Config()).items():
        assert f"\n{section}:" in text or text.startswith(f"{section}:"), section
        if isinstance(values, dict):
            for key in values:
                assert f"  {key}:" in text, f"{section}.{key} is not documented"


def test_example_env_is_valid() -> None:
    example = Path(__file__).parent.parent / "config" / "example.env"
    env = parse_env_file(example.read_text())
    config = load_config(None, env)
    assert config.primary.host == "192.168.1.10"
    assert config.backup.retention_days == 7


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("A=1\nB = two \n", {"A": "1", "B": "two"}),
        ("# comment\n\nexport C=3\n", {"C": "3"}),
        ("D='single # not a comment'\n", {"D": "single # not a comment"}),
        ('E="double \\"quoted\\""\n', {"E": 'double "quoted"'}),
        ("F=value # inline comment\n", {"F": "value"}),
        ("G=\n", {"G": ""}),
        ("H=a=b=c\n", {"H": "a=b=c"}),
        ("not a pair\n", {}),
    ],
)
def test_env_file_parsing(text: str, expected: dict[str, str]) -> None:
    assert parse_env_file(text) == expected


BAD_CASES = [
    ({"PRIMARY_PORT": "fivefour"}, "primary.port: must be a whole number"),
    ({"PRIMARY_PORT": "70000"}, "primary.port: port must be 1-65535"),
    ({"LATERBASED_HTTP_PORT": "0"}, "http.port: port must be 1-65535"),
    ({"LATERBASED_BACKUP_SCHEDULE": "61 * * * *"}, "backup.schedule: invalid cron expression"),
    ({"LATERBASED_BACKUP_SCHEDULE": "@reboot"}, "backup.schedule: invalid cron expression"),
    ({"LATERBASED_BACKUP_VERIFY_SCHEDULE": "* *"}, "backup.verify_schedule: invalid cron"),
    ({"BACKUP_RETENTION_DAYS": "seven"}, "backup.retention_days: must be a whole number"),
    ({"BACKUP_RETENTION_DAYS": "-1"}, "backup.retention_days: must be 0 or more"),
    ({"LATERBASED_BACKUP_MIN_KEEP": "0"}, "backup.min_keep: must be at least 1"),
    ({"LATERBASED_BACKUP_FORMAT": "zip"}, "backup.format: must be one of"),
    ({"LATERBASED_STANDBY_ENABLED": "maybe"}, "standby.enabled: must be true or false"),
    ({"LATERBASED_MONITOR_INTERVAL": "soon"}, "monitor.interval: must be a duration"),
    ({"LATERBASED_MONITOR_MAX_LAG_BYTES": "lots"}, "monitor.max_lag_bytes: must be a size"),
    ({"LATERBASED_STANDBY_SLOT_NAME": "Bad-Slot"}, "standby.slot_name: 'Bad-Slot' is not a valid"),
    ({"TZ": "Mars/Olympus_Mons"}, "timezone: unknown time zone"),
    ({"LATERBASED_NOPE": "1"}, "LATERBASED_NOPE: unknown setting"),
    ({"REPL_PASSWORD_FILE": "/nonexistent/pw"}, "primary.password: cannot read secret file"),
    ({"PGADMIN_EMAIL": "YOUR_PGADMIN_EMAIL_HERE"}, "pgadmin.email: still the placeholder"),
    ({"RCLONE_REMOTE_2_NAME": "x", "RCLONE_REMOTE_2_TYPE": "s3"}, "without gaps"),
    ({"RCLONE_REMOTE_1_NAME": "x"}, "RCLONE_REMOTE_1_TYPE: missing"),
    ({"LATERBASED_NOTIFY_WEBHOOK_URL": "ftp://x"}, "notify.webhook_url: must start with http"),
    (
        {"RCLONE_REMOTE_1_NAME": "a", "RCLONE_REMOTE_1_TYPE": "s3", "RCLONE_REMOTE_NAME": "b"},
        "upload.remote: remote 'b' is not defined; defined: a",
    ),
]


@pytest.mark.parametrize(("env", "expected"), BAD_CASES)
def test_each_bad_value_names_its_key(env: dict[str, str], expected: str) -> None:
    with pytest.raises(ConfigError) as exc:
        load_config(None, MINIMAL | env)
    assert any(expected in problem for problem in problems(exc)), problems(exc)


def test_all_problems_are_reported_together() -> None:
    # One case per variable name (the table sets some names twice) and no RCLONE cases,
    # which describe overlapping remote sets.
    env: dict[str, str] = {}
    expectations = []
    for case, expected in BAD_CASES:
        if any(key in env or key.startswith("RCLONE_") for key in case):
            continue
        env |= case
        expectations.append(expected)
    with pytest.raises(ConfigError) as exc:
        load_config(None, env)
    found = problems(exc)
    assert any("primary.host: required" in p for p in found)
    assert len(expectations) >= 15
    for expected in expectations:
        assert any(expected in p for p in found), expected


@pytest.mark.parametrize(
    ("yaml_text", "expected"),
    [
        ("primary: {host: h, prot: 1}\n", "primary.prot: unknown key (did you mean 'port'?)"),
        ("primary: {host: h}\nbackups: {}\n", "backups: unknown key (did you mean 'backup'?)"),
        ("primary: [1, 2]\n", "primary: must be a mapping"),
        ("primary: {host: h}\nhttp: {port: true}\n", "http.port: must be a whole number"),
        ("- just\n- a list\n", "top level must be a mapping"),
        ("primary: {host: h\n", "invalid YAML"),
        ("primary: {host: h}\nbackup: {databases: {a: 1}}\n", "backup.databases: must be a list"),
    ],
)
def test_yaml_errors(tmp_path: Path, yaml_text: str, expected: str) -> None:
    path = write_yaml(tmp_path, yaml_text)
    with pytest.raises(ConfigError) as exc:
        load_config(path, {})
    assert any(expected in p for p in problems(exc)), problems(exc)


def test_missing_config_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as exc:
        load_config(tmp_path / "absent.yaml", MINIMAL)
    assert "No such file" in problems(exc)[0]


def test_error_messages_never_contain_secret_values(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as exc:
        load_config(None, {"REPL_PASSWORD": "topsecret-value", "PRIMARY_PORT": "bad"})
    assert "topsecret-value" not in str(exc.value)


@pytest.mark.parametrize(
    ("variable", "expected"),
    [
        ("LATERBASED_MONITOR_MAX_LAG_BYTES", "monitor.max_lag_bytes: is too large"),
        ("LATERBASED_MONITOR_INTERVAL", "monitor.interval: is too large"),
    ],
)
def test_absurdly_large_numbers_are_config_errors(variable: str, expected: str) -> None:
    with pytest.raises(ConfigError) as exc:
        load_config(None, MINIMAL | {variable: "9" * 400})
    assert any(expected in p for p in problems(exc)), problems(exc)


def cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """``laterbased ARGS`` as a user runs it, with only ``env`` as configuration."""
    environ = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("LATERBASED_", "PRIMARY_", "REPL_", "PGADMIN_", "RCLONE_"))
    }
    return subprocess.run(
        [sys.executable, "-m", "laterbased", *args],
        capture_output=True, text=True, env=environ | env, timeout=60, check=False,
    )


@pytest.mark.parametrize(
    ("how", "secret"),
    [
        ("REPL_PASSWORD_FILE", "first line\nsecond line"),
        ("yaml", "carriage\rreturn"),
        ("LATERBASED_PRIMARY_PASSWORD", "first line\nsecond line"),
        ("yaml", "nul\0inside"),
    ],
)
def test_password_a_passfile_cannot_hold_fails_config_validate_with_78_naming_the_key(
    tmp_path: Path, how: str, secret: str
) -> None:
    env = dict(MINIMAL)
    args = ["config", "validate"]
    if how == "REPL_PASSWORD_FILE":
        secret_file = tmp_path / "pw"
        secret_file.write_text(secret + "\n")
        secret_file.chmod(0o600)
        env[how] = str(secret_file)
    elif how == "yaml":
        path = write_yaml(tmp_path, yaml.safe_dump({"primary": {"password": secret}}))
        args += ["--config", str(path)]
    else:
        env[how] = secret
    result = cli(*args, env=env)
    assert result.returncode == 78, result
    reason = "NUL" if "\0" in secret else "line break"
    assert "primary.password: contains a " + reason in result.stderr, result.stderr
    for part in secret.replace("\0", "\n").replace("\r", "\n").split("\n"):
        assert part not in result.stdout + result.stderr


def test_user_with_a_line_break_is_a_config_error() -> None:
    with pytest.raises(ConfigError) as exc:
        load_config(None, MINIMAL | {"PRIMARY_USER": "post\ngres"})
    assert any(p.startswith("primary.user: contains a line break") for p in problems(exc))


def test_database_names_no_postgresql_database_can_have_are_config_errors(
    tmp_path: Path,
) -> None:
    path = write_yaml(tmp_path, 'backup:\n  databases: ["Films", "", "\\0globals"]\n')
    with pytest.raises(ConfigError) as exc:
        load_config(path, MINIMAL)
    found = [p for p in problems(exc) if p.startswith("backup.databases")]
    assert len(found) == 2, problems(exc)
    assert "an empty name" in found[0] and "contains a NUL character" in found[1], found


def test_dev_null_as_config_or_env_file_means_an_empty_one() -> None:
    """``--config /dev/null`` is the usual way to say "no YAML": a character device, but
    the empty file, not an error (the FIFO check must not refuse it)."""
    result = cli(
        "config", "validate", "--config", os.devnull, "--env-file", os.devnull, env=MINIMAL
    )
    assert result.returncode == 0, result.stderr


def test_config_or_secret_file_that_is_a_fifo_is_a_clear_error_not_a_hang(
    tmp_path: Path,
) -> None:
    fifo = tmp_path / "laterbased.yaml"
    os.mkfifo(fifo)
    result = cli("config", "validate", "--config", str(fifo), env=MINIMAL)
    assert result.returncode == 78, result
    assert f"config file {fifo}: is a FIFO" in result.stderr, result.stderr
    result = cli("config", "validate", env=MINIMAL | {"REPL_PASSWORD_FILE": str(fifo)})
    assert result.returncode == 78, result
    assert f"cannot read secret file {fifo} (REPL_PASSWORD_FILE): is a FIFO" in result.stderr
    result = cli("config", "validate", "--env-file", str(fifo), env=MINIMAL)
    assert result.returncode == 78, result
    assert "is a FIFO" in result.stderr
    result = cli("config", "validate", "--config", str(tmp_path), env=MINIMAL)
    assert result.returncode == 78, result
    assert "directory" in result.stderr.lower(), result.stderr


def test_secret_file_others_can_read_gives_a_warning_with_the_fix(tmp_path: Path) -> None:
    secret_file = tmp_path / "repl password"
    secret_file.write_text("s3cret\n")
    secret_file.chmod(0o644)
    result = cli("config", "validate", env=MINIMAL | {"REPL_PASSWORD_FILE": str(secret_file)})
    assert result.returncode == 0, result
    assert "WARNING" in result.stderr, result.stderr
    assert f"secret file {secret_file} (REPL_PASSWORD_FILE)" in result.stderr
    assert f"chmod 600 {secret_file}" in result.stderr
    assert "s3cret" not in result.stderr
    secret_file.chmod(0o600)
    result = cli("config", "validate", env=MINIMAL | {"REPL_PASSWORD_FILE": str(secret_file)})
    assert result.returncode == 0, result
    assert "secret file" not in result.stderr, result.stderr


def test_relative_paths_from_an_old_env_are_refused_naming_the_variable() -> None:
    # An old Laterbase .env said LOCAL_BACKUP_PATH=./backups (relative to the compose
    # directory). laterbased took it as "backups" relative to wherever the daemon runs
    # (/ under systemd, where the unit may not write), and `config validate` said valid.
    with pytest.raises(ConfigError) as caught:
        load_config(
            None,
            {
                "PRIMARY_HOST": "192.168.1.50",
                "LOCAL_BACKUP_PATH": "./backups",
                "PGDATA": "standby",
                "LATERBASED_STATE_DIR": "~/laterbased",
            },
        )
    problems = caught.value.problems
    assert any(
        p.startswith("backup.directory: must be an absolute path, not './backups'")
        and "(from LOCAL_BACKUP_PATH)" in p
        for p in problems
    ), problems
    assert any(p.startswith("standby.data_dir: must be an absolute path") for p in problems)
    assert not any(p.startswith("state_dir") for p in problems), "~ expands to a full path"


@pytest.mark.parametrize(
    ("environment", "expected"),
    [
        ({}, "from-yaml-file"),
        ({"REPL_PASSWORD": "from-legacy-env"}, "from-legacy-env"),
        ({"LATERBASED_PRIMARY_PASSWORD": "from-laterbased-env"}, "from-laterbased-env"),
        ({"LATERBASED_PRIMARY_PASSWORD_FILE": "{env_file}"}, "from-env-file"),
        (
            {"REPL_PASSWORD_FILE": "{env_file}", "LATERBASED_PRIMARY_PASSWORD": "top"},
            "top",
        ),
    ],
)
def test_password_precedence_holds_for_secret_files(
    tmp_path: Path, environment: dict[str, str], expected: str
) -> None:
    # A YAML `password_file:` beat LATERBASED_PRIMARY_PASSWORD (and REPL_PASSWORD): trying a
    # new password from the environment silently kept the old one, against the README's
    # "YAML < legacy .env names < LATERBASED_*".
    (tmp_path / "yaml.secret").write_text("from-yaml-file\n")
    (tmp_path / "env.secret").write_text("from-env-file\n")
    config_file = tmp_path / "laterbased.yaml"
    config_file.write_text(
        f"primary:\n  host: resolve.local\n  password_file: {tmp_path / 'yaml.secret'}\n"
    )
    env = {k: v.format(env_file=tmp_path / "env.secret") for k, v in environment.items()}
    config = load_config(config_file, env)
    assert config.primary.password is not None
    assert config.primary.password.reveal() == expected
