"""`config show` masks exactly what rclone itself treats as secret (options marked IsPassword
or Sensitive), plus our own secrets: an S3 endpoint or provider prints as written, so a typo
there can be seen (both printed as ******** before)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from rclone_servers import rclone_binary

from laterbased.config import load_config, rclone_environment, secrets_of
from laterbased.config.rclone_names import SECRET_OPTIONS, is_secret_option

ROOT = Path(__file__).resolve().parent.parent
ENDPOINT = "http://minio.lan:9000"
S3 = {
    "PRIMARY_HOST": "resolve.local",
    "REPL_PASSWORD": "hunter2-password",
    "RCLONE_REMOTE_NAME": "vault",
    "RCLONE_REMOTE_PATH": "bucket/laterbased",
    "RCLONE_REMOTE_1_NAME": "vault",
    "RCLONE_REMOTE_1_TYPE": "s3",
    "RCLONE_REMOTE_1_PARAM_PROVIDER": "Minio",
    "RCLONE_REMOTE_1_PARAM_ENDPOINT": ENDPOINT,
    "RCLONE_REMOTE_1_PARAM_REGION": "eu-central-1",
    "RCLONE_REMOTE_1_PARAM_ACCESS_KEY_ID": "AKIDLATERBASED",
    "RCLONE_REMOTE_1_PARAM_SECRET_ACCESS_KEY": "s3-secret-key-4711",
}


def test_the_secret_option_table_is_what_the_installed_rclone_marks_secret() -> None:
    shown = subprocess.run(
        [rclone_binary(), "config", "providers"],
        capture_output=True, text=True, check=True, timeout=60,
        env={"PATH": os.environ.get("PATH", "/usr/bin"), "RCLONE_CONFIG": ""},
    )
    expected: dict[str, frozenset[str]] = {}
    for backend in json.loads(shown.stdout):
        secret = frozenset(
            option["Name"]
            for option in backend["Options"]
            if option.get("IsPassword") or option.get("Sensitive")
        )
        for name in [backend["Prefix"], *(backend.get("Aliases") or [])]:
            expected[name] = secret
    assert dict(SECRET_OPTIONS) == expected


def test_config_show_prints_endpoint_and_provider_and_masks_keys_and_passwords(
    tmp_path: Path,
) -> None:
    env_file = tmp_path / "laterbased.env"
    env_file.write_text("".join(f"{k}={v}\n" for k, v in S3.items()))
    env_file.chmod(0o600)
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("LATERBASED_", "RCLONE"))}
    for extra in ((), ("--json",)):
        shown = subprocess.run(
            [sys.executable, "-m", "laterbased", "config", "show", "--env-file", str(env_file),
             *extra],
            capture_output=True, text=True, env=environ, check=False, timeout=60, cwd=ROOT,
        )
        assert shown.returncode == 0, shown.stderr
        out = shown.stdout
        for visible in (ENDPOINT, "Minio", "eu-central-1"):
            assert visible in out, (extra, out)
        for secret in ("AKIDLATERBASED", "s3-secret-key-4711", "hunter2-password"):
            assert secret not in out + shown.stderr, (extra, secret)
        assert out.count("********") >= 3


def test_log_masking_follows_the_same_rule_and_unknown_backends_mask_everything() -> None:
    config = load_config(None, S3)
    found = set(secrets_of(config))
    assert {"AKIDLATERBASED", "s3-secret-key-4711", "hunter2-password"} <= found
    assert ENDPOINT not in found and "Minio" not in found
    assert is_secret_option("sftp", "key-file-pass") and not is_secret_option("sftp", "port")
    assert is_secret_option("some-future-backend", "endpoint")
    own = rclone_environment(
        {
            "RCLONE_CONFIG_OFF_TYPE": "s3",
            "RCLONE_CONFIG_OFF_ENDPOINT": ENDPOINT,
            "RCLONE_CONFIG_OFF_SECRET_ACCESS_KEY": "env-secret",
            "RCLONE_CONFIG_OTHER_ENDPOINT": "http://no-type-known",
            "RCLONE_CONFIG_PASS": "config-password",
        }
    )
    assert own["RCLONE_CONFIG_OFF_ENDPOINT"] == ENDPOINT
    assert own["RCLONE_CONFIG_OFF_TYPE"] == "s3"
    for masked in ("RCLONE_CONFIG_OFF_SECRET_ACCESS_KEY", "RCLONE_CONFIG_OTHER_ENDPOINT",
                   "RCLONE_CONFIG_PASS"):
        assert not isinstance(own[masked], str), masked
