"""``backup.source``: ``auto`` by default (the legacy ``.env`` setup has no such key), settable
from YAML and the environment, anything else refused with the choices."""

from __future__ import annotations

from pathlib import Path

import pytest

from laterbased.config import ConfigError, load_config

MINIMAL = {"PRIMARY_HOST": "resolve.local"}


def test_the_default_source_is_auto_also_for_a_legacy_env_setup() -> None:
    legacy = MINIMAL | {"REPL_PASSWORD": "pw", "LOCAL_BACKUP_PATH": "/srv/backups"}
    assert load_config(None, legacy).backup.source == "auto"


@pytest.mark.parametrize("source", ["auto", "primary", "standby"])
def test_source_is_read_from_yaml_and_the_environment(tmp_path: Path, source: str) -> None:
    path = tmp_path / "laterbased.yaml"
    path.write_text(f"primary:\n  host: resolve.local\nbackup:\n  source: {source}\n")
    assert load_config(path, {}).backup.source == source
    assert load_config(None, MINIMAL | {"LATERBASED_BACKUP_SOURCE": source}).backup.source == (
        source
    )


def test_an_unknown_source_is_refused_naming_the_choices() -> None:
    with pytest.raises(ConfigError) as exc:
        load_config(None, MINIMAL | {"LATERBASED_BACKUP_SOURCE": "replica"})
    text = "\n".join(exc.value.problems)
    assert "backup.source" in text and "auto" in text, text
