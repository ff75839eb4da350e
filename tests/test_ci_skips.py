"""Skips cannot hide in CI: under CI=true a skipped test fails the run unless it is on the
reasoned allow-list in tests/conftest.py (CI_ALLOWED_SKIPS)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from conftest import CI_ALLOWED_SKIPS

ROOT = Path(__file__).resolve().parent.parent
# A test that skips when its tool is missing: pointed at a pgAdmin that is not there.
SKIPPING = "tests/ops/test_pgadmin.py::test_real_pgadmin_loads_the_file_and_dumps_the_same_servers"


def run_skipping_test(tmp_path: Path, ci: str | None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    env["LATERBASED_TEST_PGADMIN_VENV"] = str(tmp_path / "no-pgadmin-here")
    if ci is not None:
        env["CI"] = ci
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-n", "0", "-q", "-rs", "-p", "no:cacheprovider",
         SKIPPING],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120, check=False,
    )


def test_a_skip_outside_ci_stays_a_skip(tmp_path: Path) -> None:
    done = run_skipping_test(tmp_path, None)
    assert done.returncode == 0, done.stdout
    assert "1 skipped" in done.stdout


def test_a_skip_under_ci_fails_the_run_with_its_reason(tmp_path: Path) -> None:
    done = run_skipping_test(tmp_path, "true")
    assert done.returncode == 1, done.stdout
    assert "skipped under CI=true" in done.stdout
    assert "real pgAdmin 4 not installed" in done.stdout
    assert "CI_ALLOWED_SKIPS" in done.stdout


def test_every_allowed_skip_names_a_real_test_and_gives_a_reason() -> None:
    for test_id, reason in CI_ALLOWED_SKIPS.items():
        path, name = test_id.split("::")
        assert f"def {name}(" in (ROOT / path).read_text(), test_id
        assert len(reason) > 20, f"{test_id}: say why CI may lack what it needs"
