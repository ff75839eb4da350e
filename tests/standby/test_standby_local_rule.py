"""A standby cloned from a primary whose pg_hba.conf has no ``local`` line (Resolve's Windows
installer: no unix sockets there) is checked by laterbased without a FATAL line in its log
at every check (issue 19)."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable

import asyncpg
import pytest
from pgserver import PgServer
from standby_support import running_standby
from waiting import wait_for

from laterbased.standby import configure

pytestmark = pytest.mark.slow

WINDOWS_HBA = (
    "# TYPE  DATABASE        USER            ADDRESS                 METHOD\n"
    "host    all             all             127.0.0.1/32            scram-sha-256\n"
    "host    replication     all             127.0.0.1/32            scram-sha-256\n"
)


async def test_a_standby_of_a_windows_primary_is_checked_without_fatal_lines(
    make_primary: Callable[..., PgServer], caplog: pytest.LogCaptureFixture
) -> None:
    primary = make_primary()
    (primary.data_dir / "pg_hba.conf").write_text(WINDOWS_HBA)
    primary.reload()
    caplog.set_level(logging.INFO)
    async with running_standby(primary) as standby:
        await standby.wait_running()
        hba = (standby.data_dir / "pg_hba.conf").read_text()
        assert hba.startswith(configure.LOCAL_RULE_MARK)
        assert hba.endswith(WINDOWS_HBA), "the primary's rules are kept as they were"

        # "running" means a liveness check (pg_isready over the socket) got an answer,
        # so the server has logged whatever that connection caused. A line of our own
        # written after it: once it is seen, every earlier line of the (ordered) log is.
        marker = f"marker_{os.urandom(4).hex()}"
        with pytest.raises(asyncpg.InvalidCatalogNameError):
            await asyncpg.connect(
                host="127.0.0.1",
                port=standby.config.standby.port,
                user=primary.superuser,
                password=primary.superuser_password,
                database=marker,
                timeout=10,
            )
        await wait_for(lambda: marker in caplog.text, f"{marker} in the standby's log")
        assert 'no pg_hba.conf entry for host "[local]"' not in caplog.text


def test_a_pg_hba_with_local_lines_of_its_own_is_left_alone() -> None:
    own = "local all postgres peer\nhost all all 127.0.0.1/32 md5\n"
    assert configure.render_hba_with_local_rule(own) is None
    added = configure.render_hba_with_local_rule(WINDOWS_HBA)
    assert added is not None and added.endswith(WINDOWS_HBA)
    assert configure.render_hba_with_local_rule(added) is None, "added once only"
