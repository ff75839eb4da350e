"""``http.token`` with spaces around it (a quoted YAML value, an env file's ``TOKEN= x``, a
secret file with a blank line's indentation): the client sends the token without them, so
the configured one is taken without them too; a token of spaces only is a config error."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
import yaml
from web_support import serving

from laterbased.config import load_config
from laterbased.core.state import State

TOKEN = "spaced-token-" + os.urandom(6).hex()
MINIMAL = {"PRIMARY_HOST": "127.0.0.1", "LATERBASED_STANDBY_ENABLED": "0"}


@pytest.fixture
async def api() -> AsyncIterator[tuple[str, State]]:
    state = State(config=load_config(None, MINIMAL))
    async with serving(state) as url:
        yield url, state


@pytest.mark.parametrize("how", ["yaml", "LATERBASED_HTTP_TOKEN", "LATERBASED_HTTP_TOKEN_FILE"])
async def test_a_token_configured_with_outer_spaces_admits_its_bearer(
    api: tuple[str, State], tmp_path: Path, how: str
) -> None:
    url, state = api
    spaced = f"  {TOKEN}\t "
    env = dict(MINIMAL)
    config_path = None
    if how == "yaml":
        config_path = tmp_path / "laterbased.yaml"
        config_path.write_text(yaml.safe_dump({"http": {"token": spaced}}))
    elif how == "LATERBASED_HTTP_TOKEN_FILE":
        token_file = tmp_path / "token"
        token_file.write_text(spaced + "\n")
        token_file.chmod(0o600)
        env[how] = str(token_file)
    else:
        env[how] = spaced
    state.config = load_config(config_path, env)
    async with aiohttp.ClientSession() as session:
        for path in ("/api/backup", "/api/promote"):
            async with session.post(
                url + path, headers={"Authorization": f"Bearer {TOKEN}"}
            ) as response:
                # Admitted: no worker offers the action here, so 409, not 401.
                assert response.status == 409, (path, await response.text())
            async with session.post(
                url + path, headers={"Authorization": "Bearer wrong"}
            ) as response:
                assert response.status == 401, path


def test_a_token_of_spaces_only_is_a_config_error_reported_with_the_others(
    tmp_path: Path,
) -> None:
    config_path = tmp_path / "laterbased.yaml"
    config_path.write_text(yaml.safe_dump({"http": {"token": "   ", "port": 0}}))
    environ = {k: v for k, v in os.environ.items() if not k.startswith("LATERBASED_")}
    result = subprocess.run(
        [sys.executable, "-m", "laterbased", "config", "validate", "--config", str(config_path)],
        capture_output=True,
        text=True,
        env=environ | MINIMAL,
        timeout=60,
        check=False,
    )
    assert result.returncode == 78, result
    assert "http.token: only spaces" in result.stderr, result.stderr
    assert "http.port: port must be 1-65535" in result.stderr, result.stderr
