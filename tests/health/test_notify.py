"""Notifications: transition logic (pure), a real webhook receiver, a real hook script."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import os
import signal
import stat
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from waiting import wait_for

from laterbased.config import (
    BackupConfig,
    Config,
    NotifyConfig,
    PrimaryConfig,
    Secret,
    StandbyConfig,
)
from laterbased.core.state import JobRun, State
from laterbased.daemon import configured_workers
from laterbased.health import verdicts as health
from laterbased.health.notify import Notification, Tracker, job_checks, run_notify
from laterbased.health.verdicts import Check

POLL = 0.05


def _as_secret_url(notify: dict[str, Any]) -> dict[str, Any]:
    if isinstance(notify.get("webhook_url"), str):
        notify = notify | {"webhook_url": Secret(notify["webhook_url"])}
    return notify


def make_state(**notify: Any) -> State:
    """Only the primary is checked (no standby, no backups), so tests flip one verdict."""
    config = Config(
        primary=PrimaryConfig(host="127.0.0.1"),
        standby=StandbyConfig(enabled=False),
        backup=BackupConfig(enabled=False),
        notify=NotifyConfig(**_as_secret_url(notify)),
    )
    state = State(config=config)
    state.ready = True
    state.primary.reachable = True
    return state


def wait_until(predicate: Callable[[], bool], what: str, timeout: float = 10.0) -> Any:
    return wait_for(predicate, what, timeout, interval=0.02)


class Receiver:
    """A real HTTP server on loopback that records the webhook POSTs it receives."""

    def __init__(self, status: int = 200) -> None:
        self.status = status
        self.bodies: list[dict[str, Any]] = []
        self.url = ""

    async def handle(self, request: web.Request) -> web.Response:
        assert request.content_type == "application/json"
        self.bodies.append(await request.json())
        return web.Response(status=self.status, text="ok")


@contextlib.asynccontextmanager
async def receiver(status: int = 200) -> AsyncIterator[Receiver]:
    recv = Receiver(status)
    app = web.Application()
    app.router.add_post("/hooks/T0SECRET/B1SECRET", recv.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    recv.url = f"http://127.0.0.1:{port}/hooks/T0SECRET/B1SECRET"
    try:
        yield recv
    finally:
        await runner.cleanup()


@contextlib.asynccontextmanager
async def notify_running(state: State) -> AsyncIterator[None]:
    stopping = asyncio.Event()
    task = asyncio.create_task(run_notify(state, stopping, poll_interval=POLL))
    try:
        yield
        assert not task.done(), "the notify worker ended by itself"
    finally:
        stopping.set()
        await asyncio.wait_for(task, 10)


# --- transition logic -----------------------------------------------------------------


def test_problem_is_told_only_after_confirm_after() -> None:
    tracker = Tracker(min_interval=900, confirm_after=60, host="h")
    bad = Check("standby", "critical", "postgres exited with status 1")
    assert tracker.observe([bad], now=1000) == []
    assert tracker.observe([bad], now=1059) == []
    [message] = tracker.observe([bad], now=1060)
    assert message.event == "problem"
    assert message.check == "standby"
    assert message.text == "[laterbased h] CRITICAL standby: postgres exited with status 1"
    assert tracker.observe([bad], now=1200) == []


def test_a_blip_shorter_than_confirm_after_is_never_told() -> None:
    tracker = Tracker(min_interval=900, confirm_after=60, host="h")
    assert tracker.observe([Check("primary", "ok", "reachable")], now=0) == []
    assert tracker.observe([Check("primary", "critical", "unreachable")], now=10) == []
    assert tracker.observe([Check("primary", "ok", "reachable")], now=20) == []
    assert tracker.observe([Check("primary", "ok", "reachable")], now=500) == []


def test_recovery_is_told_at_once_with_how_long_it_lasted() -> None:
    tracker = Tracker(min_interval=900, confirm_after=0, host="h")
    [problem] = tracker.observe([Check("upload", "warning", "3 backups pending")], now=100)
    assert problem.severity == "warning"
    [recovered] = tracker.observe([Check("upload", "ok", "nothing pending")], now=400)
    assert recovered.event == "recovered"
    assert recovered.previous_severity == "warning"
    assert recovered.text == "[laterbased h] RECOVERED upload after 5m: nothing pending"


def test_flapping_check_sends_one_problem_per_interval_and_never_loses_the_last_state() -> None:
    tracker = Tracker(min_interval=900, confirm_after=0, host="h")
    sent = []
    ok, bad = Check("slot", "ok", "fine"), Check("slot", "critical", "wal_status lost")
    now = 0.0
    for _ in range(20):  # flaps every 10 s for 400 s
        sent += tracker.observe([bad], now)
        now += 10
        sent += tracker.observe([ok], now)
        now += 10
    sent += tracker.observe([bad], now)  # and stays bad
    kinds = [m.event for m in sent]
    assert kinds == ["problem", "recovered"], kinds
    assert tracker.observe([bad], now=899) == []
    [again] = tracker.observe([bad], now=900)
    assert again.event == "problem"
    assert again.changes_held > 0
    assert "more changes since the last message" in again.text


def test_escalation_to_critical_gets_through_the_rate_limit_once() -> None:
    tracker = Tracker(min_interval=900, confirm_after=0, host="h")
    [first] = tracker.observe([Check("replication", "warning", "lag 20MB")], now=0)
    [worse] = tracker.observe([Check("replication", "critical", "not streaming")], now=30)
    assert (first.severity, worse.severity) == ("warning", "critical")
    assert tracker.observe([Check("replication", "warning", "lag 20MB")], now=60) == []
    assert tracker.observe([Check("replication", "critical", "not streaming")], now=90) == []


def test_failed_backup_from_health_is_told_after_confirm_and_recovers() -> None:
    state = make_state()
    state.config = dataclasses.replace(state.config, backup=BackupConfig(enabled=True))
    tracker = Tracker(min_interval=900, confirm_after=60, host="h")
    summary = state.backup("Resolve Projects")
    summary.last_success = 1000.0
    summary.last_failure = 1100.0
    summary.last_error = "pg_dump exit status 1: permission denied for table SM_Project"

    def observe(now: float) -> list[Notification]:
        return tracker.observe(health.evaluate(state, now), now, job_checks(state))

    assert observe(1101) == []
    [message] = observe(1161)
    assert message.check == "backup:Resolve Projects"
    assert "permission denied" in message.message
    summary.last_success = 1200.0
    assert observe(1200) == []  # a recovery must hold for confirm_after too
    [recovered] = observe(1260)
    assert recovered.event == "recovered"
    assert recovered.check == "backup:Resolve Projects"


def test_dump_failures_are_left_to_the_per_database_health_check() -> None:
    state = make_state()
    state.job("dump").last_run = JobRun(
        id="d-1", job="dump", started=1, finished=2, result="failed", database="Resolve"
    )
    assert job_checks(state) == []


def test_dump_run_failures_are_left_to_the_backup_health_checks() -> None:
    state = make_state()
    state.job("dump").last_run = JobRun(
        id="d-2", job="dump", started=1, finished=2, result="failed", detail="cannot connect"
    )
    assert job_checks(state) == []  # backup:<db> / backup tell it, once


def test_verify_failures_are_left_to_the_verify_health_check() -> None:
    state = make_state()
    state.job("verify").last_run = JobRun(
        id="v-1", job="verify", started=1, finished=2, result="failed", detail="drill failed"
    )
    assert job_checks(state) == []  # one failed drill, one message (from health's check)


def test_failed_job_run_names_its_run_id() -> None:
    state = make_state()
    state.job("upload").last_run = JobRun(
        id="u-42", job="upload", started=1, finished=2, result="failed", detail="remote down"
    )
    [check] = job_checks(state)
    assert check.name == "job:upload"
    assert check.severity == "critical"
    assert "u-42" in check.reason and "remote down" in check.reason


def test_worker_registered_only_when_a_target_is_configured() -> None:
    plain = Config(primary=PrimaryConfig(host="x"))
    assert "notify" not in [w.name for w in configured_workers(plain)]
    hooked = Config(primary=PrimaryConfig(host="x"), notify=NotifyConfig(command=("/bin/true",)))
    assert "notify" in [w.name for w in configured_workers(hooked)]


# --- real webhook and hook ------------------------------------------------------------


async def test_webhook_receives_problem_and_recovery_as_slack_compatible_json() -> None:
    async with receiver() as recv:
        state = make_state(webhook_url=recv.url, confirm_after=0)
        async with notify_running(state):
            state.primary.reachable = False
            state.primary.last_error = "connection refused"
            await wait_until(lambda: len(recv.bodies) == 1, "problem webhook")
            state.primary.reachable = True
            await wait_until(lambda: len(recv.bodies) == 2, "recovery webhook")
    problem, recovered = recv.bodies
    assert problem["event"] == "problem"
    assert problem["check"] == "primary"
    assert problem["severity"] == "critical"
    assert "unreachable: connection refused" in problem["text"]
    assert problem["content"] == problem["text"]  # Discord reads "content"
    assert recovered["event"] == "recovered"
    assert recovered["text"].startswith(f"[laterbased {problem['host']}] RECOVERED primary")
    assert state.notifications_sent["webhook"] == 2
    assert not state.notifications_failed


async def test_hook_command_gets_the_event_in_its_environment_and_no_secrets(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("REPL_PASSWORD", "hunter2-secret")
    out = tmp_path / "events.jsonl"
    script = tmp_path / "page-me"
    script.write_text(
        "#!/usr/bin/env python3\n"
        "import json, os, sys\n"
        f"with open({str(out)!r}, 'a') as f:\n"
        "    f.write(json.dumps({'argv': sys.argv[1:], 'env': dict(os.environ)}) + '\\n')\n"
    )
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    state = make_state(command=(str(script), "--urgent"), confirm_after=0)
    async with notify_running(state):
        state.primary.reachable = False
        state.primary.last_error = "timeout"
        await wait_until(lambda: state.notifications_sent["command"] == 1, "hook run")
    record = json.loads(out.read_text())
    env = record["env"]
    assert record["argv"] == ["--urgent"]
    assert env["LATERBASED_EVENT"] == "problem"
    assert env["LATERBASED_CHECK"] == "primary"
    assert env["LATERBASED_SEVERITY"] == "critical"
    assert env["LATERBASED_MESSAGE"] == "unreachable: timeout"
    assert "REPL_PASSWORD" not in env
    assert "hunter2-secret" not in json.dumps(env)
    assert state.notifications_sent["command"] == 1


async def test_failing_targets_are_logged_and_counted_and_never_fatal(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="laterbased.health.notify")
    script = tmp_path / "broken-hook"
    script.write_text("#!/bin/sh\necho 'pager service says no' >&2\nexit 3\n")
    script.chmod(0o700)
    async with receiver(status=500) as recv:
        state = make_state(webhook_url=recv.url, command=(str(script),), confirm_after=0)
        async with notify_running(state):
            state.primary.reachable = False
            await wait_until(
                lambda: state.notifications_failed["command"] == 1, "failed hook counted"
            )
            state.primary.reachable = True
            await wait_until(
                lambda: state.notifications_failed["command"] == 2, "second failure counted"
            )
        assert len(recv.bodies) == 2  # the receiver got them but answered 500
    assert state.notifications_failed["webhook"] == 2
    assert not state.notifications_sent
    log = caplog.text
    assert "notification failed channel=webhook" in log and "HTTP 500" in log
    assert "exit status 3: pager service says no" in log
    assert "SECRET" not in log  # the token in the webhook path never reaches the log


async def test_unreachable_webhook_and_missing_hook_do_not_stop_the_watcher(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="laterbased.health.notify")
    async with receiver() as recv:
        dead_url = recv.url
    state = make_state(
        webhook_url=dead_url, command=(str(tmp_path / "no-such-hook"),), confirm_after=0,
        timeout=2,
    )
    async with notify_running(state):
        state.primary.reachable = False
        await wait_until(
            lambda: state.notifications_failed["webhook"] == 1
            and state.notifications_failed["command"] == 1,
            "both failures counted",
        )
        state.primary.reachable = True
        await wait_until(
            lambda: state.notifications_failed["webhook"] == 2, "watcher still running"
        )
    assert "No such file or directory" in caplog.text


async def test_rate_limit_holds_a_flapping_check_end_to_end() -> None:
    async with receiver() as recv:
        state = make_state(webhook_url=recv.url, confirm_after=0, min_interval=3600)
        async with notify_running(state):
            for _ in range(5):
                state.primary.reachable = False
                await asyncio.sleep(POLL * 3)
                state.primary.reachable = True
                await asyncio.sleep(POLL * 3)
            await wait_until(lambda: len(recv.bodies) >= 2, "first problem and recovery")
            await asyncio.sleep(POLL * 4)
    assert [b["event"] for b in recv.bodies] == ["problem", "recovered"]


def test_hook_environment_has_no_laterbased_settings_of_ours(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # child_environment drops every LATERBASED_* setting; the event variables are added after.
    from laterbased.proc import child_environment

    monkeypatch.setenv("LATERBASED_HTTP_TOKEN", "tok-123")
    note = Notification("problem", "x", "critical", "ok", "m", at=0, host="h")
    env = child_environment(note.environment())
    assert "LATERBASED_HTTP_TOKEN" not in env
    assert env["LATERBASED_EVENT"] == "problem"
    assert os.environ["LATERBASED_HTTP_TOKEN"] == "tok-123"


@pytest.mark.slow
async def test_real_daemon_runs_the_hook_when_the_primary_is_unreachable(tmp_path: Path) -> None:
    """The worker as the daemon registers it: a real `laterbased run`, a primary nobody
    listens on, a real hook script."""
    from daemon_process import DaemonProcess, minimal_config, write_config

    out = tmp_path / "events.jsonl"
    script = tmp_path / "hook"
    script.write_text(
        "#!/usr/bin/env python3\n"
        "import json, os\n"
        f"with open({str(out)!r}, 'a') as f:\n"
        "    f.write(json.dumps({k: v for k, v in os.environ.items()\n"
        "                        if k.startswith('LATERBASED_')}) + '\\n')\n"
    )
    script.chmod(0o700)
    config = minimal_config(
        tmp_path,
        monitor={"interval": "1s", "query_timeout": "1s"},
        primary={"connect_timeout": "1s"},
        notify={"command": [str(script)], "confirm_after": "0s"},
    )
    port = config["http"]["port"]
    daemon = await DaemonProcess.start(write_config(tmp_path / "laterbased.yaml", config), port)
    try:
        await daemon.wait_http()

        def critical_primary_told() -> bool:
            if not out.exists():
                return False
            events = [json.loads(line) for line in out.read_text().splitlines()]
            return any(
                e["LATERBASED_CHECK"] == "primary" and e["LATERBASED_SEVERITY"] == "critical"
                for e in events
            )

        await wait_until(critical_primary_told, "hook run for the unreachable primary", 30)
        daemon.send(signal.SIGTERM)
        assert await daemon.wait_exit() == 0
    finally:
        await daemon.stop()
    assert "notification sent channel=command" in daemon.log
    assert "Traceback" not in daemon.log
