"""Failover planned before the disaster (issue 19), end to end on loopback: 127.0.0.2 stands
for the host's LAN address (Linux routes all of 127/8 to lo), a free port for 5432.

The plan is checked while the primary runs; then the primary stops, ``laterbased promote``
moves the server to the failover address and port and says what each workstation enters;
a client with the primary's user and password opens the library there and writes; the
daemon serves the new world (health green, the old primary "gone (promoted away)", the
next backup from the promoted server); ``check`` judges a primary. The rehearsal clones
the standby, promotes the copy on a side port and leaves nothing behind."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest
from daemon_process import DaemonProcess, primary_section, write_config
from daemon_support import get_json, healthy, run_cli, stop_daemon
from pgserver import PgServer, free_port
from waiting import wait_for

from laterbased.proc import pids_with_cwd_under

pytestmark = pytest.mark.slow

TOKEN = "failover-token-" + os.urandom(6).hex()
LIBRARY = "Resolve Library"
LAN_ADDRESS = "127.0.0.2"


def resolve_primary(make_primary: Callable[..., PgServer], *, lan_rule: bool = True) -> PgServer:
    """A primary with one Resolve library owned by laterbased's login (as Resolve's own
    ``postgres`` user owns its libraries) and, like a Resolve server, a pg_hba.conf line
    for the workstations' network."""
    primary = make_primary()
    if lan_rule:
        primary.append_hba("host all all 127.0.0.0/8 scram-sha-256")
    primary.sql(f'CREATE DATABASE "{LIBRARY}" OWNER {primary.replication_user}')
    primary.sql(
        'CREATE TABLE public."SM_Project" (id serial PRIMARY KEY, "ProjectName" text);'
        'INSERT INTO public."SM_Project" ("ProjectName") VALUES (\'Feature Film\');'
        f'ALTER TABLE public."SM_Project" OWNER TO {primary.replication_user}',
        database=LIBRARY,
    )
    return primary


def failover_config(primary: PgServer, state_dir: Path, failover_port: int) -> dict[str, Any]:
    return {
        "primary": primary_section(primary),
        "standby": {
            "port": free_port(),
            "failover_address": [LAN_ADDRESS],
            "failover_port": failover_port,
        },
        "monitor": {"interval": "1s"},
        "backup": {
            "directory": str(state_dir / "backups"),
            "schedule": "0 0 1 1 *",
            "catch_up": False,
        },
        "http": {"host": "127.0.0.1", "port": free_port(), "token": TOKEN},
        "state_dir": str(state_dir),
    }


async def library_connection(primary: PgServer, host: str, port: int) -> Any:
    """What a Resolve workstation does: the primary's user and password, the library."""
    return await asyncpg.connect(
        host=host,
        port=port,
        user=primary.replication_user,
        password=primary.replication_password,
        database=LIBRARY,
        timeout=10,
    )


def line_of(output: str, name: str) -> str:
    for line in output.splitlines():
        if name in line:
            return line
    raise AssertionError(f"no line {name!r} in:\n{output}")


async def test_failover_to_the_planned_address_serves_workstations_and_the_new_world(
    make_primary: Callable[..., PgServer], state_dir: Path, pg_bindir: Path
) -> None:
    primary = resolve_primary(make_primary)
    failover_port = free_port()
    config = failover_config(primary, state_dir, failover_port)
    config_path = write_config(state_dir / "laterbased.yaml", config)
    daemon = await DaemonProcess.start(config_path, config["http"]["port"])
    restarted: DaemonProcess | None = None
    try:
        await daemon.wait_log("standby postgres accepting connections", timeout=120)
        await wait_for(lambda: healthy(daemon), f"healthy standby:\n{daemon.log[-3000:]}", 120)

        # The plan, checked while the primary is healthy.
        code, out = await run_cli("check", "--config", str(config_path))
        assert line_of(out, f"failover {LAN_ADDRESS}").startswith("OK"), out
        assert line_of(out, "failover pg_hba").startswith("OK"), out
        assert "127.0.0.0/8" in line_of(out, "failover pg_hba")
        assert "firewall" in out

        primary.stop("fast")
        code, out = await run_cli("promote", "--config", str(config_path))
        assert code == 0, out + daemon.log[-3000:]
        assert f"Location (IP address): {LAN_ADDRESS}" in out
        assert f"Database name: {LIBRARY}" in out
        assert f"User: {primary.replication_user}" in out
        assert f"port {failover_port}" in out
        assert "old primary" in out

        conn = await library_connection(primary, LAN_ADDRESS, failover_port)
        try:
            assert await conn.fetchval('SELECT "ProjectName" FROM public."SM_Project"') == (
                "Feature Film"
            )
            await conn.execute(
                'INSERT INTO public."SM_Project" ("ProjectName") VALUES (\'after-failover\')'
            )
        finally:
            await conn.close()

        await wait_for(lambda: healthy(daemon), f"health green:\n{daemon.log[-3000:]}", 60)
        _status, body = await get_json(daemon, "/healthz")
        reasons = {check["name"]: check["reason"] for check in body["checks"]}
        assert "gone (promoted away)" in reasons["primary"]
        assert "primary unreachable" not in daemon.log.split("promoted")[-1]

        async with aiohttp.ClientSession() as session:
            async with session.get(f"{daemon.url}/status") as response:
                page = await response.text()
        assert "After the failover" in page and LAN_ADDRESS in page

        code, out = await run_cli("check", "--config", str(config_path))
        assert code in (0, 1), out
        assert "slot" not in out and "prepare-primary" not in out, out
        assert line_of(out, "role").startswith("OK"), out
        assert LIBRARY in line_of(out, "failover pg_hba"), out

        async with aiohttp.ClientSession() as session:
            async with session.post(
                f"{daemon.url}/api/backup",
                headers={"Authorization": f"Bearer {TOKEN}"},
                json={},
            ) as response:
                answer = await response.json()
                assert response.status == 200, answer
        manifests = sorted((state_dir / "backups").rglob("*.json"))
        newest = [m for m in manifests if json.loads(m.read_text()).get("database") == LIBRARY]
        assert newest, manifests
        manifest = json.loads(newest[-1].read_text())
        assert manifest["source"] == "promoted"
        dump = newest[-1].parent / manifest["file"]
        restored = subprocess.run(
            [str(pg_bindir / "pg_restore"), "-f", "-", "--data-only", str(dump)],
            capture_output=True, text=True, check=True,
        ).stdout
        assert "after-failover" in restored

        # A restart as a primary: no ERROR about the old primary while our postgres starts.
        await stop_daemon(daemon)
        restarted = await DaemonProcess.start(config_path, config["http"]["port"])
        await wait_for(lambda: healthy(restarted), f"green again:\n{restarted.log[-3000:]}", 90)
        assert "ERROR" not in restarted.log, restarted.log
        conn = await library_connection(primary, LAN_ADDRESS, failover_port)
        await conn.close()
        await stop_daemon(restarted)
    finally:
        await daemon.stop()
        if restarted is not None:
            await restarted.stop()
    assert pids_with_cwd_under(state_dir) == []


async def test_check_fails_a_plan_whose_address_is_not_here_or_whose_hba_refuses_workstations(
    make_primary: Callable[..., PgServer], state_dir: Path
) -> None:
    primary = resolve_primary(make_primary, lan_rule=False)
    config = failover_config(primary, state_dir, free_port())
    # TEST-NET-1 (RFC 5737): never an address of this host.
    config["standby"]["failover_address"] = ["192.0.2.10", LAN_ADDRESS]
    config_path = write_config(state_dir / "laterbased.yaml", config)
    daemon = await DaemonProcess.start(config_path, config["http"]["port"])
    try:
        await daemon.wait_log("standby postgres accepting connections", timeout=120)
        code, out = await run_cli("check", "--config", str(config_path))
        assert code == 2, out
        assert line_of(out, "failover 192.0.2.10").startswith("FAIL"), out
        assert "not an address of this host" in out
        hba = line_of(out, "failover pg_hba")
        assert hba.startswith("FAIL") and LIBRARY in hba, out
        await stop_daemon(daemon)
    finally:
        await daemon.stop()


async def test_a_taken_failover_port_keeps_the_promoted_server_where_it_ran_and_says_why(
    make_primary: Callable[..., PgServer], state_dir: Path
) -> None:
    primary = resolve_primary(make_primary)
    failover_port = free_port()
    config = failover_config(primary, state_dir, failover_port)
    config_path = write_config(state_dir / "laterbased.yaml", config)
    squatter = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    squatter.bind((LAN_ADDRESS, failover_port))
    squatter.listen()
    daemon = await DaemonProcess.start(config_path, config["http"]["port"])
    try:
        await daemon.wait_log("standby postgres accepting connections", timeout=120)
        primary.stop("fast")
        code, out = await run_cli("promote", "--config", str(config_path))
        assert code == 0, out
        assert "cannot move the promoted server to the failover endpoint" in out, out
        assert "in use by another program" in out
        # Still serving where it ran (a crash loop on a taken port would serve nobody).
        conn = await library_connection(primary, "127.0.0.1", config["standby"]["port"])
        try:
            await conn.execute('INSERT INTO public."SM_Project" ("ProjectName") VALUES (\'x\')')
        finally:
            await conn.close()
        async with aiohttp.ClientSession() as session:
            async with session.get(f"{daemon.url}/status") as response:
                page = await response.text()
        assert "cannot move the promoted server" in page
        assert "ERROR" in daemon.log and "cannot move the promoted server" in daemon.log
        await stop_daemon(daemon)
    finally:
        squatter.close()
        await daemon.stop()


async def test_check_warns_when_the_standbys_pg_hba_admits_with_another_method_than_the_primary(
    make_primary: Callable[..., PgServer], state_dir: Path
) -> None:
    primary = resolve_primary(make_primary)
    config = failover_config(primary, state_dir, free_port())
    # Resolve's own login is a superuser: it may read the primary's pg_hba.conf to compare.
    config["primary"]["user"] = primary.superuser
    config["primary"]["password"] = primary.superuser_password
    config_path = write_config(state_dir / "laterbased.yaml", config)
    daemon = await DaemonProcess.start(config_path, config["http"]["port"])
    try:
        await daemon.wait_log("standby postgres accepting connections", timeout=120)
        code, out = await run_cli("check", "--config", str(config_path))
        assert line_of(out, "failover pg_hba").startswith("OK"), out
        hba = state_dir / "standby" / "pg_hba.conf"
        hba.write_text(hba.read_text().replace(
            "host all all 127.0.0.0/8 scram-sha-256", "host all all 127.0.0.0/8 md5"
        ))
        code, out = await run_cli("check", "--config", str(config_path))
        line = line_of(out, "failover pg_hba")
        assert line.startswith("WARN"), out
        assert "md5 here, scram-sha-256 on the primary" in line
        await stop_daemon(daemon)
    finally:
        await daemon.stop()


async def test_rehearsal_promotes_a_throwaway_copy_and_leaves_the_standby_streaming(
    make_primary: Callable[..., PgServer], state_dir: Path
) -> None:
    primary = resolve_primary(make_primary)
    config = failover_config(primary, state_dir, free_port())
    config_path = write_config(state_dir / "laterbased.yaml", config)
    daemon = await DaemonProcess.start(config_path, config["http"]["port"])
    try:
        await daemon.wait_log("standby postgres accepting connections", timeout=120)
        await wait_for(lambda: healthy(daemon), f"healthy standby:\n{daemon.log[-3000:]}", 120)
        postmaster = (state_dir / "standby" / "postmaster.pid").read_text().split()[0]
        # What a rehearsal killed before its cleanup leaves: removed by the next one.
        (state_dir / "rehearsal-killed" / "data").mkdir(parents=True)
        (state_dir / "rehearsal-killed" / "data" / "PG_VERSION").write_text("13\n")

        code, out = await run_cli("promote", "--rehearse", "--config", str(config_path))
        assert code == 0, out
        assert f"ok    {LIBRARY}: SM_Project readable (1 projects), a write accepted" in out
        assert "promoted and every library opened" in out

        assert [p.name for p in state_dir.iterdir() if p.name.startswith("rehearsal-")] == []
        assert (state_dir / "standby" / "postmaster.pid").read_text().split()[0] == postmaster
        primary.sql(
            'INSERT INTO public."SM_Project" ("ProjectName") VALUES (\'after-rehearsal\')',
            database=LIBRARY,
        )
        standby_port = config["standby"]["port"]

        async def replicated() -> bool:
            try:
                conn = await library_connection(primary, "127.0.0.1", standby_port)
            except (OSError, asyncpg.PostgresError):
                return False
            try:
                return bool(await conn.fetchval(
                    'SELECT count(*) FROM public."SM_Project" '
                    "WHERE \"ProjectName\" = 'after-rehearsal'"
                ))
            finally:
                await conn.close()

        await wait_for(replicated, "the standby still streams after the rehearsal")
        await wait_for(lambda: healthy(daemon), f"still healthy:\n{daemon.log[-3000:]}", 60)
        assert "rehearsal postgres" in daemon.log or "rehearsal" in out
        await stop_daemon(daemon)
    finally:
        await daemon.stop()
    assert pids_with_cwd_under(state_dir) == []


async def test_rehearsal_clones_the_primary_when_the_standbys_pg_hba_admits_no_replication(
    make_primary: Callable[..., PgServer], state_dir: Path
) -> None:
    """A Windows primary's pg_hba.conf, copied into the standby, has no replication line
    for this host's loopback or socket: the rehearsal still runs, from the primary."""
    primary = resolve_primary(make_primary)
    config = failover_config(primary, state_dir, free_port())
    config_path = write_config(state_dir / "laterbased.yaml", config)
    daemon = await DaemonProcess.start(config_path, config["http"]["port"])
    try:
        await daemon.wait_log("standby postgres accepting connections", timeout=120)
        hba = state_dir / "standby" / "pg_hba.conf"
        hba.write_text("\n".join(
            line for line in hba.read_text().splitlines() if "replication" not in line
        ) + "\n")
        os.kill(int((state_dir / "standby" / "postmaster.pid").read_text().split()[0]),
                signal.SIGHUP)
        await daemon.wait_log("received SIGHUP, reloading configuration files", timeout=30)
        code, out = await run_cli("promote", "--rehearse", "--config", str(config_path))
        assert code == 0, out
        assert "cloned the primary: the standby's pg_hba.conf admits no replication" in out
        assert f"ok    {LIBRARY}: SM_Project readable" in out
        assert [p.name for p in state_dir.iterdir() if p.name.startswith("rehearsal-")] == []
        await stop_daemon(daemon)
    finally:
        await daemon.stop()
