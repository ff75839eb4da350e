"""pgadmin-servers: servers.json structure, the passfile, and loading it into real pgAdmin 4."""

from __future__ import annotations

import json
import os
import stat
import subprocess
from pathlib import Path

import pytest

from laterbased import cli
from laterbased.config import load_config
from laterbased.ops.pgadmin.servers import servers_document

PASSWORD = "se:cr\\et pw"
PGADMIN_VENV = Path(os.environ.get("LATERBASED_TEST_PGADMIN_VENV", "/tmp/pgadmin-venv"))
PGADMIN_SETUP = PGADMIN_VENV / "lib/python3.11/site-packages/pgadmin4/setup.py"


def write_env(tmp_path: Path) -> Path:
    env_file = tmp_path / ".env"
    env_file.write_text(
        "PRIMARY_HOST=resolve.example\nPRIMARY_PORT=5432\nPRIMARY_USER=postgres\n"
        f"REPL_PASSWORD='{PASSWORD}'\nLATERBASED_STANDBY_PORT=5433\n"
    )
    return env_file


def test_document_lists_primary_and_standby_in_laterbase_group_without_password() -> None:
    config = load_config(
        None,
        {
            "PRIMARY_HOST": "10.0.0.5",
            "REPL_PASSWORD": PASSWORD,
            "LATERBASED_PRIMARY_SSLMODE": "require",
        },
    )
    document = servers_document(config)
    servers = document["Servers"]
    assert set(servers) == {"1", "2"}
    primary, standby = servers["1"], servers["2"]
    assert primary["Group"] == standby["Group"] == "Laterbase"
    assert (primary["Host"], primary["Port"]) == ("10.0.0.5", 5432)
    assert (standby["Host"], standby["Port"]) == ("127.0.0.1", 5433)
    assert primary["MaintenanceDB"] == "postgres" and primary["Username"] == "postgres"
    assert primary["ConnectionParameters"]["sslmode"] == "require"
    assert isinstance(primary["Port"], int)
    assert "passfile" not in primary["ConnectionParameters"]
    assert PASSWORD not in json.dumps(document)


def test_standby_disabled_lists_only_the_primary() -> None:
    config = load_config(None, {"PRIMARY_HOST": "h", "LATERBASED_STANDBY_ENABLED": "false"})
    assert set(servers_document(config)["Servers"]) == {"1"}


def test_cli_writes_servers_json_and_a_private_passfile(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "servers.json"
    passfile = tmp_path / "pgpass"
    code = cli.main(
        [
            "pgadmin-servers",
            "--env-file",
            str(write_env(tmp_path)),
            "-o",
            str(out),
            "--with-passfile",
            str(passfile),
            "--passfile-ref",
            "/pgpass",
        ]
    )
    assert code == 0
    text = out.read_text()
    assert PASSWORD not in text + capsys.readouterr().out
    document = json.loads(text)
    assert {s["ConnectionParameters"]["passfile"] for s in document["Servers"].values()} == {
        "/pgpass"
    }
    assert stat.S_IMODE(passfile.stat().st_mode) == 0o600
    assert passfile.read_text().splitlines() == [
        r"resolve.example:5432:*:postgres:se\:cr\\et pw",
        r"127.0.0.1:5433:*:postgres:se\:cr\\et pw",
    ]


@pytest.mark.slow
@pytest.mark.skipif(
    not PGADMIN_SETUP.exists(),
    reason=f"real pgAdmin 4 not installed in {PGADMIN_VENV}: run bash scripts/pgadmin-venv",
)
def test_real_pgadmin_loads_the_file_and_dumps_the_same_servers(tmp_path: Path) -> None:
    servers_json = tmp_path / "servers.json"
    assert (
        cli.main(
            [
                "pgadmin-servers",
                "--env-file",
                str(write_env(tmp_path)),
                "-o",
                str(servers_json),
                "--with-passfile",
                str(tmp_path / "pgpass"),
            ]
        )
        == 0
    )
    data_dir = tmp_path / "pgadmin"
    data_dir.mkdir()
    distro = tmp_path / "pgadmin_config.py"
    paths = {
        "DATA_DIR": data_dir,
        "LOG_FILE": data_dir / "pgadmin4.log",
        "SQLITE_PATH": data_dir / "pgadmin4.db",
        "SESSION_DB_PATH": data_dir / "sessions",
        "STORAGE_DIR": data_dir / "storage",
        "KERBEROS_CCACHE_DIR": data_dir / "krb",
        "AZURE_CREDENTIAL_CACHE_DIR": data_dir / "azure",
    }
    distro.write_text(
        "SERVER_MODE = False\n"
        + "".join(f"{key} = {str(value)!r}\n" for key, value in paths.items())
    )
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "CONFIG_DISTRO_FILE_PATH": str(distro)}

    def setup(*args: str) -> str:
        done = subprocess.run(
            [str(PGADMIN_VENV / "bin/python"), str(PGADMIN_SETUP), *args],
            capture_output=True,
            text=True,
            env=env,
            cwd=tmp_path,
            timeout=240,
            check=False,
        )
        assert done.returncode == 0, done.stdout + done.stderr
        return done.stdout + done.stderr

    setup("setup-db")
    output = setup("load-servers", str(servers_json))
    assert "Added 1 Server Group(s) and 2 Server(s)." in output, output
    dumped_file = tmp_path / "dumped.json"
    setup("dump-servers", str(dumped_file))
    dumped = json.loads(dumped_file.read_text())["Servers"]
    ours = json.loads(servers_json.read_text())["Servers"]
    assert len(dumped) == 2
    for mine, theirs in zip(
        sorted(ours.values(), key=lambda s: s["Name"]),
        sorted(dumped.values(), key=lambda s: s["Name"]),
        strict=True,
    ):
        for key in ("Name", "Group", "Host", "Port", "MaintenanceDB", "Username"):
            assert theirs[key] == mine[key]
        assert theirs["ConnectionParameters"] == mine["ConnectionParameters"]
