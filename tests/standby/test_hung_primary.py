"""A primary that accepts our login and then never answers (a link that died silently) holds
nothing up: an existing standby still starts, the split-brain guard answers within its probe
time, the slot repair gives up in time."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from dataclasses import replace

import pytest
from config_support import primary_config, quiet_config
from pgserver import PgServer
from standby_support import running_standby

from laterbased.config import (
    MonitorConfig,
    PrimaryConfig,
    StandbyConfig,
)
from laterbased.core.state import PrimaryState, SlotState, State
from laterbased.standby.promote import PRIMARY_PROBE_TIMEOUT, old_primary_still_up
from laterbased.standby.slot_guard import SlotGuard

pytestmark = pytest.mark.slow


class FreezingProxy:
    """A TCP relay to the primary that goes silent once a session is established (after
    the first ReadyForQuery): a network partition after login, which loopback cannot
    produce by itself. The sockets stay open, as they do when a link dies silently."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = 0
        self._server: asyncio.Server | None = None
        self._writers: list[asyncio.StreamWriter] = []

    async def __aenter__(self) -> FreezingProxy:
        self._server = await asyncio.start_server(self._relay, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        assert self._server is not None
        self._server.close()
        for writer in self._writers:
            writer.close()
        await self._server.wait_closed()

    async def _relay(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        server_r, server_w = await asyncio.open_connection("127.0.0.1", self.target_port)
        self._writers += [client_w, server_w]

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter, freeze: bool) -> None:
            while data := await src.read(65536):
                dst.write(data)
                if freeze and b"Z\x00\x00\x00\x05I" in data:
                    return  # logged in: from now on the primary "never answers"

        with contextlib.suppress(OSError):
            await asyncio.gather(pipe(client_r, server_w, False), pipe(server_r, client_w, True))


def through(proxy: FreezingProxy, primary: PgServer, *, connect_timeout: float) -> PrimaryConfig:
    """Resolve's superuser login to ``primary``, reached through ``proxy``."""
    return replace(
        primary_config(primary, superuser=True, connect_timeout=connect_timeout),
        host="127.0.0.1",
        port=proxy.port,
    )


async def test_existing_standby_starts_although_the_primary_hangs_after_login(
    make_primary: Callable[..., PgServer],
) -> None:
    # Restarting laterbased with a standby already cloned: checking the primary first is
    # a courtesy. A primary that accepts the login and then never answers (a link that
    # died silently) must not keep the hot standby down.
    primary = make_primary()
    async with running_standby(primary) as standby:
        await standby.wait_running()
        await standby.stop()
        async with FreezingProxy(primary.port) as proxy:
            standby.state.config = replace(
                standby.config,
                primary=replace(standby.config.primary, port=proxy.port, connect_timeout=2.0),
                monitor=replace(standby.config.monitor, query_timeout=1.0),
            )
            standby.ctx.stopping.clear()
            standby.start()
            await standby.wait_running(timeout=30)
            await standby.stop()


async def test_split_brain_guard_answers_quickly_when_the_old_primary_hangs_after_login(
    primary: PgServer,
) -> None:
    # Failover at 3 a.m.: the old primary's link died silently after our login. The guard
    # says "still running (it accepted a connection)" within its probe time, instead of
    # waiting forever to close a connection nobody answers on.
    async with FreezingProxy(primary.port) as proxy:
        config = quiet_config(primary=through(proxy, primary, connect_timeout=5.0))
        async with asyncio.timeout(PRIMARY_PROBE_TIMEOUT + 10):
            verdict = await old_primary_still_up(config)
    assert verdict is not None and "accepted a connection" in verdict


async def test_slot_repair_gives_up_in_time_when_the_primary_hangs_after_login(
    primary: PgServer,
) -> None:
    # The slot guard runs inside the standby's liveness loop: if it hung, nobody would
    # notice the standby postgres dying any more.
    async with FreezingProxy(primary.port) as proxy:
        config = quiet_config(
            primary=through(proxy, primary, connect_timeout=2.0),
            standby=StandbyConfig(),
            monitor=MonitorConfig(query_timeout=1.0),
        )
        state = State(config=config)
        state.primary = PrimaryState(
            reachable=True,
            last_ok=time.time(),
            in_recovery=False,
            slot=SlotState(name=config.standby.slot_name, exists=False),
        )
        async with asyncio.timeout(15):
            created = await SlotGuard().check(state, config)
    assert not created
    assert any("recreating it failed" in event.message for event in state.events)
