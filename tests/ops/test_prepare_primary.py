"""prepare-primary against real, fresh primaries (no slot, no laterbased role)."""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from pgserver import NASTY_PASSWORD, PgServer
from prepare_support import ROLE, SLOT, config_for, options_for
from streaming_standby import StreamingStandby

from laterbased import cli
from laterbased.backup.dump import run_dumps
from laterbased.config import load_config
from laterbased.ops.prepare_primary.steps import hba_line_for, prepare_primary
from laterbased.pg.role_password import scram_sha256_verifier
from laterbased.records.catalogue import Catalogue

pytestmark = pytest.mark.slow

def server_facts(server: PgServer) -> tuple[str, str, str]:
    roles = server.sql(f"SELECT count(*) FROM pg_roles WHERE rolname = '{ROLE}'")  # noqa: S608
    slots = server.sql("SELECT string_agg(slot_name, ',') FROM pg_replication_slots")
    auto_conf = (server.data_dir / "postgresql.auto.conf").read_text()
    return roles, slots, auto_conf


LIBRARY = "Resolve Library ü"


@pytest.fixture
def fresh(make_primary: Callable[..., PgServer]) -> PgServer:
    """A new server with one Resolve-like library owned by the superuser, as Resolve's
    installer leaves it: tables, a sequence and a large object."""
    server = make_primary()
    server.create_database(LIBRARY)
    server.sql(
        'CREATE TABLE "SM_Project" (id serial PRIMARY KEY, name text); '
        "INSERT INTO \"SM_Project\" (name) VALUES ('one'), ('two'); "
        "SELECT lo_from_bytea(0, 'thumbnail bytes')",
        LIBRARY,
    )
    return server


@pytest.fixture
def replicas() -> Iterator[list[StreamingStandby]]:
    made: list[StreamingStandby] = []
    yield made
    for replica in made:
        replica.cleanup()


def statuses(report: object) -> dict[str, str]:
    return {step.name: step.status for step in report.steps}  # type: ignore[attr-defined]


async def test_dry_run_changes_nothing_and_lists_what_is_missing(fresh: PgServer) -> None:
    before = server_facts(fresh)
    report = await prepare_primary(config_for(fresh), options_for(fresh, dry_run=True, apply=True))
    assert server_facts(fresh) == before
    found = statuses(report)
    assert found["role"] == "would-change"
    assert found["slot"] == "would-change"
    assert found["max_slot_wal_keep_size"] == "would-change"
    assert found["reload"] == "would-change"
    # The role does not exist yet, so the replication test fails: not ready.
    assert not report.ready
    assert [step.name for step in report.missing] == ["replication connection"]


async def test_prepare_makes_fresh_primary_ready_and_a_standby_streams(
    fresh: PgServer, replicas: list[StreamingStandby]
) -> None:
    report = await prepare_primary(config_for(fresh), options_for(fresh, apply=True))
    assert report.ready, report.as_dict()
    found = statuses(report)
    assert found["role"] == "changed"
    assert found["slot"] == "changed"
    assert found["backup access"] == "changed", [
        step for step in report.steps if step.name == "backup access"
    ]
    assert found["max_slot_wal_keep_size"] == "changed"
    assert found["replication connection"] == "ok"
    assert fresh.sql("SHOW max_slot_wal_keep_size") == "10GB"
    assert (
        fresh.sql(
            f"SELECT rolcanlogin AND rolreplication FROM pg_roles WHERE rolname = '{ROLE}'"  # noqa: S608
        )
        == "t"
    )
    # The clear-text password never reached the server: it stored our SCRAM verifier.
    assert (
        fresh.sql(
            "SELECT rolpassword LIKE 'SCRAM-SHA-256$4096:%' FROM pg_authid "  # noqa: S608
            f"WHERE rolname = '{ROLE}'"
        )
        == "t"
    )
    assert report.hba_line == f"host    replication    {ROLE}    127.0.0.1/32    scram-sha-256"
    assert report.hba_file == str(fresh.data_dir / "pg_hba.conf")
    # The role is what the daemon dumps with: a real dump as that role must read everything
    # (on 13 there is no pg_read_all_data: the grants are per library).
    backups = Path(tempfile.mkdtemp(prefix="laterbased-prepare-dump-"))
    try:
        config = load_config(
            None,
            {
                "PRIMARY_HOST": fresh.host,
                "PRIMARY_PORT": str(fresh.port),
                "PRIMARY_USER": ROLE,
                "REPL_PASSWORD": NASTY_PASSWORD,
                "PRIMARY_DB": LIBRARY,
                "LOCAL_BACKUP_PATH": str(backups),
                # Not the default /var/lib/laterbased: the accepted primary identity written
                # there made every later run of this test refuse its new server.
                "LATERBASED_STATE_DIR": str(backups / "state"),
            },
        )
        [dumped] = await run_dumps(config, Catalogue(backups), "prepare-dump")
        assert dumped.result == "success", f"the role cannot dump the library: {dumped.detail}"
    finally:
        shutil.rmtree(backups, ignore_errors=True)

    replica = StreamingStandby(fresh, SLOT, user=ROLE, password=NASTY_PASSWORD)
    replicas.append(replica)
    done = replica.basebackup()
    assert done.returncode == 0, done.stderr
    replica.start(until_streaming=True)

    # Twice: nothing changes any more.
    before = server_facts(fresh)
    again = await prepare_primary(config_for(fresh), options_for(fresh, apply=True))
    assert again.ready
    assert [s for s in again.steps if s.status in ("changed", "would-change")] == []
    assert server_facts(fresh) == before


async def test_missing_pg_hba_line_is_reported_with_the_exact_line_that_fixes_it(
    fresh: PgServer,
) -> None:
    hba = fresh.data_dir / "pg_hba.conf"
    hba.write_text(
        "local all all trust\nlocal replication all trust\n"
        "host all all 127.0.0.1/32 scram-sha-256\n"
    )
    fresh.reload()
    report = await prepare_primary(config_for(fresh), options_for(fresh))
    # The pg_hba.conf line is MISSING too, not "ok" (issue 19): the connection decides.
    assert [step.name for step in report.missing] == ["pg_hba.conf", "replication connection"]
    step = report.missing[1]
    assert "pg_hba" in step.message
    assert report.hba_line is not None and report.hba_line in step.hint
    assert report.hba_line in report.missing[0].hint
    fresh.append_hba(report.hba_line)
    again = await prepare_primary(config_for(fresh), options_for(fresh))
    assert again.ready, again.as_dict()


async def test_unsuitable_settings_are_missing_with_the_setting_to_change(
    make_primary: Callable[..., PgServer],
) -> None:
    server = make_primary(wal_level="minimal", max_wal_senders=0)
    report = await prepare_primary(config_for(server), options_for(server))
    found = {step.name: step for step in report.steps}
    assert found["wal_level"].status == "missing"
    assert "ALTER SYSTEM SET wal_level = 'replica'" in found["wal_level"].hint
    assert "restart" in found["wal_level"].hint
    assert found["max_wal_senders"].status == "missing"
    assert not report.ready


def test_cli_json_exit_code_and_no_password_in_output(
    fresh: PgServer,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    env_file = tmp_path / ".env"
    env_file.write_text(
        f"PRIMARY_HOST={fresh.host}\nPRIMARY_PORT={fresh.port}\nPRIMARY_USER=postgres\n"
        f"REPL_PASSWORD={fresh.superuser_password}\n"
    )
    monkeypatch.delenv("PGPASSWORD", raising=False)
    code = cli.main(["prepare-primary", "--env-file", str(env_file), "--json", "--dry-run"])
    out = capsys.readouterr()
    data = json.loads(out.out)
    # postgres exists with REPLICATION; only the slot would be created in a dry run.
    assert data["missing"] == []
    assert code == 0
    assert {s["name"]: s["status"] for s in data["steps"]}["slot"] == "would-change"
    assert fresh.superuser_password not in out.out + out.err
    code = cli.main(["prepare-primary", "--env-file", str(env_file)])
    out = capsys.readouterr()
    assert code == 0
    assert "READY" in out.out and "pg_hba.conf line" in out.out


def test_hba_line_quotes_unusual_role_names_and_uses_ipv6_prefix() -> None:
    assert hba_line_for("Repl User", "::1", "md5") == (
        'host    replication    "Repl User"    ::1/128    md5'
    )
    assert hba_line_for("postgres", None, "md5") == "local   replication   postgres   md5"


def test_scram_verifier_matches_postgresql_format() -> None:
    verifier = scram_sha256_verifier("pencil", salt=b"0123456789abcdef")
    assert verifier.startswith("SCRAM-SHA-256$4096:MDEyMzQ1Njc4OWFiY2RlZg==$")
