"""``backup.source: auto`` (the default): a dump reads the local standby while it streams within
``monitor.max_lag_bytes``, so no pg_dump runs on the Resolve server; a standby that is down or
behind leaves the run to the primary, and the manifest and the log say which.

The servers log every connection (``log_connections``): whether a pg_dump reached the primary
is read from the primary's own log (its ``application_name``), not guessed from timing.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from backup_support import make_config
from daemon_process import DaemonProcess, primary_section, write_config
from daemon_support import daemon_config, post, standby_sql
from pgserver import PgServer
from streaming_standby import StreamingStandby
from waiting import wait_for

from laterbased.backup.dump import run_dumps
from laterbased.backup.runner import run_backup_chain
from laterbased.config import Config, MonitorConfig, Secret
from laterbased.core.state import State
from laterbased.records.catalogue import BackupRecord, Catalogue

pytestmark = pytest.mark.slow
DB = "auto quelle ß"
DUMP_APPLICATION = "application_name=laterbased-dump"


@pytest.fixture
def pair(make_primary: Callable[..., PgServer]) -> Iterator[tuple[PgServer, StreamingStandby]]:
    primary = make_primary(log_connections="on")
    primary.create_database(DB)
    primary.sql(
        'CREATE TABLE "SM_Project" (id serial PRIMARY KEY, "ProjectName" text); '
        "INSERT INTO \"SM_Project\" (\"ProjectName\") SELECT 'p' || i "
        "FROM generate_series(1, 50) i",
        DB,
    )
    standby = StreamingStandby.running(primary, "auto_source_slot")
    try:
        yield primary, standby
    finally:
        standby.cleanup()


@pytest.fixture
def backup_dir() -> Iterator[Path]:
    base = Path(tempfile.mkdtemp(prefix="laterbased-auto-source-test-"))
    try:
        yield base / "backups"
    finally:
        subprocess.run(["rm", "-rf", str(base)], check=False)


def auto_config(
    primary: PgServer, standby: StreamingStandby, backup_dir: Path, **monitor: Any
) -> Config:
    config = make_config(primary, backup_dir, databases=(DB,), skip_unchanged=False)
    assert config.backup.source == "auto", "auto is the default"
    return dataclasses.replace(
        config,
        standby=dataclasses.replace(
            config.standby, enabled=True, port=standby.port, listen_addresses="127.0.0.1"
        ),
        monitor=MonitorConfig(**monitor),
    )


def manifest_source(record: BackupRecord) -> str:
    return str(json.loads(record.manifest_path.read_text())["source"])


def dumped_data(primary: PgServer, path: Path) -> str:
    result = subprocess.run(
        [str(primary.bindir / "pg_restore"), "--data-only", "--file=-", str(path)],
        capture_output=True, text=True, check=True, timeout=60,
    )
    return result.stdout


def replay_paused(standby: StreamingStandby) -> bool:
    return standby.sql("SELECT pg_is_wal_replay_paused()") == "t"


def log_size(path: Path) -> int:
    return path.stat().st_size


def log_since(path: Path, offset: int) -> str:
    with open(path, "rb") as handle:
        handle.seek(offset)
        return handle.read().decode(errors="replace")


async def test_auto_dumps_from_the_streaming_standby_and_no_pg_dump_reaches_the_primary(
    pair: tuple[PgServer, StreamingStandby], backup_dir: Path, caplog: Any
) -> None:
    primary, standby = pair
    primary_log, standby_log = log_size(primary.log_file), log_size(standby.log_file)
    # Written just before the run, without waiting for the standby: the run waits until the
    # standby has replayed what the primary had flushed, so the dump holds it.
    marker = "written on the primary " + os.urandom(4).hex()
    primary.sql(f"INSERT INTO \"SM_Project\" (\"ProjectName\") VALUES ('{marker}')", DB)
    caplog.set_level("INFO", logger="laterbased.backup.dump")
    outcomes = await run_dumps(
        auto_config(primary, standby, backup_dir), Catalogue(backup_dir), "auto-standby"
    )
    assert [o.result for o in outcomes] == ["success"], outcomes
    record = outcomes[0].record
    assert record is not None and record.source == "standby"
    assert manifest_source(record) == "standby"
    assert marker in dumped_data(primary, record.path)
    assert "dump source: the standby 127.0.0.1:" in caplog.text
    assert "source=standby" in caplog.text
    assert "paused WAL replay on the standby" in caplog.text
    assert not replay_paused(standby), "replay is resumed after the dump"
    assert DUMP_APPLICATION in log_since(standby.log_file, standby_log), standby.log_tail()
    assert DUMP_APPLICATION not in log_since(primary.log_file, primary_log), primary.log_tail()


async def test_auto_with_the_standby_stopped_dumps_from_the_primary_and_says_so(
    pair: tuple[PgServer, StreamingStandby], backup_dir: Path, caplog: Any
) -> None:
    primary, standby = pair
    await asyncio.to_thread(standby.stop)
    primary_log = log_size(primary.log_file)
    caplog.set_level("INFO", logger="laterbased.backup.dump")
    started = time.monotonic()
    outcomes = await run_dumps(
        auto_config(primary, standby, backup_dir), Catalogue(backup_dir), "auto-stopped"
    )
    assert [o.result for o in outcomes] == ["success"], outcomes
    record = outcomes[0].record
    assert record is not None and record.source == "primary"
    assert manifest_source(record) == "primary"
    assert "dump source: the primary, not the standby 127.0.0.1:" in caplog.text
    assert "does not accept connections" in caplog.text
    assert "source=primary" in caplog.text
    # auto does not wait backup.standby_wait (5 min) for a standby that is down.
    assert time.monotonic() - started < 120
    assert DUMP_APPLICATION in log_since(primary.log_file, primary_log)


async def wait_received(primary: PgServer, standby: StreamingStandby, target: str) -> None:
    deadline = time.monotonic() + 60
    query = f"SELECT pg_last_wal_receive_lsn() >= '{target}'::pg_lsn"
    while standby.sql(query) != "t":
        assert time.monotonic() < deadline, f"standby did not receive up to {target}"
        await asyncio.sleep(0.1)


async def test_auto_with_the_standby_lagging_beyond_the_limit_dumps_from_the_primary(
    pair: tuple[PgServer, StreamingStandby], backup_dir: Path, caplog: Any
) -> None:
    primary, standby = pair
    # Someone paused replay; the standby keeps receiving and falls 3 MB behind a 1 MB limit.
    standby.sql("SELECT pg_wal_replay_pause()")
    primary.sql(
        "CREATE TABLE bulk AS SELECT i, repeat(md5(i::text), 8) AS pad "
        "FROM generate_series(1, 12000) i",
        DB,
    )
    await wait_received(primary, standby, primary.sql("SELECT pg_current_wal_flush_lsn()"))
    caplog.set_level("INFO", logger="laterbased.backup.dump")
    config = auto_config(primary, standby, backup_dir, max_lag_bytes=1024 * 1024)
    outcomes = await run_dumps(config, Catalogue(backup_dir), "auto-lagging")
    assert [o.result for o in outcomes] == ["success"], outcomes
    record = outcomes[0].record
    assert record is not None and record.source == "primary"
    assert manifest_source(record) == "primary"
    assert "behind the primary (limit monitor.max_lag_bytes 1" in caplog.text, caplog.text
    # Not ours to resume: the run never touched the standby.
    assert replay_paused(standby)
    standby.sql("SELECT pg_wal_replay_resume()")


async def test_failed_auto_dump_from_the_standby_still_resumes_replay(
    pair: tuple[PgServer, StreamingStandby], backup_dir: Path, caplog: Any
) -> None:
    primary, standby = pair
    caplog.set_level("INFO", logger="laterbased.backup.dump")
    outcomes = await run_dumps(
        auto_config(primary, standby, backup_dir),
        Catalogue(backup_dir),
        "auto-failed",
        ["no such db"],
    )
    assert [o.result for o in outcomes] == ["failed"]
    assert "no such db" in outcomes[0].detail
    assert "dump source: the standby" in caplog.text
    assert "paused WAL replay on the standby" in caplog.text
    assert "resumed WAL replay on the standby" in caplog.text
    assert not replay_paused(standby)


async def test_auto_reads_the_standby_as_a_replication_role_that_is_not_a_superuser(
    pair: tuple[PgServer, StreamingStandby], backup_dir: Path, caplog: Any
) -> None:
    # primary.user a REPLICATION role allowed to read the library, not a superuser: the
    # standby's pg_stat_wal_receiver hides its status from it (only its pid shows).
    primary, standby = pair
    role = primary.replication_user
    primary.sql(
        f"GRANT SELECT ON ALL TABLES IN SCHEMA public TO {role}; "
        f"GRANT SELECT ON ALL SEQUENCES IN SCHEMA public TO {role}",
        DB,
    )
    config = auto_config(primary, standby, backup_dir)
    config = dataclasses.replace(
        config,
        primary=dataclasses.replace(
            config.primary, user=role, password=Secret(primary.replication_password)
        ),
    )
    caplog.set_level("INFO", logger="laterbased.backup.dump")
    outcomes = await run_dumps(config, Catalogue(backup_dir), "auto-role")
    assert [o.result for o in outcomes] == ["success"], outcomes
    record = outcomes[0].record
    assert record is not None and record.source == "standby", caplog.text
    assert not replay_paused(standby)


async def test_the_daemon_by_default_dumps_its_own_streaming_standby(
    make_primary: Callable[..., PgServer], state_dir: Path
) -> None:
    # No backup.source in the configuration: the default, auto, in the real daemon with
    # the standby it cloned and runs itself (as the postgres OS user under root).
    primary = make_primary(log_connections="on")
    primary.create_database(DB)
    primary.sql('CREATE TABLE "SM_Project" (id int); INSERT INTO "SM_Project" VALUES (1)', DB)
    backups = state_dir / "backups"
    config = daemon_config(primary, state_dir)
    config["primary"] = primary_section(primary, superuser=True)
    config["backup"] = {
        "databases": [DB],
        "directory": str(backups),
        "schedule": "0 0 1 1 *",
        "catch_up": False,
        "skip_unchanged": False,
    }
    port = config["standby"]["port"]
    daemon = await DaemonProcess.start(
        write_config(state_dir / "laterbased.yaml", config), config["http"]["port"]
    )
    try:
        await wait_for(
            lambda: standby_receiver_streaming(primary, port),
            "the daemon's standby streaming",
            180,
            interval=0.5,
            log=lambda: daemon.log,
        )
        primary_log = log_size(primary.log_file)
        status, body = await post(daemon, "/api/backup")
        assert status == 200 and body["result"] == "success", (body, daemon.log[-3000:])
        [record] = Catalogue(backups).list_backups(DB)
        assert record.source == "standby", daemon.log[-3000:]
        assert "dump source: the standby 127.0.0.1:" in daemon.log
        assert DUMP_APPLICATION not in log_since(primary.log_file, primary_log)
    finally:
        await daemon.stop()


async def standby_receiver_streaming(primary: PgServer, port: int) -> bool:
    try:
        status = await standby_sql(primary, port, "SELECT status FROM pg_stat_wal_receiver")
    except (OSError, asyncpg.PostgresError):
        return False
    return bool(status == "streaming")


async def test_a_backup_run_tells_the_state_which_server_it_reads(
    pair: tuple[PgServer, StreamingStandby], backup_dir: Path
) -> None:
    # Health reads it: replay paused during a run that dumps the standby is ours (ok); during
    # one that went to the primary it is someone else's (a warning).
    primary, standby = pair
    state = State(config=auto_config(primary, standby, backup_dir))
    result = await run_backup_chain(state, trigger="test")
    assert result.result == "success", result
    run = state.job("dump").last_run
    assert run is not None and run.source == "standby"
    await asyncio.to_thread(standby.stop)
    result = await run_backup_chain(state, trigger="test")
    assert result.result == "success", result
    run = state.job("dump").last_run
    assert run is not None and run.source == "primary"


async def test_auto_never_dumps_another_cluster_answering_at_the_standby_port(
    make_primary: Callable[..., PgServer], backup_dir: Path, caplog: Any
) -> None:
    # Where the standby should be, a streaming standby of another cluster answers (same
    # login): its system identifier is not the primary's, so the run dumps the primary.
    primary = make_primary()
    primary.create_database(DB)
    primary.sql('CREATE TABLE "SM_Project" (id int); INSERT INTO "SM_Project" VALUES (1)', DB)
    other = make_primary()
    other.create_database(DB)
    stranger = await asyncio.to_thread(StreamingStandby.running, other, "stranger_slot")
    try:
        password = primary.superuser_password.replace("'", "''")
        other.sql(f"ALTER ROLE {other.superuser} PASSWORD '{password}'")
        other.superuser_password = primary.superuser_password
        other.write_passfile()
        target = other.sql("SELECT pg_current_wal_insert_lsn()")  # synchronous_commit off
        await wait_for(
            lambda: stranger.sql(f"SELECT pg_last_wal_replay_lsn() >= '{target}'") == "t",
            "the other standby replayed the new password",
        )
        config = make_config(primary, backup_dir, databases=(DB,), skip_unchanged=False)
        config = dataclasses.replace(
            config,
            standby=dataclasses.replace(
                config.standby, enabled=True, port=stranger.port, listen_addresses="127.0.0.1"
            ),
        )
        caplog.set_level("INFO", logger="laterbased.backup.dump")
        outcomes = await run_dumps(config, Catalogue(backup_dir), "auto-stranger")
    finally:
        await asyncio.to_thread(stranger.cleanup)
    assert [o.result for o in outcomes] == ["success"], outcomes
    record = outcomes[0].record
    assert record is not None and record.source == "primary"
    assert "it is another cluster (system identifier" in caplog.text, caplog.text
