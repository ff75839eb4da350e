"""/status.json tells the window a restore to a moment can reach, and health's pitr check says
when the archive is not streaming or a WAL segment is missing (the window is broken)."""

from __future__ import annotations

import asyncio
import re
import shutil
import signal
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from daemon_process import DaemonProcess, minimal_config, primary_section, write_config
from pgserver import PgServer

from laterbased.config import load_config
from laterbased.core.state import SlotState, State
from laterbased.health.metrics import build_registry, render
from laterbased.health.verdicts import check_pitr
from laterbased.records import wal_archive

pytestmark = pytest.mark.slow

ISO_UTC = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z$")


async def get_json(daemon: DaemonProcess, path: str) -> dict[str, Any]:
    async with aiohttp.ClientSession() as session, session.get(f"{daemon.url}{path}") as response:
        document: dict[str, Any] = await response.json()
        return document


async def pitr_check(daemon: DaemonProcess) -> dict[str, Any]:
    health = await get_json(daemon, "/healthz")
    return next(check for check in health["checks"] if check["name"] == "pitr")


async def eventually(probe: Callable[[], Any], what: str, timeout: float = 60.0) -> Any:
    try:
        async with asyncio.timeout(timeout):
            while True:
                result = await probe()
                if result:
                    return result
                await asyncio.sleep(0.2)
    except TimeoutError:
        raise AssertionError(f"not within {timeout}s: {what}") from None


async def test_status_shows_the_window_and_a_missing_segment_breaks_it_in_health(
    make_primary: Callable[..., PgServer], tmp_path: Path, state_dir: Path
) -> None:
    server = make_primary()
    backups = tmp_path / "backups"
    data = minimal_config(
        tmp_path,
        primary=primary_section(server, superuser=True),
        backup={"enabled": False, "directory": str(backups)},
        pitr={"enabled": True},
        state_dir=str(state_dir),
    )
    daemon = await DaemonProcess.start(
        write_config(tmp_path / "laterbased.yaml", data), data["http"]["port"]
    )
    try:
        await daemon.wait_http()

        async def window() -> dict[str, Any] | None:
            pitr: dict[str, Any] = (await get_json(daemon, "/status.json"))["pitr"]
            return pitr if pitr["earliest"] and pitr["latest"] else None

        pitr = await eventually(window, "a restorable window in /status.json")
        assert ISO_UTC.match(pitr["earliest"]) and ISO_UTC.match(pitr["latest"]), pitr
        assert pitr["earliest"] <= pitr["latest"]
        check = await pitr_check(daemon)
        assert check["severity"] == "ok" and "restorable from" in check["reason"], check
        async with aiohttp.ClientSession() as session, session.get(
            f"{daemon.url}/status"
        ) as response:
            page = await response.text()
        shown = re.search(r"<span id=pitr-window>(.*?)</span> to ", page)
        assert shown is not None and "Undo window" in page, page

        # Three more complete segments, then the middle one goes missing.
        for step in range(3):
            server.sql(f"CREATE TABLE t{step} (id int); SELECT pg_switch_wal()")
        wal = backups / wal_archive.WAL_DIR

        def complete() -> list[Path]:
            return sorted(p for p in wal.iterdir() if p.name.endswith(".gz"))

        async def enough() -> bool:
            return len(complete()) >= 4

        await eventually(enough, "complete segments in the archive")
        missing = complete()[-2]
        missing.unlink()

        async def broken() -> dict[str, Any] | None:
            check = await pitr_check(daemon)
            return check if check["severity"] == "critical" else None

        check = await eventually(broken, "the pitr check turns critical")
        assert "the window is broken since" in check["reason"], check
        assert missing.name.removesuffix(".gz") in check["reason"], check
        health = await get_json(daemon, "/healthz")
        assert "pitr" in health["failing"]
        pitr = (await get_json(daemon, "/status.json"))["pitr"]
        assert pitr["earliest"] is None, "no base backup after the gap: nothing restorable"
        # Before the gap stays restorable: from the base backup to the last segment before it.
        assert len(pitr["ranges"]) == 1 and pitr["ranges"][0]["latest"], pitr
        assert "(nothing after the gap until the next base backup)" in check["reason"]
    finally:
        daemon.send(signal.SIGTERM)
        await daemon.wait_exit(30)
        await daemon.stop()


def pure_state(**archive: Any) -> State:
    state = State(
        config=load_config(
            None, {"PRIMARY_HOST": "resolve.local", "LATERBASED_PITR_ENABLED": "true"}
        )
    )
    for name, value in archive.items():
        setattr(state.archive, name, value)
    return state


@pytest.mark.parametrize(
    ("archive", "severity", "words"),
    [
        ({"phase": "restarting", "message": "pg_receivewal killed"}, "warning", "not streaming"),
        ({"phase": "restarting", "failed_starts": 3, "message": "could not start"}, "critical",
         "could not start"),
        # Many restarts over time, each after a good run: still a hiccup.
        ({"phase": "restarting", "restarts": 9, "message": "killed"}, "warning", "killed"),
        ({"phase": "failed"}, "critical", "not streaming"),
        ({"phase": "streaming"}, "warning", "no base backup yet"),
        ({"phase": "streaming", "earliest": 1000.0, "latest": 2000.0}, "ok", "restorable from"),
        # A hole older than the window (7 days by default) no longer breaks it.
        (
            {"phase": "streaming", "earliest": 1000.0, "latest": 2000.0,
             "gaps": (("A", "B"),), "gap_since": 10.0},
            "ok",
            "restorable from",
        ),
    ],
)
def test_pitr_check_verdicts(archive: dict[str, Any], severity: str, words: str) -> None:
    check = check_pitr(pure_state(**archive), now=10.0 + 8 * 86400)
    assert check.severity == severity and words in check.reason, check


def test_the_archive_slot_keeping_too_much_wal_warns_and_a_lost_slot_is_critical() -> None:
    state = pure_state(phase="streaming", earliest=1000.0, latest=2000.0)
    state.archive.slot = SlotState(
        name="laterbase_wal_slot", exists=True, retained_bytes=5 * 1024**3
    )
    check = check_pitr(state, now=2000.0)
    assert check.severity == "warning" and "keeps 5" in check.reason, check
    state.archive.slot.wal_status = "lost"
    check = check_pitr(state, now=2000.0)
    assert check.severity == "critical" and "lost WAL" in check.reason, check
    text = render(build_registry(state)).decode()
    sample = re.search(r"^laterbased_pitr_slot_retained_wal_bytes (\S+)$", text, re.MULTILINE)
    assert sample is not None and float(sample.group(1)) == 5 * 1024**3, text


def test_a_recent_gap_is_critical_and_names_what_is_still_restorable() -> None:
    # No base backup after the gap yet: nothing after it can be restored.
    state = pure_state(
        phase="streaming", earliest=None, latest=None,
        gaps=(("000000010000000000000005", "000000010000000000000005"),), gap_since=4000.0,
        ranges=((1000.0, 4000.0),),
    )
    check = check_pitr(state, now=6000.0)
    assert check.severity == "critical"
    assert "000000010000000000000005" in check.reason
    assert "restorable: 1970-01-01T00:16:40Z to 1970-01-01T01:06:40Z" in check.reason
    assert "nothing after the gap until the next base backup" in check.reason


def test_a_gap_left_behind_by_a_newer_base_backup_is_ok_and_still_named() -> None:
    # A base backup after the gap made the window whole again from it on: green (a week of
    # 503 would page every day for a hole nobody can fill), the hole in the reason.
    state = pure_state(
        phase="streaming", earliest=5000.0, latest=6000.0,
        gaps=(("000000010000000000000005", "000000010000000000000005"),), gap_since=4000.0,
        ranges=((1000.0, 4000.0), (5000.0, 6000.0)),
    )
    check = check_pitr(state, now=6000.0)
    assert check.severity == "ok", check
    assert "restorable from 1970-01-01T01:23:20Z to 1970-01-01T01:40:00Z" in check.reason
    assert (
        "WAL segments 000000010000000000000005 to 000000010000000000000005 are missing, so "
        "moments from 1970-01-01T01:06:40Z to 1970-01-01T01:23:20Z cannot be restored"
    ) in check.reason


def test_metrics_show_the_window_and_promtool_accepts_them() -> None:
    state = pure_state(
        phase="streaming", earliest=5000.0, latest=6000.0, last_receive=6000.0,
        base_backups=2, restarts=1,
    )
    text = render(build_registry(state)).decode()
    assert "laterbased_pitr_archive_streaming 1.0" in text
    assert "laterbased_pitr_window_earliest_timestamp_seconds 5000.0" in text
    assert "laterbased_pitr_window_latest_timestamp_seconds 6000.0" in text
    assert "laterbased_pitr_archive_restarts_total 1.0" in text
    assert "laterbased_pitr_window_gaps 0.0" in text
    promtool = shutil.which("promtool")
    assert promtool is not None
    checked = subprocess.run(
        [promtool, "check", "metrics"], input=text.encode(), capture_output=True, check=False
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_no_pitr_series_while_it_is_off() -> None:
    state = State(config=load_config(None, {"PRIMARY_HOST": "resolve.local"}))
    assert "laterbased_pitr_" not in render(build_registry(state)).decode()
