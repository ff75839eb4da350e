"""The systemd unit, sysusers and tmpfiles snippets, read by systemd's own tools."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from laterbased.config import StandbyConfig
from laterbased.errors import EXIT_CONFIG

SYSTEMD = Path(__file__).resolve().parents[2] / "systemd"
UNIT = SYSTEMD / "laterbased.service"
INSTALLED_EXEC = "/opt/laterbased/.venv/bin/laterbased"
MAX_EXPOSURE = 3.0

needs_analyze = pytest.mark.skipif(
    shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed"
)


def unit_settings() -> dict[str, list[str]]:
    settings: dict[str, list[str]] = {}
    for line in UNIT.read_text().splitlines():
        if "=" in line and not line.lstrip().startswith(("#", "[")):
            key, _, value = line.partition("=")
            settings.setdefault(key.strip(), []).append(value.strip())
    return settings


@pytest.fixture
def checkable_unit(tmp_path: Path) -> Path:
    """The unit with ExecStart pointing at this checkout's ``laterbased`` (verify insists
    the binary exists; the shipped unit names the documented install path)."""
    text = UNIT.read_text()
    assert INSTALLED_EXEC in text
    executable = Path(sys.executable).parent / "laterbased"
    assert executable.exists(), f"{executable} missing: pip install -e . first"
    copy = tmp_path / "laterbased.service"
    copy.write_text(text.replace(INSTALLED_EXEC, str(executable)))
    return copy


@needs_analyze
def test_systemd_analyze_verify_accepts_the_unit_without_warnings(checkable_unit: Path) -> None:
    result = subprocess.run(
        ["systemd-analyze", "verify", str(checkable_unit)],
        capture_output=True, text=True, timeout=60, check=False,
    )
    complaints = [line for line in result.stderr.splitlines() if "laterbased" in line]
    assert result.returncode == 0, result.stderr
    assert complaints == [], "\n".join(complaints)


@needs_analyze
def test_security_exposure_is_at_most_3(checkable_unit: Path) -> None:
    result = subprocess.run(
        ["systemd-analyze", "security", "--offline=yes", "--no-pager", str(checkable_unit)],
        capture_output=True, text=True, timeout=60, check=False,
    )
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", result.stdout + result.stderr)
    assert match, f"no exposure level in output:\n{result.stdout}\n{result.stderr}"
    exposure = float(match.group(1))
    # docs/deployment.md quotes this number: keep them in step.
    readme = (SYSTEMD.parent / "docs" / "deployment.md").read_text()
    assert f"exposure {exposure:.1f}" in readme, (
        f"docs/deployment.md should state exposure {exposure:.1f}"
    )
    assert exposure <= MAX_EXPOSURE


def test_unit_is_notify_with_watchdog_reload_and_no_restart_on_bad_config() -> None:
    settings = unit_settings()
    assert settings["Type"] == ["notify"]
    assert settings["ExecReload"] == ["/bin/kill -HUP $MAINPID"]
    assert settings["KillMode"] == ["mixed"]
    assert settings["Restart"] == ["on-failure"]
    assert settings["RestartPreventExitStatus"] == [str(EXIT_CONFIG)]
    assert settings["User"] == ["laterbased"]
    assert settings["UMask"] == ["0077"]
    assert settings["ProtectSystem"] == ["strict"]
    assert "/var/lib/laterbased" in settings["ReadWritePaths"][0].split()
    assert settings["CapabilityBoundingSet"] == [""]
    assert int(settings["WatchdogSec"][0].rstrip("s")) >= 10
    # systemd must give the daemon time to stop postgres itself before SIGKILL.
    stop = int(settings["TimeoutStopSec"][0].rstrip("s"))
    assert stop > StandbyConfig().stop_timeout + 60


def _run(argv: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)


@pytest.mark.skipif(
    shutil.which("systemd-sysusers") is None or shutil.which("systemd-tmpfiles") is None,
    reason="systemd-sysusers/systemd-tmpfiles not installed",
)
def test_sysusers_and_tmpfiles_create_a_private_user_and_directories(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    made = _run(
        ["systemd-sysusers", f"--root={root}", str(SYSTEMD / "sysusers.d" / "laterbased.conf")]
    )
    assert made.returncode == 0, made.stderr
    passwd = (root / "etc" / "passwd").read_text()
    entry = next(line for line in passwd.splitlines() if line.startswith("laterbased:"))
    name, _, uid, gid, _, home, shell = entry.split(":")
    assert int(uid) > 0 and home == "/var/lib/laterbased" and shell.endswith("nologin")
    dirs = _run(
        ["systemd-tmpfiles", f"--root={root}", "--create",
         str(SYSTEMD / "tmpfiles.d" / "laterbased.conf")]
    )
    assert dirs.returncode == 0, dirs.stderr
    for path in ("var/lib/laterbased", "var/lib/laterbased/backups"):
        info = (root / path).stat()
        assert info.st_uid == int(uid), path
        assert info.st_mode & 0o777 == 0o700, path
    config_dir = (root / "etc" / "laterbased").stat()
    assert config_dir.st_uid == 0 and config_dir.st_gid == int(gid)
    assert config_dir.st_mode & 0o777 == 0o750
