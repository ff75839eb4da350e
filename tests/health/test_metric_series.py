"""The /metrics a real HTTP server answers: counters exist at 0 from the first scrape, and
the last run's duration is named for what it is. Checked by promtool."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import aiohttp
from monitor_support import promtool_check
from web_support import serving

from laterbased.backup.runner import begin_job, finish_job
from laterbased.config import (
    BackupConfig,
    Config,
    HttpConfig,
    NotifyConfig,
    PrimaryConfig,
    Secret,
    StandbyConfig,
)
from laterbased.core.state import State


def config_with_standby_and_notifications() -> Config:
    return Config(
        primary=PrimaryConfig(host="127.0.0.1", port=1, password=Secret("x")),
        standby=StandbyConfig(enabled=True, data_dir=Path("/nonexistent/standby")),
        backup=BackupConfig(enabled=True, directory=Path("/nonexistent/backups")),
        notify=NotifyConfig(
            webhook_url=Secret("http://127.0.0.1:9/hook"), command=("/bin/true",)
        ),
        http=HttpConfig(host="127.0.0.1", port=0),
        state_dir=Path(tempfile.mkdtemp(prefix="lb-metric-series-")),
        timezone="UTC",
    )


async def scrape(state: State) -> str:
    async with (
        serving(state) as url,
        aiohttp.ClientSession() as session,
        session.get(f"{url}/metrics") as answer,
    ):
        assert answer.status == 200
        return await answer.text()


async def test_restart_and_notification_counters_are_zero_from_the_first_scrape() -> None:
    state = State(config=config_with_standby_and_notifications())
    text = await scrape(state)
    await promtool_check(text)
    for reason in ("crash", "exited", "killed", "stuck"):
        assert f'laterbased_standby_restarts_total{{reason="{reason}"}} 0.0' in text, text
    for channel in ("command", "webhook"):
        assert f'laterbased_notifications_sent_total{{channel="{channel}"}} 0.0' in text
    for channel in ("command", "webhook", "queue", "error"):
        assert f'laterbased_notifications_failed_total{{channel="{channel}"}} 0.0' in text
    # A first event counts 1 on top of the zero, under the same labels.
    state.standby.restarts["killed"] += 1
    state.notifications_sent["webhook"] += 1
    text = await scrape(state)
    assert 'laterbased_standby_restarts_total{reason="killed"} 1.0' in text
    assert 'laterbased_standby_restarts_total{reason="crash"} 0.0' in text
    assert 'laterbased_notifications_sent_total{channel="webhook"} 1.0' in text


async def test_the_last_runs_duration_is_a_gauge_named_job_last_duration_seconds() -> None:
    state = State(config=config_with_standby_and_notifications())
    run = begin_job(state, "dump", "dump-test")
    assert run is not None
    run.started = time.time() - 2.5
    finish_job(state, run, "success")
    text = await scrape(state)
    await promtool_check(text)
    assert "# TYPE laterbased_job_last_duration_seconds gauge" in text
    line = next(
        line for line in text.splitlines()
        if line.startswith('laterbased_job_last_duration_seconds{kind="dump"}')
    )
    assert 2.4 < float(line.split()[-1]) < 10
    assert "laterbased_job_duration_seconds" not in text
