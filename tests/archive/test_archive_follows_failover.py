"""The WAL archive follows the primary onto a new timeline (a failover of the same cluster):
pg_receivewal carries on with the history file, the window spans the switch, and restore
--at a moment on either side of it brings back the rows of that moment."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

import pytest
from pgserver import PgServer
from pitr_support import LIBRARY, archive_running, archived_up_to_now, config_for, rows
from streaming_standby import StreamingStandby
from waiting import wait_for

from laterbased.archive.basebackup import take_base_backup
from laterbased.archive.primary import archive_server
from laterbased.ops.restore.steps import RestoreRequest, restore
from laterbased.records import wal_archive

pytestmark = pytest.mark.slow


def now_on(server: PgServer) -> datetime:
    return datetime.fromisoformat(server.sql("SELECT clock_timestamp()::text"))


def library_with_clips(server: PgServer) -> None:
    server.create_database(LIBRARY)
    server.sql(
        'CREATE TABLE "SM_Project" (id int); CREATE TABLE clips (id int PRIMARY KEY, note text)',
        database=LIBRARY,
    )


async def test_the_archive_follows_a_failover_and_restores_moments_on_both_timelines(
    make_primary: Callable[..., PgServer], tmp_path: Path, state_dir: Path
) -> None:
    server = make_primary()
    server.create_database(LIBRARY)
    server.sql(
        'CREATE TABLE "SM_Project" (id int); CREATE TABLE clips (id int PRIMARY KEY, note text)',
        database=LIBRARY,
    )
    config = config_for(server, tmp_path, state_dir)
    async with archive_running(config) as state:
        server.sql("INSERT INTO clips VALUES (1, 'before-failover')", database=LIBRARY)
        before = now_on(server)
        await asyncio.sleep(0.05)
        server.sql("INSERT INTO clips VALUES (2, 'late-on-timeline-1')", database=LIBRARY)
        await archived_up_to_now(server)

        server.fail_over_in_place()  # the same cluster, back on timeline 2
        assert server.sql("SELECT pg_walfile_name(pg_current_wal_lsn())").startswith("00000002")

        server.sql("INSERT INTO clips VALUES (3, 'after-failover')", database=LIBRARY)
        after = now_on(server)
        await asyncio.sleep(0.05)
        server.sql("DELETE FROM clips", database=LIBRARY)  # the mistake
        server.sql("SELECT pg_switch_wal()")
        server.sql("CREATE TABLE later (id int)", database=LIBRARY)
        await archived_up_to_now(server, timeout=90)

        def spans_the_switch() -> bool:
            window = wal_archive.coverage(config.backup_directory)
            return window.covers(before) and window.covers(after)

        await wait_for(
            spans_the_switch,
            "the window spanning the failover",
            log=lambda: repr(wal_archive.coverage(config.backup_directory)),
        )
        assert state.archive.gaps == ()
    names = {p.name for p in wal_archive.wal_dir(config.backup_directory).iterdir()}
    assert any(name.startswith("00000002.history") for name in names), sorted(names)
    assert any(name.startswith("00000002") and ".history" not in name for name in names)

    result = await restore(
        config, RestoreRequest(target_db="after the failover", database=LIBRARY, at=after)
    )
    assert result.at_how is not None and result.at_how.startswith("point in time"), result
    assert rows(server, "after the failover") == [
        "before-failover", "late-on-timeline-1", "after-failover"
    ]
    result = await restore(
        config, RestoreRequest(target_db="before the failover", database=LIBRARY, at=before)
    )
    assert result.at_how is not None and result.at_how.startswith("point in time"), result
    assert rows(server, "before the failover") == ["before-failover"]


async def test_the_archive_follows_our_promoted_standby_and_restores_moments_on_both_sides(
    make_primary: Callable[..., PgServer], tmp_path: Path, state_dir: Path
) -> None:
    server = make_primary()
    library_with_clips(server)
    standby = StreamingStandby.running(server, "laterbase_standby_slot")
    try:
        config = config_for(server, tmp_path, state_dir)
        config = dataclasses.replace(
            config, standby=dataclasses.replace(config.standby, enabled=True, port=standby.port)
        )
        async with archive_running(config) as state:
            server.sql("INSERT INTO clips VALUES (1, 'on-the-old-primary')", database=LIBRARY)
            before = now_on(server)
            await asyncio.sleep(0.05)
            server.sql("INSERT INTO clips VALUES (2, 'replicated-too')", database=LIBRARY)
            await archived_up_to_now(server)
            lsn = server.sql("SELECT pg_current_wal_lsn()")
            await wait_for(
                lambda: standby.sql(f"SELECT pg_last_wal_replay_lsn() >= '{lsn}'") == "t",
                "the standby caught up",
            )

            # The Resolve server dies; laterbased promote: our standby is the primary now.
            server.stop()
            assert standby.sql("SELECT pg_promote()") == "t"
            state.standby.role = "primary"
            state.standby.phase = "promoted"
            state.standby.port = standby.port

            def streams_from_the_promoted_server() -> bool:
                return standby.sql(
                    "SELECT count(*) FROM pg_stat_replication "
                    "WHERE application_name = 'laterbased_archive_receivewal'"
                ) == "1"

            await wait_for(streams_from_the_promoted_server, "pg_receivewal on the new primary")
            assert standby.sql(
                "SELECT count(*) FROM pg_replication_slots WHERE slot_name = 'laterbase_wal_slot'"
            ) == "1", "the archive's slot created on the promoted server"
            standby_sql = standby.sql

            def on_promoted(query: str) -> str:
                return standby_sql(f"\\c \"{LIBRARY}\"\n{query}")

            on_promoted("INSERT INTO clips VALUES (3, 'on-the-promoted-server')")
            after = datetime.fromisoformat(on_promoted("SELECT clock_timestamp()::text"))
            await asyncio.sleep(0.05)
            on_promoted("DELETE FROM clips")
            standby_sql("SELECT pg_switch_wal()")
            on_promoted("CREATE TABLE later (id int)")
            lsn = standby_sql("SELECT pg_current_wal_lsn()")
            await wait_for(
                lambda: standby_sql(
                    "SELECT count(*) FROM pg_stat_replication WHERE application_name = "
                    f"'laterbased_archive_receivewal' AND flush_lsn >= '{lsn}'::pg_lsn"
                ) == "1",
                "the promoted server's WAL archived",
            )

            def spans_the_failover() -> bool:
                window = wal_archive.coverage(config.backup_directory)
                return window.covers(before) and window.covers(after)

            await wait_for(
                spans_the_failover,
                "the window spanning the failover",
                log=lambda: repr(wal_archive.coverage(config.backup_directory)),
            )

            # The next base backup comes from the promoted server too (the old one is gone).
            newer = await take_base_backup(config, archive_server(config, state.standby))
            assert newer.timeline == 2, newer
            on_promoted("INSERT INTO clips VALUES (4, 'after-the-new-base-backup')")
            latest = datetime.fromisoformat(on_promoted("SELECT clock_timestamp()::text"))
            standby_sql("SELECT pg_switch_wal()")
            on_promoted("CREATE TABLE even_later (id int)")
            await wait_for(
                lambda: wal_archive.base_backup_for(config.backup_directory, latest) == newer,
                "the promoted server's base backup starting the window's newest moments",
                log=lambda: repr(wal_archive.coverage(config.backup_directory)),
            )
        into_the_new_primary = {"target_host": "127.0.0.1", "target_port": standby.port}
        result = await restore(
            config,
            RestoreRequest(
                target_db="after", database=LIBRARY, at=after, **into_the_new_primary
            ),
        )
        assert result.at_how is not None and result.at_how.startswith("point in time"), result
        restored = standby_sql('\\c "after"\nSELECT note FROM clips ORDER BY id').split()
        assert restored == ["on-the-old-primary", "replicated-too", "on-the-promoted-server"]
        result = await restore(
            config,
            RestoreRequest(
                target_db="before", database=LIBRARY, at=before, **into_the_new_primary
            ),
        )
        assert result.at_how is not None and result.at_how.startswith("point in time"), result
        restored = standby_sql('\\c "before"\nSELECT note FROM clips ORDER BY id').split()
        assert restored == ["on-the-old-primary"]
        result = await restore(
            config,
            RestoreRequest(
                target_db="latest", database=LIBRARY, at=latest, **into_the_new_primary
            ),
        )
        assert newer.directory.name in result.source, result
        restored = standby_sql('\\c "latest"\nSELECT note FROM clips ORDER BY id').split()
        assert restored == ["after-the-new-base-backup"]
    finally:
        standby.cleanup()
