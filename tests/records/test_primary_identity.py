"""Which cluster answers at the primary's address: checked by its system identifier.

A fresh initdb (a reinstalled server) at the primary's host:port is a stranger: health is
critical naming both identifiers, no dump of it joins the real library's series, no slot is
created on it, the standby is not re-cloned from it (even with reclone_on_mismatch), also
after a restart of laterbased; ``laterbased accept-primary`` makes it the primary. A failover
of the same cluster (new timeline, same identifier) stays green.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sys
import tempfile
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from daemon_process import DaemonProcess, write_config
from daemon_support import get_json, run_cli
from pgserver import PgServer, free_port
from waiting import wait_for

from laterbased.config import (
    BackupConfig,
    Config,
    HttpConfig,
    PrimaryConfig,
    Secret,
    StandbyConfig,
)
from laterbased.core.state import State
from laterbased.errors import RefuseToRun
from laterbased.health import verdicts as health
from laterbased.ops.accept_primary import accept_primary
from laterbased.ops.check.checks import run_checks
from laterbased.pg import control_file
from laterbased.records import identity
from laterbased.records.catalogue import BackupRecord

pytestmark = pytest.mark.slow

TOKEN = "identity-token-" + os.urandom(6).hex()
LIBRARY = "Resolve Library"
SYSID = "SELECT system_identifier FROM pg_control_system()"


@pytest.fixture
def workdir() -> Iterator[Path]:
    # The standby runs as the postgres user: its files cannot live under pytest's 0700 tmp.
    path = Path(tempfile.mkdtemp(prefix="lb-identity-"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def daemon_config(primary: PgServer, workdir: Path) -> dict[str, Any]:
    return {
        "primary": {
            "host": primary.host,
            "port": primary.port,
            "user": primary.superuser,
            "password": primary.superuser_password,
        },
        # Even with re-cloning allowed, a stranger must not be cloned.
        "standby": {"port": free_port(), "reclone_on_mismatch": True},
        "monitor": {"interval": "1s"},
        "backup": {
            "directory": str(workdir / "backups"),
            "databases": [LIBRARY],
            "schedule": "0 3 * * *",
            "catch_up": False,
            "skip_unchanged": False,
            # The dumps read the server at the primary's address: what is checked here
            # (auto could read the standby, a copy of the real cluster, instead).
            "source": "primary",
        },
        "http": {"host": "127.0.0.1", "port": free_port(), "token": TOKEN},
        "state_dir": str(workdir / "state"),
    }


async def started(daemon: DaemonProcess) -> None:
    await daemon.wait_http(timeout=60)
    # The backup worker cleans .partial when it takes the backup directory: a run asked
    # for before that loses its passfile there (fe_sendauth: no password supplied).
    await daemon.wait_log("schedule started name=dump", timeout=60)


async def backed_up(daemon: DaemonProcess) -> str:
    """Run the backup chain through the API; its result (the steps when it failed)."""
    chain = await back_up(daemon)
    return "success" if chain["result"] == "success" else json.dumps(chain["steps"])


async def back_up(daemon: DaemonProcess) -> dict[str, Any]:
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            f"{daemon.url}/api/backup", headers={"Authorization": f"Bearer {TOKEN}"}
        ) as response,
    ):
        assert response.status == 200, await response.text()
        body: dict[str, Any] = await response.json()
        return body


def manifests(workdir: Path) -> list[dict[str, Any]]:
    found = []
    for path in sorted((workdir / "backups").rglob("*.json")):
        data = json.loads(path.read_text())
        if data.get("database") == LIBRARY:
            found.append(data)
    return found


async def stranger_metric(daemon: DaemonProcess) -> str:
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"{daemon.url}/metrics") as response,
    ):
        text = await response.text()
    return next(
        line.split()[-1]
        for line in text.splitlines()
        if line.startswith("laterbased_primary_is_another_cluster ")
    )


def check(body: dict[str, Any], name: str) -> dict[str, Any]:
    return next(c for c in body["checks"] if c["name"] == name)


async def wait_green(daemon: DaemonProcess, timeout: float = 90.0) -> None:
    async def green() -> bool:
        status, _ = await get_json(daemon, "/healthz")
        return status == 200

    await wait_for(green, "/healthz 200", timeout, interval=0.5, log=lambda: daemon.log)


async def test_a_new_cluster_at_the_primarys_address_gets_no_backup_and_no_slot_until_accepted(
    make_primary: Callable[..., PgServer], workdir: Path
) -> None:
    primary = make_primary()
    primary.create_database(LIBRARY)
    primary.sql("CREATE TABLE projects (name text); INSERT INTO projects VALUES ('real')",
                LIBRARY)
    real_id = primary.sql(SYSID)
    config = daemon_config(primary, workdir)
    config_path = write_config(workdir / "laterbased.yaml", config)
    standby_dir = workdir / "state" / "standby"
    daemon = await DaemonProcess.start(config_path, config["http"]["port"])
    try:
        await started(daemon)
        assert await backed_up(daemon) == "success"
        await wait_green(daemon)
        assert [m["system_identifier"] for m in manifests(workdir)] == [real_id]
        accepted = identity.load_accepted(workdir / "state")
        assert accepted is not None and accepted.system_identifier == real_id

        # The server is reinstalled: a fresh initdb on the same host:port.
        primary.replace_by_new_cluster()
        primary.create_database(LIBRARY)  # same name, empty: what must not join the series
        stranger_id = primary.sql(SYSID)
        assert stranger_id != real_id

        async def primary_critical() -> dict[str, Any] | None:
            status, body = await get_json(daemon, "/healthz")
            verdict = check(body, "primary")
            # Not "unreachable" while the new cluster is being made: the stranger itself.
            named = stranger_id in verdict["reason"]
            critical = status == 503 and verdict["severity"] == "critical"
            return verdict if critical and named else None

        verdict = await wait_for(primary_critical, "primary critical", 60, interval=0.5,
                                 log=lambda: daemon.log)
        assert real_id in verdict["reason"] and stranger_id in verdict["reason"]
        assert "accept-primary" in verdict["reason"]
        assert await stranger_metric(daemon) == "1.0"

        chain = await back_up(daemon)
        assert chain["result"] == "failed"
        assert stranger_id in json.dumps(chain["steps"])
        assert [m["system_identifier"] for m in manifests(workdir)] == [real_id]
        assert primary.sql("SELECT count(*) FROM pg_replication_slots") == "0"
        # reclone_on_mismatch is on, yet the standby keeps the real library's last state.
        assert control_file.system_identifier(standby_dir) == real_id
        assert not list(standby_dir.parent.glob("standby.mismatch-*"))

        # A restart still knows which cluster is ours.
        daemon.send(signal.SIGTERM)
        assert await daemon.wait_exit(timeout=90) == 0
        daemon = await DaemonProcess.start(config_path, config["http"]["port"])
        await started(daemon)
        verdict = await wait_for(primary_critical, "primary critical after a restart", 60,
                                 interval=0.5, log=lambda: daemon.log)
        assert real_id in verdict["reason"] and stranger_id in verdict["reason"]
        await daemon.wait_log("standby postgres accepting connections", timeout=60)
        assert (await back_up(daemon))["result"] == "failed"
        assert len(manifests(workdir)) == 1
        assert primary.sql("SELECT count(*) FROM pg_replication_slots") == "0"
        assert control_file.system_identifier(standby_dir) == real_id

        # The operator accepts the new primary: without the identifier nothing happens.
        code, out = await run_cli("accept-primary", "--config", str(config_path))
        assert code == 1 and f"--system-identifier {stranger_id}" in out, out
        code, out = await run_cli("accept-primary", "--config", str(config_path),
                              "--system-identifier", stranger_id)
        assert code == 0, out
        await wait_for(
            lambda: list(standby_dir.parent.glob("standby.mismatch-*")),
            "the old standby moved aside", 60, log=lambda: daemon.log,
        )
        assert await backed_up(daemon) == "success"
        await wait_green(daemon)
        assert control_file.system_identifier(standby_dir) == stranger_id
        assert [m["system_identifier"] for m in manifests(workdir)] == [real_id, stranger_id]
        assert await stranger_metric(daemon) == "0.0"
        daemon.send(signal.SIGTERM)
        assert await daemon.wait_exit(timeout=90) == 0
    finally:
        await daemon.stop()


async def test_a_failover_of_the_same_cluster_stays_green(
    make_primary: Callable[..., PgServer], workdir: Path
) -> None:
    primary = make_primary()
    primary.create_database(LIBRARY)
    cluster_id = primary.sql(SYSID)
    config = daemon_config(primary, workdir)
    config_path = write_config(workdir / "laterbased.yaml", config)
    daemon = await DaemonProcess.start(config_path, config["http"]["port"])
    try:
        await started(daemon)
        assert await backed_up(daemon) == "success"
        await wait_green(daemon)

        primary.fail_over_in_place()
        assert primary.sql("SELECT timeline_id FROM pg_control_checkpoint()") != "1"
        assert primary.sql(SYSID) == cluster_id
        primary.sql("CREATE TABLE after_failover (v int)", LIBRARY)

        assert await backed_up(daemon) == "success"
        await wait_green(daemon)

        async def replication_ok() -> bool:
            # The standby follows the new timeline after a reconnect: green once it streams.
            _, body = await get_json(daemon, "/healthz")
            return bool(check(body, "replication")["severity"] == "ok")

        await wait_for(replication_ok, "replication ok on the new timeline", 60, interval=0.5,
                       log=lambda: daemon.log)
        assert [m["system_identifier"] for m in manifests(workdir)] == [cluster_id] * 2
        assert "different PostgreSQL cluster" not in daemon.log
    finally:
        await daemon.stop()


async def test_identify_system_reads_the_identifier_where_pg_control_system_is_missing(
    primary: PgServer,
) -> None:
    # PostgreSQL 9.5 (Resolve 17 and older) has no pg_control_system(): the replication
    # protocol's IDENTIFY_SYSTEM tells the same number.
    conn = await primary.connect()
    try:
        observed = await identity.read_system_identifier(
            conn,
            version_num=90522,  # as a 9.5 server would report
            host=primary.host,
            port=primary.port,
            user=primary.replication_user,
            password=primary.replication_password,
            sslmode="prefer",
            timeout=10.0,
        )
    finally:
        await conn.close()
    assert observed == primary.sql(SYSID)


# --- first contact and the file (no server needed) --------------------------------------------


def offline_config(root: Path) -> Config:
    return Config(
        primary=PrimaryConfig(host="resolve.local"),
        standby=StandbyConfig(enabled=True),
        backup=BackupConfig(directory=root / "backups"),
        http=HttpConfig(enabled=False),
        state_dir=root / "state",
        timezone="UTC",
    )


def fake_control_file(data_dir: Path, identifier: int) -> None:
    (data_dir / "global").mkdir(parents=True)
    (data_dir / "global" / "pg_control").write_bytes(
        identifier.to_bytes(8, sys.byteorder) + bytes(200)
    )


def test_first_contact_accepts_the_primary_when_nothing_is_held(tmp_path: Path) -> None:
    config = offline_config(tmp_path)
    verdict = identity.settle(config, "111")
    assert not verdict.mismatch
    assert verdict.accepted is not None and verdict.accepted.system_identifier == "111"
    assert identity.settle(config, "222").mismatch  # remembered: the next one is a stranger


def test_first_contact_trusts_the_standby_data_directory_over_whoever_answers(
    tmp_path: Path,
) -> None:
    config = offline_config(tmp_path)
    fake_control_file(config.standby_data_dir, 7301234567890123456)
    verdict = identity.settle(config, "222")
    assert verdict.mismatch
    assert verdict.accepted is not None
    assert verdict.accepted.system_identifier == "7301234567890123456"
    assert "standby data directory" in verdict.accepted.how


def test_first_contact_trusts_the_newest_backup_over_the_standby(tmp_path: Path) -> None:
    config = offline_config(tmp_path)
    fake_control_file(config.standby_data_dir, 42)
    directory = config.backup_directory / "lib"
    directory.mkdir(parents=True)
    for age, sysid in ((2, "older"), (1, "333")):
        finished = datetime.now(UTC) - timedelta(days=age)
        record = BackupRecord(
            database="lib", file=f"lib-{age}.dump", directory=directory, format="custom",
            size=1, sha256="0", started=finished, finished=finished, source="primary",
            system_identifier=sysid,
        )
        (directory / f"lib-{age}.dump").write_bytes(b"x")
        record.manifest_path.write_text(json.dumps(record.to_json()))
    verdict = identity.settle(config, "333")
    assert not verdict.mismatch
    assert verdict.accepted is not None and "newest backup" in verdict.accepted.how


def test_a_damaged_identity_file_refuses_instead_of_accepting_anyone(tmp_path: Path) -> None:
    config = offline_config(tmp_path)
    config.state_dir.mkdir()
    identity.identity_file(config.state_dir).write_text("{not json")
    with pytest.raises(RefuseToRun, match="accept-primary"):
        identity.settle(config, "111")


def replication_config(primary: PgServer, state_dir: Path) -> Config:
    return Config(
        primary=PrimaryConfig(
            host=primary.host,
            port=primary.port,
            user=primary.replication_user,
            password=Secret(primary.replication_password),
        ),
        standby=StandbyConfig(enabled=False),
        backup=BackupConfig(enabled=False),
        http=HttpConfig(enabled=False),
        state_dir=state_dir,
        timezone="UTC",
    )


async def test_accept_primary_writes_a_damaged_record_anew(
    primary: PgServer, tmp_path: Path
) -> None:
    config = replication_config(primary, tmp_path)
    identity.identity_file(tmp_path).write_text("{damaged")
    cluster_id = primary.sql(SYSID)
    assert await accept_primary(config, None) == 1
    assert await accept_primary(config, cluster_id) == 0
    accepted = identity.load_accepted(tmp_path)
    assert accepted is not None and accepted.system_identifier == cluster_id


def test_a_standby_of_the_old_cluster_is_critical_after_a_new_primary_was_accepted(
    tmp_path: Path,
) -> None:
    # accept-primary without standby.reclone_on_mismatch: the running standby can never
    # follow the new primary, and /healthz says what to do instead of "running".
    state = State(config=offline_config(tmp_path))
    state.ready = True
    state.standby.phase, state.standby.pid, state.standby.role = "running", 4321, "replica"
    state.standby.system_identifier = "111"
    state.accepted_system_identifier = "222"
    state.primary.system_identifier = "222"
    verdict = health.check_standby(state, 0.0)
    assert verdict.severity == "critical"
    assert "111" in verdict.reason and "222" in verdict.reason
    assert "reclone_on_mismatch" in verdict.reason


async def test_check_names_both_identifiers_when_another_cluster_answers(
    primary: PgServer, tmp_path: Path
) -> None:
    config = replication_config(primary, tmp_path)
    identity.save_accepted(tmp_path, "7301234567890123456", "test")
    results = await run_checks(config)
    line = next(r for r in results if r.name == "primary identity")
    assert line.status == "FAIL"
    assert "7301234567890123456" in line.message and primary.sql(SYSID) in line.message
    assert "accept-primary" in line.hint
