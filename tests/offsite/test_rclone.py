"""The rclone layer against real rclone: env-defined remotes, rclone serve s3, secrets, retries."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from pgserver import free_port
from rclone_servers import ACCESS_KEY, SECRET_KEY, S3Server, rclone_binary

from laterbased.config import (
    Config,
    RcloneRemote,
    Secret,
    config_as_dict,
    load_config,
    secrets_of,
)
from laterbased.config.rclone_names import remote_name_problem
from laterbased.errors import ConfigError, ToolMissing
from laterbased.offsite.rclone import (
    Rclone,
    RcloneFailed,
    config_env_name,
    default_flags,
    find_rclone,
    join_remote_path,
    looks_obscured,
    probe_remote,
    remote_variables,
)
from laterbased.ops.args import effective_environ

BASE = {"PRIMARY_HOST": "resolve.local", "HOME": "/nonexistent-home"}
FAST_RETRIES = {
    "LATERBASED_UPLOAD_RETRIES": "2",
    "LATERBASED_UPLOAD_RETRY_BACKOFF": "0.05",
    "LATERBASED_UPLOAD_RETRY_BACKOFF_MAX": "0.1",
}


@pytest.fixture(autouse=True)
def quick_low_level_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    # rclone's own retries inside one command back off for seconds against a dead server;
    # the operator's RCLONE_* variables win over our defaults, so the tests use that door.
    monkeypatch.setenv("RCLONE_LOW_LEVEL_RETRIES", "1")


def local_config(dest: Path, **extra: str) -> Config:
    env = BASE | {
        "RCLONE_REMOTE_NAME": "offsite",
        "RCLONE_REMOTE_PATH": str(dest),
        "RCLONE_REMOTE_1_NAME": "offsite",
        "RCLONE_REMOTE_1_TYPE": "local",
    }
    return load_config(None, env | FAST_RETRIES | extra)


@pytest.fixture
def s3(tmp_path: Path) -> Iterator[S3Server]:
    server = S3Server(tmp_path / "s3root", free_port())
    server.start()
    try:
        yield server
    finally:
        server.stop()


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# --- names and definitions ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("remote", "option", "expected"),
    [
        ("offsite", "type", "RCLONE_CONFIG_OFFSITE_TYPE"),
        ("my-remote", "access_key_id", "RCLONE_CONFIG_MY-REMOTE_ACCESS_KEY_ID"),
        ("Backup.Box", "secret-access-key", "RCLONE_CONFIG_BACKUP.BOX_SECRET_ACCESS_KEY"),
    ],
)
def test_remote_options_map_to_rclones_own_variable_names(
    remote: str, option: str, expected: str
) -> None:
    assert config_env_name(remote, option) == expected


@pytest.mark.parametrize("name", ["offsite", "my-remote", "a.b", "a+b@c", "two words", "_x"])
def test_names_rclone_accepts_pass(name: str) -> None:
    assert remote_name_problem(name) is None


@pytest.mark.parametrize("name", ["-lead", "trail-", " lead", "trail ", "a:b", "a/b", "a=b", "ß"])
def test_names_rclone_rejects_are_explained(name: str) -> None:
    problem = remote_name_problem(name)
    assert problem is not None and repr(name) in problem


@pytest.mark.parametrize(
    ("path", "parts", "expected"),
    [
        ("", ("db", "x.dump"), "db/x.dump"),
        ("/srv/offsite/", ("db", "x.dump"), "/srv/offsite/db/x.dump"),
        ("bucket/laterbased", ("db",), "bucket/laterbased/db"),
        ("/", (), "/"),
    ],
)
def test_remote_paths_join_like_rclone_reads_them(
    path: str, parts: tuple[str, ...], expected: str
) -> None:
    assert join_remote_path(path, *parts) == expected


def test_bad_remote_definitions_are_all_reported_with_exit_78(tmp_path: Path) -> None:
    env = {
        "PATH": os.environ["PATH"],
        "HOME": str(tmp_path),
        "PRIMARY_HOST": "resolve.local",
        "RCLONE_REMOTE_NAME": "nowhere",
        "RCLONE_REMOTE_1_NAME": "bad:name",
        "RCLONE_REMOTE_1_TYPE": "s3",
        "RCLONE_REMOTE_2_NAME": "Offsite",
        "RCLONE_REMOTE_2_TYPE": "s3",
        "RCLONE_REMOTE_3_NAME": "offsite",
        "RCLONE_REMOTE_3_TYPE": "local",
        "RCLONE_REMOTE_5_NAME": "no-type",
    }
    result = subprocess.run(
        [sys.executable, "-m", "laterbased", "config", "validate"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 78, result.stderr
    for expected in (
        "without gaps",
        "RCLONE_REMOTE_5_TYPE: missing",
        "'bad:name' is not a valid rclone remote name",
        "'offsite' and 'Offsite' are the same remote",
        "upload.remote: remote 'nowhere' is not defined; defined: bad:name, offsite",
        "(from RCLONE_REMOTE_NAME)",
    ):
        assert expected in result.stderr, result.stderr


def test_a_remote_from_the_operators_rclone_conf_is_accepted_and_listed(tmp_path: Path) -> None:
    conf = tmp_path / "rclone.conf"
    conf.write_text("[nas]\ntype = local\n\n[cloud]\ntype = s3\n")
    config = load_config(
        None, BASE | {"RCLONE_REMOTE_NAME": "nas", "LATERBASED_UPLOAD_RCLONE_CONFIG": str(conf)}
    )
    assert config.upload.remote == "nas"
    with pytest.raises(Exception) as exc:
        load_config(
            None,
            BASE | {"RCLONE_REMOTE_NAME": "tape", "LATERBASED_UPLOAD_RCLONE_CONFIG": str(conf)},
        )
    assert "remote 'tape' is not defined; defined: cloud, nas" in str(exc.value)


def test_a_remote_from_rclones_default_config_location_is_accepted(tmp_path: Path) -> None:
    (tmp_path / ".config" / "rclone").mkdir(parents=True)
    (tmp_path / ".config" / "rclone" / "rclone.conf").write_text("[nas]\ntype = local\n")
    config = load_config(None, BASE | {"HOME": str(tmp_path), "RCLONE_REMOTE_NAME": "nas"})
    assert config.upload.enabled


def test_blank_remote_path_means_the_remote_root(tmp_path: Path) -> None:
    config = local_config(tmp_path, RCLONE_REMOTE_PATH="")
    assert config.upload.path == ""


def test_missing_binary_is_a_clear_tool_missing_error(tmp_path: Path) -> None:
    config = local_config(tmp_path, LATERBASED_UPLOAD_RCLONE_BINARY=str(tmp_path / "nope"))
    with pytest.raises(ToolMissing, match="upload.rclone_binary"):
        find_rclone(config.upload)


def test_packaged_rclone_is_found_without_one_on_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    found = find_rclone(local_config(tmp_path).upload)
    assert Path(found).name == "rclone" and os.access(found, os.X_OK)


# --- obscured passwords -------------------------------------------------------------------


async def test_plain_passwords_are_obscured_for_rclone_and_obscured_ones_kept() -> None:
    binary = rclone_binary()
    plain = "correct horse battery"
    remote = RcloneRemote(
        name="box", type="sftp", params={"pass": Secret(plain), "user": Secret("me")}
    )
    variables = await remote_variables(remote, binary)
    obscured = variables["RCLONE_CONFIG_BOX_PASS"]
    assert obscured != plain and looks_obscured(obscured)
    assert variables["RCLONE_CONFIG_BOX_USER"] == "me"
    revealed = subprocess.run(
        [binary, "reveal", obscured], capture_output=True, text=True, check=True, timeout=30
    )
    assert revealed.stdout.strip() == plain
    again = await remote_variables(
        RcloneRemote(name="box", type="sftp", params={"pass": Secret(obscured)}), binary
    )
    assert again["RCLONE_CONFIG_BOX_PASS"] == obscured


# --- a local-directory remote defined only through RCLONE_REMOTE_1_* -----------------------


async def test_local_remote_from_legacy_env_receives_files_with_equal_sha256(
    tmp_path: Path,
) -> None:
    dest = tmp_path / "offsite"
    source = tmp_path / "Resolve Projects-20260101T000000Z.dump"
    source.write_bytes(os.urandom(300_000))
    rclone = await Rclone.open(local_config(dest).upload)
    target = rclone.target("Resolve Projects", source.name)
    await rclone.copyto(source, target)
    arrived = dest / "Resolve Projects" / source.name
    assert sha256_of(arrived) == sha256_of(source)
    entry = await rclone.stat(target)
    assert entry is not None and entry.size == source.stat().st_size
    assert entry.hashes["sha256"] == sha256_of(source)
    listed = await rclone.lsjson(rclone.target("Resolve Projects"))
    assert [e.name for e in listed] == [source.name]
    assert await rclone.stat(rclone.target("Resolve Projects", "absent.dump")) is None
    assert await rclone.lsjson(rclone.target("no such folder")) == []
    await rclone.deletefile(target)
    assert not arrived.exists()


async def test_probe_creates_a_missing_folder_and_reports_reachable(tmp_path: Path) -> None:
    dest = tmp_path / "new" / "folder"
    ok, message = await probe_remote(local_config(dest))
    assert ok, message
    assert dest.is_dir()
    ok, message = await probe_remote(local_config(dest))
    assert ok and "reachable" in message


# --- a real S3 server on loopback ---------------------------------------------------------


async def test_s3_remote_upload_list_verify(tmp_path: Path, s3: S3Server) -> None:
    config = load_config(None, BASE | FAST_RETRIES | s3.remote_env())
    source = tmp_path / "db-20260101T000000Z.dump"
    source.write_bytes(os.urandom(200_000))
    rclone = await Rclone.open(config.upload)
    target = rclone.target("db", source.name)
    await rclone.copyto(source, target)
    entry = await rclone.stat(target)
    assert entry is not None and entry.size == source.stat().st_size
    assert entry.hashes["md5"] == hashlib.md5(source.read_bytes()).hexdigest()  # noqa: S324
    stored = s3.root / s3.bucket / "laterbased" / "db" / source.name
    assert sha256_of(stored) == sha256_of(source)
    assert [e.name for e in await rclone.lsjson(rclone.target("db"))] == [source.name]
    ok, message = await probe_remote(config)
    assert ok, message


async def test_wrong_s3_key_fails_with_rclones_reason(s3: S3Server) -> None:
    env = s3.remote_env() | {"RCLONE_REMOTE_1_PARAM_SECRET_ACCESS_KEY": "not-the-key"}
    ok, message = await probe_remote(load_config(None, BASE | FAST_RETRIES | env))
    assert not ok
    assert "SignatureDoesNotMatch" in message or "403" in message, message


async def test_server_down_retries_with_backoff_then_succeeds_once_back(
    tmp_path: Path, s3: S3Server, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    config = load_config(None, BASE | FAST_RETRIES | s3.remote_env())
    source = tmp_path / "db.dump"
    source.write_bytes(b"x" * 1000)
    rclone = await Rclone.open(config.upload)
    s3.stop()
    with pytest.raises(RcloneFailed, match="connection refused"):
        await rclone.copyto(source, rclone.target("db", source.name))
    retries = [r.getMessage() for r in caplog.records if "failed attempt=" in r.getMessage()]
    assert len(retries) == 2, retries
    assert "attempt=1/3" in retries[0] and "attempt=2/3" in retries[1]
    s3.start()
    await rclone.copyto(source, rclone.target("db", source.name))
    assert (s3.root / s3.bucket / "laterbased" / "db" / source.name).read_bytes() == b"x" * 1000
    assert SECRET_KEY not in caplog.text and ACCESS_KEY not in caplog.text


def _rclone_children(binary: str, marker: str) -> list[tuple[int, bytes]]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if cmdline.startswith(binary.encode()) and marker.encode() in cmdline:
            found.append((int(entry.name), cmdline))
    return found


async def test_rclone_child_has_secrets_in_environment_only(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    # An "S3 server" that accepts connections and never answers keeps rclone waiting.
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        port = silent.getsockname()[1]
        env = BASE | {
            "RCLONE_REMOTE_NAME": "offsite",
            "RCLONE_REMOTE_PATH": "bucket/slow-marker",
            "RCLONE_REMOTE_1_NAME": "offsite",
            "RCLONE_REMOTE_1_TYPE": "s3",
            "RCLONE_REMOTE_1_PARAM_PROVIDER": "Other",
            "RCLONE_REMOTE_1_PARAM_ENDPOINT": f"http://127.0.0.1:{port}",
            "RCLONE_REMOTE_1_PARAM_ACCESS_KEY_ID": ACCESS_KEY,
            "RCLONE_REMOTE_1_PARAM_SECRET_ACCESS_KEY": SECRET_KEY,
            "LATERBASED_UPLOAD_RETRIES": "0",
            "LATERBASED_UPLOAD_TIMEOUT": "20s",
        }
        rclone = await Rclone.open(load_config(None, env).upload)
        task = asyncio.create_task(rclone.lsjson(rclone.target()))
        try:
            deadline = time.monotonic() + 15
            children: list[tuple[int, bytes]] = []
            while not children:
                assert time.monotonic() < deadline, "the rclone child never showed up in /proc"
                await asyncio.sleep(0.02)
                children = _rclone_children(rclone.binary, "slow-marker")
            pid, cmdline = children[0]
            environ = Path(f"/proc/{pid}/environ").read_bytes()
        finally:
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
    assert SECRET_KEY.encode() not in cmdline and ACCESS_KEY.encode() not in cmdline
    assert f"RCLONE_CONFIG_OFFSITE_SECRET_ACCESS_KEY={SECRET_KEY}".encode() in environ
    assert not _rclone_children(rclone.binary, "slow-marker"), "rclone child left running"
    assert SECRET_KEY not in caplog.text


async def test_operator_rclone_variables_from_the_env_file_reach_the_rclone_child(
    tmp_path: Path, s3: S3Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The operator defines the remote in rclone's own variables, only in the --env-file
    # (docker compose's env_file habit): validation and the rclone child must both see it.
    for name in list(os.environ):
        if name.startswith("RCLONE_"):
            monkeypatch.delenv(name)
    env_file = tmp_path / ".env"
    env_file.write_text(
        "PRIMARY_HOST=resolve.local\n"
        "RCLONE_REMOTE_NAME=vault\n"
        f"RCLONE_REMOTE_PATH={s3.bucket}/from-env-file\n"
        "RCLONE_CONFIG_VAULT_TYPE=s3\n"
        "RCLONE_CONFIG_VAULT_PROVIDER=Other\n"
        f"RCLONE_CONFIG_VAULT_ENDPOINT={s3.endpoint}\n"
        f"RCLONE_CONFIG_VAULT_ACCESS_KEY_ID={ACCESS_KEY}\n"
        f"RCLONE_CONFIG_VAULT_SECRET_ACCESS_KEY={SECRET_KEY}\n"
        "RCLONE_LOW_LEVEL_RETRIES=1\n"
    )
    config = load_config(None, effective_environ(env_file) | BASE | FAST_RETRIES)
    assert SECRET_KEY in secrets_of(config)  # masked in our logs like any other secret
    assert "environment" not in config_as_dict(config)["upload"]  # not shown, not settable
    rclone = await Rclone.open(config.upload)
    assert not any(flag.startswith("--low-level-retries") for flag in default_flags(rclone._env))
    source = tmp_path / "db-20260101T000000Z.dump"
    source.write_bytes(os.urandom(50_000))
    await rclone.copyto(source, rclone.target("db", source.name))
    stored = s3.root / s3.bucket / "from-env-file" / "db" / source.name
    assert sha256_of(stored) == sha256_of(source)


def test_rclone_environment_is_not_a_setting(tmp_path: Path) -> None:
    path = tmp_path / "laterbased.yaml"
    path.write_text("upload:\n  environment: {RCLONE_CONFIG_X_TYPE: local}\n")
    with pytest.raises(ConfigError) as failure:
        load_config(path, BASE | {"LATERBASED_UPLOAD_ENVIRONMENT": "x"})
    assert "upload.environment: unknown key" in str(failure.value)
    assert "LATERBASED_UPLOAD_ENVIRONMENT: unknown setting" in str(failure.value)
