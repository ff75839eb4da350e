"""pg/ helpers: version parsing, binary discovery, passfile, conninfo, replication slot."""

from __future__ import annotations

import asyncio
import os
import stat
import subprocess
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest
from pgserver import NASTY_PASSWORD, PgServer

from laterbased.config import PrimaryConfig, Secret
from laterbased.errors import RefuseToRun, ToolMissing
from laterbased.pg.binaries import (
    dump_bindir,
    find_bindir,
    major_from_version_num,
    major_from_version_string,
    newest_bindir_at_least,
    reading_bindir,
    tool_version,
)
from laterbased.pg.connect import PgUnavailable, connect, connect_primary
from laterbased.pg.conninfo import build_conninfo, quote_conninfo_value
from laterbased.pg.passfile import passfile_line, write_passfile
from laterbased.pg.slot import ensure_physical_slot
from laterbased.proc import resolve_run_as


@pytest.mark.parametrize(
    ("num", "major"),
    [
        (90524, "9.5"),
        (90600, "9.6"),
        (100023, "10"),
        (130011, "13"),
        (150004, "15"),
        (170000, "17"),
    ],
)
def test_major_from_version_num(num: int, major: str) -> None:
    assert major_from_version_num(num) == major


@pytest.mark.parametrize(
    ("text", "major"),
    [
        ("postgres (PostgreSQL) 15.18 (Debian 15.18-0+deb12u1)", "15"),
        ("pg_dump (PostgreSQL) 9.5.24", "9.5"),
        ("pg_dump (PostgreSQL) 13.11", "13"),
        ("postgres (PostgreSQL) 17devel", "17"),
        ("pg_dump (PostgreSQL) 16beta1", "16"),
    ],
)
def test_major_from_version_string(text: str, major: str) -> None:
    assert major_from_version_string(text) == major


def test_major_from_garbage_is_rejected() -> None:
    with pytest.raises(ValueError):
        major_from_version_num(12)
    with pytest.raises(ValueError):
        major_from_version_string("mysql  Ver 8.0")


def fake_probe(installed: dict[str, str]) -> Callable[[Path, Sequence[str]], str | None]:
    def probe(bindir: Path, tools: Sequence[str]) -> str | None:
        return installed.get(str(bindir))

    return probe


ROOTS = (Path("/usr/lib/postgresql"),)


def test_find_bindir_prefers_the_versioned_debian_dir() -> None:
    probe = fake_probe({"/usr/lib/postgresql/13/bin": "13", "/usr/lib/postgresql/15/bin": "15"})
    found = find_bindir("13", search_roots=ROOTS, probe=probe,
                        pg_config_lookup=lambda _: Path("/usr/lib/postgresql/15/bin"))
    assert found == Path("/usr/lib/postgresql/13/bin")


def test_find_bindir_falls_back_to_pg_config_when_its_major_matches() -> None:
    probe = fake_probe({"/opt/pg13/bin": "13"})
    found = find_bindir("13", search_roots=ROOTS, probe=probe,
                        pg_config_lookup=lambda _: Path("/opt/pg13/bin"))
    assert found == Path("/opt/pg13/bin")


def test_find_bindir_uses_a_configured_dir_of_the_right_major() -> None:
    probe = fake_probe({"/custom/bin": "9.5", "/usr/lib/postgresql/9.5/bin": "9.5"})
    assert find_bindir("9.5", Path("/custom/bin"), probe=probe) == Path("/custom/bin")


def test_find_bindir_refuses_a_configured_dir_of_the_wrong_major() -> None:
    probe = fake_probe({"/custom/bin": "15", "/usr/lib/postgresql/13/bin": "13"})
    with pytest.raises(ToolMissing, match=r"standby.bin_dir=/custom/bin.*PostgreSQL 15, need 13"):
        find_bindir("13", Path("/custom/bin"), probe=probe)


@pytest.mark.parametrize("major", ["9.5", "13"])
def test_find_bindir_missing_major_names_every_place_looked_and_the_fix(major: str) -> None:
    probe = fake_probe({"/usr/lib/postgresql/15/bin": "15"})
    with pytest.raises(ToolMissing) as caught:
        find_bindir(major, search_roots=(Path("/usr/lib/postgresql"), Path("/opt/pg")),
                    probe=probe, pg_config_lookup=lambda _: Path("/usr/lib/postgresql/15/bin"))
    message = str(caught.value)
    assert f"PostgreSQL {major} programs" in message
    assert f"/usr/lib/postgresql/{major}/bin (missing" in message
    assert f"/opt/pg/{major}/bin (missing" in message
    assert "pg_config --bindir → /usr/lib/postgresql/15/bin (is PostgreSQL 15" in message
    assert f"apt-get install postgresql-{major}" in message
    assert "standby.bin_dir" in message


def test_find_bindir_without_pg_config_says_so() -> None:
    with pytest.raises(ToolMissing, match="no pg_config found"):
        find_bindir("13", search_roots=ROOTS, probe=fake_probe({}),
                    pg_config_lookup=lambda _: None)


def test_newest_pg_dump_at_least_refuses_older_and_picks_newest(tmp_path: Path) -> None:
    for major in ("9.5", "13", "15"):
        (tmp_path / major / "bin").mkdir(parents=True)
    probe = fake_probe({str(tmp_path / m / "bin"): m for m in ("9.5", "13", "15")})
    assert newest_bindir_at_least("13", search_roots=(tmp_path,), probe=probe,
                                  pg_config=None) == (tmp_path / "15" / "bin", "15")
    assert newest_bindir_at_least("9.5", search_roots=(tmp_path,), probe=probe,
                                  pg_config=None)[1] == "15"
    with pytest.raises(ToolMissing, match="PostgreSQL 16 or newer"):
        newest_bindir_at_least("16", search_roots=(tmp_path,), probe=probe, pg_config=None)


def test_dump_bindir_prefers_the_servers_major_over_a_newer_one(tmp_path: Path) -> None:
    for major in ("13", "15"):
        (tmp_path / major / "bin").mkdir(parents=True)
    probe = fake_probe({str(tmp_path / m / "bin"): m for m in ("13", "15")})
    assert dump_bindir("13", search_roots=(tmp_path,), probe=probe,
                       pg_config=None) == tmp_path / "13" / "bin"
    assert dump_bindir("9.5", search_roots=(tmp_path,), probe=probe,
                       pg_config=None) == tmp_path / "15" / "bin"


def test_dump_bindir_takes_a_configured_newer_pg_dump_with_the_fix_but_refuses_an_older(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    probe = fake_probe({"/opt/pg15/bin": "15", "/opt/pg9.5/bin": "9.5"})
    found = dump_bindir("13", Path("/opt/pg15/bin"), search_roots=(tmp_path,), probe=probe,
                        pg_config=None)
    assert found == Path("/opt/pg15/bin")
    assert "not readable by Resolve's own restore" in caplog.text
    assert "postgresql-client-13" in caplog.text and "backup.bin_dir" in caplog.text
    with pytest.raises(ToolMissing, match="PostgreSQL 9.5, need 13"):
        dump_bindir("13", Path("/opt/pg9.5/bin"), search_roots=(tmp_path,), probe=probe,
                    pg_config=None)


def installed_under(root: Path, *majors: str) -> Callable[[Path, Sequence[str]], str | None]:
    for major in majors:
        (root / major / "bin").mkdir(parents=True)
    return fake_probe({str(root / m / "bin"): m for m in majors})


def test_reading_bindir_takes_the_servers_major_not_the_newest(tmp_path: Path) -> None:
    probe = installed_under(tmp_path, "13", "15", "17")
    assert reading_bindir("13", search_roots=(tmp_path,), probe=probe, pg_config=None) == (
        tmp_path / "13" / "bin", "13")


def test_reading_bindir_falls_back_to_the_nearest_newer_major_and_says_which(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    probe = installed_under(tmp_path, "15", "16", "17")
    found = reading_bindir("13", search_roots=(tmp_path,), probe=probe, pg_config=None)
    assert found == (tmp_path / "15" / "bin", "15")
    assert "PostgreSQL 15's" in caplog.text and "postgresql-client-13" in caplog.text
    with pytest.raises(ToolMissing, match="PostgreSQL 18 programs"):
        reading_bindir("18", search_roots=(tmp_path,), probe=probe, pg_config=None)


def test_reading_bindir_prefers_the_servers_major_over_a_configured_other_one(
    tmp_path: Path,
) -> None:
    probe = installed_under(tmp_path, "13", "15")
    configured = tmp_path / "15" / "bin"
    assert reading_bindir("13", configured, search_roots=(tmp_path,), probe=probe,
                          pg_config=None) == (tmp_path / "13" / "bin", "13")
    assert reading_bindir("15", configured, search_roots=(tmp_path,), probe=probe,
                          pg_config=None) == (configured, "15")
    # Without 13 installed elsewhere, the configured newer one is the nearest.
    (tmp_path / "other" / "17" / "bin").mkdir(parents=True)
    both = fake_probe({str(configured): "15", str(tmp_path / "other" / "17" / "bin"): "17"})
    assert reading_bindir("13", configured, search_roots=(tmp_path / "other",), probe=both,
                          pg_config=None) == (configured, "15")


def test_reading_bindir_refuses_a_configured_dir_without_the_programs(tmp_path: Path) -> None:
    probe = installed_under(tmp_path, "13")
    with pytest.raises(ToolMissing, match=r"backup.bin_dir=/nowhere: pg_restore, psql there"):
        reading_bindir("13", Path("/nowhere"), search_roots=(tmp_path,), probe=probe,
                       pg_config=None)


def test_find_bindir_with_real_binaries(pg_bindir: Path) -> None:
    major = major_from_version_string(tool_version(pg_bindir / "postgres"))
    assert find_bindir(major, pg_bindir) == pg_bindir
    assert (find_bindir(major, search_roots=(pg_bindir.parent.parent,)) / "postgres").exists()


@pytest.mark.parametrize(
    ("fields", "line"),
    [
        (("db.local", 5432, "*", "postgres", "secret"), "db.local:5432:*:postgres:secret"),
        (("h", "5432", "d", "u", "a:b"), r"h:5432:d:u:a\:b"),
        (("h", 5432, "d", "u", "back\\slash"), r"h:5432:d:u:back\\slash"),
        (("fe80::1", 5432, "d", "u", "p"), r"fe80\:\:1:5432:d:u:p"),
        (("h", 5432, "d", "u", NASTY_PASSWORD), "h:5432:d:u:p@ss w\\\\'o\"rd\\\\\\\\\\:ü"),
    ],
)
def test_passfile_line_escapes_backslash_and_colon(fields: tuple, line: str) -> None:  # type: ignore[type-arg]
    assert passfile_line(*fields) == line


def test_passfile_line_refuses_line_breaks() -> None:
    with pytest.raises(ValueError, match="line break"):
        passfile_line("h", 1, "d", "u", "a\nb")


async def test_write_passfile_is_0600_owned_by_run_as_and_atomic(tmp_path: Path) -> None:
    run_as = resolve_run_as("postgres") if os.geteuid() == 0 else None
    target = tmp_path / "pgpass"
    target.write_text("old\n")
    await write_passfile(target, [passfile_line("h", 1, "*", "u", "p:w")], run_as)
    info = target.stat()
    assert stat.S_IMODE(info.st_mode) == 0o600
    assert info.st_uid == (run_as.uid if run_as else os.geteuid())
    assert target.read_text() == "h:1:*:u:p\\:w\n"
    assert [p.name for p in tmp_path.iterdir()] == ["pgpass"]  # no temp file left


async def test_passfile_written_by_us_is_accepted_by_libpq(
    primary: PgServer, tmp_path: Path
) -> None:
    passfile = tmp_path / "pgpass"
    await write_passfile(
        passfile,
        [passfile_line(primary.host, primary.port, "*", primary.replication_user,
                       primary.replication_password)],
        None,
    )
    argv = [str(primary.bindir / "psql"), "-X", "-At", "-c", "SELECT current_user",
            build_conninfo(host=primary.host, port=primary.port,
                           user=primary.replication_user, dbname="postgres",
                           passfile=str(passfile))]
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    result = subprocess.run(argv, capture_output=True, text=True, env=env, check=False,
                            timeout=30, stdin=subprocess.DEVNULL)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "replicator"


@pytest.mark.parametrize(
    ("value", "quoted"),
    [
        ("db.example.com", "db.example.com"),
        ("5432", "5432"),
        ("", "''"),
        ("has space", "'has space'"),
        ("it's", r"'it\'s'"),
        ("back\\slash", r"'back\\slash'"),
        ("/var/lib/laterbased/pg pass", "'/var/lib/laterbased/pg pass'"),
        ("a=b", "'a=b'"),
        ("ü", "'ü'"),
    ],
)
def test_quote_conninfo_value(value: str, quoted: str) -> None:
    assert quote_conninfo_value(value) == quoted


def test_build_conninfo_skips_none_and_quotes() -> None:
    assert build_conninfo(host="db", port=5432, user="rep", password=None,
                          application_name="laterbased standby") == (
        "host=db port=5432 user=rep application_name='laterbased standby'"
    )
    with pytest.raises(ValueError):
        build_conninfo(**{"bad key": "x"})


@pytest.mark.parametrize("value", ["it's", "back\\slash", "a b=c", NASTY_PASSWORD[:-1]])
def test_conninfo_values_survive_libpqs_parser(primary: PgServer, value: str) -> None:
    conninfo = build_conninfo(host=primary.host, port=primary.port, user=primary.superuser,
                              dbname="postgres", application_name=value)
    argv = [str(primary.bindir / "psql"), "-X", "-A", "-t", "-c", "SHOW application_name",
            conninfo]
    env = {**os.environ, "PGPASSFILE": str(primary.passfile)}
    result = subprocess.run(argv, capture_output=True, text=True, env=env, check=False,
                            timeout=30, stdin=subprocess.DEVNULL)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == value


async def test_ensure_physical_slot_creates_once_and_reserves_wal(primary: PgServer) -> None:
    conn = await connect(**primary.dsn_kwargs(), timeout=10)
    try:
        assert await ensure_physical_slot(conn, "laterbased_test_slot") is True
        row = await conn.fetchrow(
            "SELECT slot_type, restart_lsn FROM pg_replication_slots WHERE slot_name = $1",
            "laterbased_test_slot",
        )
        assert row["slot_type"] == "physical"
        assert row["restart_lsn"] is not None  # immediately_reserve
        assert await ensure_physical_slot(conn, "laterbased_test_slot") is False
        count = await conn.fetchval(
            "SELECT count(*) FROM pg_replication_slots WHERE slot_name = 'laterbased_test_slot'"
        )
        assert count == 1
    finally:
        await conn.execute("SELECT pg_drop_replication_slot('laterbased_test_slot')")
        await conn.close()


@pytest.mark.parametrize("name", ["", "Upper", "has-dash", "x" * 64, "a;drop", "ü"])
async def test_ensure_physical_slot_refuses_invalid_names(primary: PgServer, name: str) -> None:
    conn = await primary.connect()
    try:
        with pytest.raises(RefuseToRun, match="invalid replication slot name"):
            await ensure_physical_slot(conn, name)
    finally:
        await conn.close()


async def test_ensure_physical_slot_refuses_a_logical_slot_of_that_name(
    make_primary: Callable[..., PgServer],
) -> None:
    server = make_primary(wal_level="logical")
    server.sql("SELECT pg_create_logical_replication_slot('laterbased', 'test_decoding')")
    conn = await server.connect()
    try:
        with pytest.raises(RefuseToRun, match="logical slot, not a physical one"):
            await ensure_physical_slot(conn, "laterbased")
    finally:
        await conn.close()


async def test_concurrent_slot_creation_creates_exactly_one(primary: PgServer) -> None:
    conns = [await primary.connect() for _ in range(4)]
    try:
        created = await asyncio.gather(
            *(ensure_physical_slot(c, "laterbased_race") for c in conns)
        )
        assert sorted(created) == [False, False, False, True]
    finally:
        await conns[0].execute("SELECT pg_drop_replication_slot('laterbased_race')")
        for c in conns:
            await c.close()


def primary_config(server: PgServer, sslmode: str) -> PrimaryConfig:
    return PrimaryConfig(
        host=server.host,
        port=server.port,
        user=server.replication_user,
        password=Secret(server.replication_password),
        sslmode=sslmode,  # type: ignore[arg-type]
        connect_timeout=10.0,
    )


@pytest.mark.parametrize("sslmode", ["disable", "allow", "prefer"])
async def test_connect_primary_works_without_ssl_when_sslmode_allows_it(
    primary: PgServer, sslmode: str
) -> None:
    conn = await connect_primary(primary_config(primary, sslmode), application_name="ssl-test")
    try:
        encrypted = await conn.fetchval("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
        assert encrypted is False  # the harness primary has no SSL
        assert await conn.fetchval("SELECT current_setting('application_name')") == "ssl-test"
    finally:
        await conn.close()


async def test_sslmode_require_against_a_server_without_ssl_fails_with_a_clear_message(
    primary: PgServer,
) -> None:
    with pytest.raises(PgUnavailable) as failure:
        await connect_primary(primary_config(primary, "require"), application_name="ssl-test")
    message = str(failure.value)
    assert failure.value.reason == "ssl"
    assert f"port={primary.port}" in message and "sslmode=require" in message
    assert "the server does not offer SSL" in message and "primary.sslmode" in message
    assert primary.replication_password not in message


async def test_sslmode_verify_full_without_a_root_certificate_says_so(
    primary: PgServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.postgresql/root.crt here
    monkeypatch.delenv("PGSSLROOTCERT", raising=False)
    with pytest.raises(PgUnavailable) as failure:
        await connect_primary(primary_config(primary, "verify-full"), application_name="t")
    assert failure.value.reason == "ssl"
    assert "sslmode=verify-full" in str(failure.value) and "root.crt" in str(failure.value)
