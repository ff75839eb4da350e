"""Process-lifecycle review: each test here failed before its fix (real postgres servers,
real processes, the workers running in-process as the daemon runs them)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections.abc import Callable
from dataclasses import replace

import pytest
from pgserver import PgServer, free_port
from standby_support import running_standby
from waiting import wait_for

from laterbased.config import (
    BackupConfig,
    Config,
    HttpConfig,
    MonitorConfig,
    PrimaryConfig,
    Secret,
    StandbyConfig,
)
from laterbased.core.state import PrimaryState, SlotState, State
from laterbased.monitor.worker import Monitor
from laterbased.standby.promote import (
    PRIMARY_PROBE_TIMEOUT,
    old_primary_still_up,
    promote_in_daemon,
)
from laterbased.standby.slot_guard import SlotGuard

pytestmark = pytest.mark.slow


async def test_reload_fixing_the_password_during_bootstrap_retries_is_used_by_the_next_try(
    make_primary: Callable[..., PgServer],
) -> None:
    # 3 a.m.: the standby cannot clone because the password in the config is wrong. The
    # operator fixes it and runs `systemctl reload laterbased`: the next bootstrap attempt
    # must use the new password, not retry the old one until laterbased is restarted.
    primary = make_primary()
    async with running_standby(primary, start=False) as standby:
        good = standby.config
        standby.state.config = replace(
            good, primary=replace(good.primary, password=Secret("wrong password"))
        )
        standby.start()
        await wait_for(
            lambda: "retrying in 8s" in (standby.state.standby.message or ""),
            "the bootstrap backing off after failing with the wrong password",
        )
        standby.state.config = good
        standby.ctx._announce_reload()
        # At once, not after the 8 s backoff (which only grows, up to 5 minutes).
        await wait_for(
            lambda: standby.state.standby.phase == "bootstrapping",
            "a bootstrap attempt right after the reload",
            timeout=4,
        )
        await standby.wait_running(timeout=30)


async def test_reload_while_postgres_waits_for_its_restart_is_applied_at_that_start(
    make_primary: Callable[..., PgServer],
) -> None:
    # The reload lands while no postgres runs (restart backoff after a crash): the
    # restarted standby must follow the new password and slot, not the old ones.
    primary = make_primary()
    primary.sql("CREATE TABLE sb_reload_backoff (v text)")
    async with running_standby(primary, restart_backoff_max=5.0) as standby:
        await standby.wait_running()
        for kills in (1, 2):  # the second crash in a row waits 1 s before its restart
            pid = standby.state.standby.pid
            assert pid is not None
            os.kill(pid, signal.SIGKILL)
            await wait_for(
                lambda kills=kills: standby.state.standby.restarts["killed"] == kills,
                f"restart #{kills} counted",
            )
            if kills == 1:
                await standby.wait_running()
        assert standby.state.standby.phase == "restarting", standby.state.standby
        new_password = "after the crash"
        primary.sql(f"ALTER ROLE replicator PASSWORD '{new_password}'")
        standby.state.config = replace(
            standby.config,
            primary=replace(standby.config.primary, password=Secret(new_password)),
            standby=replace(standby.config.standby, slot_name="laterbased_after_crash"),
        )
        standby.ctx._announce_reload()
        await wait_for(
            lambda: primary.sql(
                "SELECT active FROM pg_replication_slots WHERE slot_name = "
                "'laterbased_after_crash'"
            ) == "t",
            "the restarted standby streaming through the new slot",
        )
        primary.sql("INSERT INTO sb_reload_backoff VALUES ('new slot')")
        await standby.wait_row(primary, "sb_reload_backoff", "new slot")


async def test_reload_with_a_new_standby_port_does_not_kill_the_running_standby_as_stuck(
    make_primary: Callable[..., PgServer],
) -> None:
    # The log promises: "the standby postgres uses it from its next start". The liveness
    # check must keep asking the server where it listens now, not call it stuck and kill it.
    primary = make_primary()
    async with running_standby(primary) as standby:
        await standby.wait_running()
        pid = standby.state.standby.pid
        standby.state.config = replace(
            standby.config, standby=replace(standby.config.standby, port=free_port())
        )
        standby.ctx._announce_reload()
        # monitor.interval is 1 s: three silent checks would call it stuck within ~4 s.
        await asyncio.sleep(6)
        assert standby.state.standby.restarts["stuck"] == 0, standby.state.standby
        assert standby.state.standby.pid == pid
        assert standby.state.standby.phase == "running", standby.state.standby
        # The monitor and a promotion, too, find the server where it listens.
        monitor = Monitor(standby.state)
        try:
            await monitor.poll_once()
        finally:
            monitor.close()
        assert standby.state.local.reachable, standby.state.local
        await promote_in_daemon(standby.state)
        assert standby.state.standby.role == "primary"


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
        config = Config(
            primary=PrimaryConfig(
                host="127.0.0.1",
                port=proxy.port,
                user=primary.superuser,
                password=Secret(primary.superuser_password),
                connect_timeout=5.0,
            ),
            standby=StandbyConfig(enabled=False),
            backup=BackupConfig(enabled=False),
            http=HttpConfig(enabled=False),
        )
        async with asyncio.timeout(PRIMARY_PROBE_TIMEOUT + 10):
            verdict = await old_primary_still_up(config)
    assert verdict is not None and "accepted a connection" in verdict


async def test_slot_repair_gives_up_in_time_when_the_primary_hangs_after_login(
    primary: PgServer,
) -> None:
    # The slot guard runs inside the standby's liveness loop: if it hung, nobody would
    # notice the standby postgres dying any more.
    async with FreezingProxy(primary.port) as proxy:
        config = Config(
            primary=PrimaryConfig(
                host="127.0.0.1",
                port=proxy.port,
                user=primary.superuser,
                password=Secret(primary.superuser_password),
                connect_timeout=2.0,
            ),
            monitor=MonitorConfig(query_timeout=1.0),
            backup=BackupConfig(enabled=False),
            http=HttpConfig(enabled=False),
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
