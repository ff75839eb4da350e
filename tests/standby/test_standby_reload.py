"""A reload (SIGHUP) reaches the standby worker whatever it is doing: backing off between
bootstrap attempts, waiting to restart a crashed postgres, or running (a new port is not a
stuck server). The worker runs in-process, as the daemon runs it, against a real primary."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
from collections.abc import Callable
from dataclasses import replace

import pytest
from pgserver import PgServer, free_port
from standby_support import running_standby
from waiting import wait_for

from laterbased.config import Secret
from laterbased.monitor.worker import Monitor
from laterbased.standby import supervisor
from laterbased.standby.promote import promote_in_daemon

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


async def test_reload_during_a_slow_failing_bootstrap_attempt_is_used_without_the_backoff(
    make_primary: Callable[..., PgServer], monkeypatch: pytest.MonkeyPatch
) -> None:
    # The configured primary host swallows connections (a firewall dropping them): each
    # attempt takes its connect timeout. The operator fixes the host meanwhile; the reload
    # lands during an attempt, which fails with the old host. The next attempt must follow
    # at once, with the new host, not after the backoff (60 s here, to make missing it
    # plain).
    monkeypatch.setattr(supervisor, "RESTART_BASE_DELAY", 60.0)
    primary = make_primary()
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        async with running_standby(primary, start=False) as standby:
            good = standby.config
            standby.state.config = replace(
                good, primary=replace(good.primary, port=silent.getsockname()[1])
            )
            standby.start()
            await wait_for(
                lambda: (standby.state.standby.message or "").startswith("connecting to primary"),
                "the first bootstrap attempt connecting to the silent host",
            )
            standby.state.config = good
            standby.ctx._announce_reload()
            await wait_for(
                lambda: standby.state.standby.phase == "bootstrapping",
                "a bootstrap attempt with the reloaded host, without the 60 s backoff",
                timeout=40,
            )
            await standby.wait_running(timeout=60)


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
