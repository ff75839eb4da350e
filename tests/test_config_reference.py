"""docs/configuration.md is generated from the configuration itself (issue 19): every key,
its environment names, type and default; the committed file must be what
scripts/config-reference writes now, so the reference cannot drift from the code."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

from laterbased.config import SECTIONS, Config, load_config
from laterbased.config.reference import env_names, render_reference

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "configuration.md"
EXAMPLE = ROOT / "config" / "laterbased.example.yaml"


def test_the_committed_reference_is_the_generated_one() -> None:
    generated = render_reference(EXAMPLE.read_text("utf-8"))
    assert DOC.read_text("utf-8") == generated, (
        "docs/configuration.md is out of date: run scripts/config-reference"
    )
    check = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "config-reference"), "--check"],
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert check.returncode == 0, check.stderr


def test_every_key_is_in_the_reference_with_an_environment_name_that_sets_it() -> None:
    text = DOC.read_text("utf-8")
    for top in dataclasses.fields(Config):
        section = SECTIONS.get(top.name)
        leaves = (
            [(top.name, f.name) for f in dataclasses.fields(section)
             if not f.metadata.get("internal")]
            if section is not None
            else [(top.name,)]
        )
        for path in leaves:
            key = ".".join(path)
            [row] = [line for line in text.splitlines() if line.startswith(f"| `{key}`")]
            names = env_names(path, False)
            assert f"`{names[0]}`" in row, row
    # The names are the ones load_config reads: e.g. the state directory and standby port.
    for name, value, check in (
        ("LATERBASED_STATE_DIR", "/srv/laterbased", lambda c: str(c.state_dir)),
        ("LATERBASED_STANDBY_PORT", "6543", lambda c: str(c.standby.port)),
        ("LATERBASED_BACKUP_STANDBY_WAIT", "2m", lambda c: str(int(c.backup.standby_wait))),
    ):
        assert f"`{name}`" in text
        config = load_config(None, {"PRIMARY_HOST": "resolve.local", name: value})
        assert check(config) == {"2m": "120"}.get(value, value), name
