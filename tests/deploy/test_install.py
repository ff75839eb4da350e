"""scripts/install, the production install (issue 19): laterbased in its own venv and the
PostgreSQL binaries of the Resolve server's major only; none of the developer tools
scripts/setup brings (Chromium, Prometheus, Docker)."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
INSTALL = ROOT / "scripts" / "install"
DEVELOPER_TOOLS = ("chromium", "prometheus", "docker", "debootstrap", "pytest", "[test]")


def codename() -> str:
    for line in Path("/etc/os-release").read_text().splitlines():
        if line.startswith("VERSION_CODENAME="):
            return line.split("=", 1)[1].strip('"')
    return ""


def plan(*args: str) -> subprocess.CompletedProcess[str]:
    """What the script would do on a machine with nothing installed (--dry-run)."""
    return subprocess.run(
        [str(INSTALL), "--dry-run", *args],
        env={**os.environ, "LATERBASED_INSTALL_ASSUME_MISSING": "1"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.mark.skipif(codename() != "bookworm", reason="the plan checked is Debian 12's")
def test_the_plan_installs_the_resolve_servers_major_only() -> None:
    thirteen = plan("--major", "13")
    assert thirteen.returncode == 0, thirteen.stderr
    [apt_line] = [line for line in thirteen.stdout.splitlines() if "apt-get install" in line]
    assert apt_line.split()[-3:] == ["postgresql-13", "postgresql-client-13", "python3-venv"]
    # 13 is not bookworm's own: from bullseye, pinned, with no cluster of its own on 5432.
    assert "laterbased-bullseye.sources and its pin (100)" in thirteen.stdout
    assert "create_main_cluster = false" in thirteen.stdout
    assert "/opt/laterbased/.venv/bin/pip install" in thirteen.stdout
    assert "/etc/systemd/system/laterbased.service" in thirteen.stdout
    fifteen = plan("--major", "15")
    assert fifteen.returncode == 0, fifteen.stderr
    assert "postgresql-15 postgresql-client-15" in fifteen.stdout
    assert "bullseye" not in fifteen.stdout
    for output in (thirteen.stdout, fifteen.stdout):
        assert not [tool for tool in DEVELOPER_TOOLS if tool in output], output
    missing = plan()
    assert missing.returncode == 2 and "--major 13" in missing.stderr


@pytest.fixture
def prefix() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="laterbased-install-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.mark.slow
def test_install_gives_a_working_laterbased_command_without_the_test_tools(
    pg_major: int, prefix: Path
) -> None:
    done = subprocess.run(
        [
            str(INSTALL), "--major", str(pg_major), "--prefix", str(prefix),
            "--bin-dir", str(prefix / "bin"), "--no-systemd", "--without-rclone",
        ],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    # This machine has the binaries of that major: nothing for apt to do.
    assert f"PostgreSQL {pg_major} binaries already in" in done.stdout
    version = subprocess.run(
        [str(prefix / "bin" / "laterbased"), "--version"],
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert version.returncode == 0 and version.stdout.startswith("laterbased "), version
    installed = subprocess.run(
        [str(prefix / ".venv" / "bin" / "pip"), "list", "--format=freeze"],
        capture_output=True, text=True, timeout=120, check=True,
    ).stdout.lower()
    assert "laterbased==" in installed and "asyncpg==" in installed
    assert "pytest" not in installed, "the test tools are scripts/setup's, not production's"
