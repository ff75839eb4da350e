"""The pitr: section: off by default, its window follows the dumps' retention, bad values
are reported with the others."""

from __future__ import annotations

import pytest

from laterbased.config import ConfigError, load_config

MINIMAL = {"PRIMARY_HOST": "resolve.local"}


def test_point_in_time_restore_is_off_by_default_with_a_daily_base_backup() -> None:
    config = load_config(None, MINIMAL)
    assert config.pitr.enabled is False
    assert config.pitr.base_backup_schedule == "0 2 * * *"
    assert config.pitr.slot_name == "laterbase_wal_slot"
    assert config.pitr.compression_level == 5


def test_the_window_defaults_to_the_dump_retention_in_days() -> None:
    config = load_config(None, {**MINIMAL, "BACKUP_RETENTION_DAYS": "3"})
    assert config.pitr_window == 3 * 86400.0
    config = load_config(None, {**MINIMAL, "LATERBASED_PITR_WINDOW": "36h"})
    assert config.pitr_window == 36 * 3600.0


def test_the_environment_turns_it_on_with_compression_off() -> None:
    config = load_config(
        None,
        {**MINIMAL, "LATERBASED_PITR_ENABLED": "true", "LATERBASED_PITR_COMPRESSION": "none"},
    )
    assert config.pitr.enabled is True
    assert config.pitr.compression_level == 0


def test_bad_pitr_values_are_all_reported() -> None:
    with pytest.raises(ConfigError) as exc:
        load_config(
            None,
            {
                **MINIMAL,
                "LATERBASED_PITR_COMPRESSION": "max",
                "LATERBASED_PITR_SLOT_NAME": "laterbase_standby_slot",
                "LATERBASED_PITR_WINDOW": "0s",
            },
        )
    text = "\n".join(exc.value.problems)
    assert "pitr.compression" in text
    assert "pitr.slot_name: must differ from standby.slot_name" in text
    assert "pitr.window: must be greater than 0" in text


def test_the_archive_needs_a_primary_even_without_standby_and_dumps() -> None:
    with pytest.raises(ConfigError) as exc:
        load_config(
            None,
            {
                "LATERBASED_STANDBY_ENABLED": "false",
                "LATERBASED_BACKUP_ENABLED": "false",
                "LATERBASED_PITR_ENABLED": "true",
            },
        )
    assert any("required for the point-in-time archive" in p for p in exc.value.problems)
