"""rclone's output at the log level it deserves: its stats lines at DEBUG (at INFO now and then
during a long transfer), its errors as warnings, an expected absence quiet. Real rclone."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest

from laterbased.config import load_config
from laterbased.offsite import rclone as rclone_module
from laterbased.offsite.rclone import Rclone, RcloneFailed, RcloneLog


def local_upload_config(dest: Path) -> Any:
    env = {
        "PRIMARY_HOST": "resolve.local",
        "HOME": "/nonexistent-home",
        "RCLONE_REMOTE_NAME": "offsite",
        "RCLONE_REMOTE_PATH": str(dest),
        "RCLONE_REMOTE_1_NAME": "offsite",
        "RCLONE_REMOTE_1_TYPE": "local",
        "LATERBASED_UPLOAD_RETRIES": "0",
    }
    return load_config(None, env)


async def test_rclone_stats_lines_are_debug_and_its_errors_warnings(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    config = local_upload_config(tmp_path / "remote")
    rclone = await Rclone.open(config.upload)
    source = tmp_path / "one.dump"
    source.write_bytes(b"x" * 1000)
    assert await rclone.lsjson(rclone.target("nowhere")) == []  # absent: an answer
    await rclone.copyto(source, rclone.target("db", "one.dump"))
    assert [e.name for e in await rclone.lsjson(rclone.target("db"))] == ["one.dump"]
    with pytest.raises(RcloneFailed):
        await rclone.copyto(tmp_path / "missing.dump", rclone.target("db", "missing.dump"))

    rclone_records = [r for r in caplog.records if r.name == "laterbased.offsite.rclone"]
    stats = [r for r in rclone_records if " B / " in r.getMessage() and "ETA" in r.getMessage()]
    assert len(stats) >= 4, "every rclone call prints a stats line (at DEBUG)"
    assert {r.levelno for r in stats} == {logging.DEBUG}
    loud = [r.getMessage() for r in rclone_records if r.levelno >= logging.INFO]
    # The expected absence (lsjson of a missing folder) is not a warning; the failed copy is.
    assert loud and all("rclone copyto:" in message for message in loud), loud
    assert any("ERROR" in m and "not found" in m for m in loud), loud
    assert all(
        r.levelno == logging.WARNING for r in rclone_records if r.levelno >= logging.INFO
    )
    # Nothing of rclone's reaches INFO through the generic child logger any more.
    generic = [r for r in caplog.records if r.name == "laterbased.proc"]
    assert not [r for r in generic if "NOTICE" in r.getMessage()]


@pytest.mark.parametrize(
    ("line", "level"),
    [
        ("2026/11/26 13:18:50 NOTICE:           0 B / 0 B, -, 0 B/s, ETA -", logging.DEBUG),
        ("2026/11/26 13:18:50 NOTICE:   1.500 GiB / 10 GiB, 15%, 10 MiB/s, ETA 14m", logging.DEBUG),
        ('2026/11/26 13:18:50 NOTICE: Config file "/x/rclone.conf" not found - using defaults',
         logging.DEBUG),
        ("2026/11/26 13:18:50 ERROR : db/x.dump: Failed to copy: 403 Forbidden", logging.WARNING),
        ("2026/11/26 13:18:50 NOTICE: Failed to copyto: directory not found", logging.WARNING),
        ('2026/11/26 13:18:50 CRITICAL: Failed to create file system for "x:"', logging.ERROR),
        ("2026/11/26 13:18:50 NOTICE: S3 bucket b: Switched region to eu-west-1", logging.INFO),
        ("2026/11/26 13:18:50 DEBUG : rclone: Version v1.75.2", logging.DEBUG),
        ("panic: runtime error", logging.INFO),
    ],
)
def test_rclone_line_levels(line: str, level: int) -> None:
    assert RcloneLog("copyto").level(line) == level


def test_a_long_transfer_reports_its_progress_at_info(monkeypatch: pytest.MonkeyPatch) -> None:
    log = RcloneLog("copyto")
    stats = "2026/11/26 13:18:50 NOTICE:   1.500 GiB / 10 GiB, 15%, 10 MiB/s, ETA 14m"
    assert log.level(stats) == logging.DEBUG
    log.started -= rclone_module.STATS_AT_INFO_AFTER
    assert log.level(stats) == logging.INFO
    absent = "2026/11/26 13:18:50 ERROR : error listing: directory not found"
    assert RcloneLog("lsjson", absent_ok=True).level(absent) == logging.DEBUG
    assert RcloneLog("copyto").level(absent) == logging.WARNING
