"""`laterbased promote` with a daemon that does not answer: stop, never promote behind it."""

from __future__ import annotations

import dataclasses
import socket

import pytest

from laterbased.config import load_config
from laterbased.errors import JobFailed
from laterbased.ops.promote import _ask_daemon


async def test_a_silent_daemon_is_an_error_not_a_reason_to_promote_directly() -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(4)  # accepts, never answers: a daemon busy promoting, or hung
        config = load_config(None, {"PRIMARY_HOST": "127.0.0.1"})
        config = dataclasses.replace(
            config, http=dataclasses.replace(config.http, port=listener.getsockname()[1])
        )
        with pytest.raises(JobFailed, match="may still be promoting"):
            await _ask_daemon(config, force=False, seconds=1.0)


async def test_no_daemon_listening_means_promote_directly() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    config = load_config(None, {"PRIMARY_HOST": "127.0.0.1", "LATERBASED_HTTP_PORT": str(port)})
    assert await _ask_daemon(config, force=False, seconds=1.0) is None
