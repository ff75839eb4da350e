"""Child processes: output to logs, timeouts and cancellation leave nothing behind."""

from __future__ import annotations

import asyncio
import logging
import os
import pwd
import signal
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import pytest
from pgserver import PgServer
from standby_support import orphan_standby
from waiting import wait_for

from laterbased.errors import RefuseToRun
from laterbased.proc import (
    RepeatCollapser,
    RunAs,
    child_environment,
    pid_alive,
    read_postmaster_pid,
    resolve_run_as,
    run,
    spawn,
)

PY = sys.executable
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to switch users")


def grandchild_script(pid_file: Path, *, ignore_term: bool = False) -> str:
    """A child that starts a long-sleeping grandchild in its group and records its pid."""
    trap = "import signal; signal.signal(signal.SIGTERM, signal.SIG_IGN)\n" if ignore_term else ""
    return (
        "import subprocess, sys, time\n"
        f"{trap}"
        f"g = subprocess.Popen([{PY!r}, '-c', {trap!r} + 'import time; time.sleep(600)'])\n"
        f"open({str(pid_file)!r}, 'w').write(str(g.pid))\n"
        "print('ready', file=sys.stderr, flush=True)\n"
        "time.sleep(600)\n"
    )


async def test_run_logs_each_stderr_line_and_keeps_a_tail(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="laterbased.proc")
    script = "import sys\nfor i in range(30): print(f'line {i}', file=sys.stderr)\nsys.exit(3)"
    result = await run([PY, "-c", script], log_name="demo")
    assert result.returncode == 3
    assert result.stderr_tail[0] == "line 10" and result.stderr_tail[-1] == "line 29"
    assert len(result.stderr_tail) == 20
    messages = [r.getMessage() for r in caplog.records if r.name == "laterbased.proc"]
    assert "demo: line 0" in messages and "demo: line 29" in messages


async def test_run_hands_carriage_return_progress_lines_to_on_line_instead_of_the_log(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="laterbased.proc")
    # A progress meter rewrites one line with \r (also across write boundaries), ends it
    # with \n; a Windows-style \r\n is one line end; the last line has no end at all.
    script = (
        "import sys, time\n"
        "w = sys.stderr.write\n"
        "for i in range(3): w(f'{i}/3 kB ({i * 33}%)\\r'); sys.stderr.flush(); time.sleep(0.05)\n"
        "w('3/3 kB (100%)\\n'); w('crlf\\r\\n'); w('\\n'); w('last')\n"
    )
    seen: list[str] = []
    result = await run([PY, "-c", script], log_name="meter", on_line=seen.append)
    assert result.returncode == 0
    assert seen == ["0/3 kB (0%)", "1/3 kB (33%)", "2/3 kB (66%)", "3/3 kB (100%)", "crlf", "",
                    "last"]
    assert result.stderr_tail == seen
    logged = [r.getMessage() for r in caplog.records if r.name == "laterbased.proc"]
    assert not [m for m in logged if "kB" in m or "crlf" in m or "last" in m]


async def test_run_cuts_endless_output_without_line_ends_into_bounded_lines() -> None:
    script = "import sys; sys.stderr.write('y' * 200_000)"
    seen: list[str] = []
    result = await run([PY, "-c", script], log_name="endless", on_line=seen.append)
    assert result.returncode == 0
    assert "".join(seen) == "y" * 200_000
    assert max(len(line) for line in seen) <= 1 << 16


async def test_run_captures_stdout_or_streams_it_into_a_file() -> None:
    big = "x" * 1_000_000
    script = "import sys; sys.stdout.write('x' * 1_000_000); sys.stdout.flush()"
    captured = await run([PY, "-c", script], capture_stdout=True, log_name="cap")
    assert captured.returncode == 0 and captured.stdout == big.encode()
    with tempfile.TemporaryFile() as handle:
        streamed = await run([PY, "-c", script], stdout=handle, log_name="file")
        handle.seek(0)
        assert streamed.returncode == 0 and streamed.stdout == b""
        assert handle.read() == big.encode()


async def test_run_timeout_kills_the_whole_group(tmp_path: Path) -> None:
    pid_file = tmp_path / "grandchild.pid"
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(TimeoutError):
        await run(
            [PY, "-c", grandchild_script(pid_file, ignore_term=True)],
            log_name="slow",
            timeout=1.5,
            term_grace=0.5,
        )
    assert loop.time() - started < 10
    grandchild = int(pid_file.read_text())
    await wait_for(lambda: not pid_alive(grandchild), "grandchild killed with its group", 5)


async def test_cancelling_run_stops_and_reaps_the_child(tmp_path: Path) -> None:
    pid_file = tmp_path / "grandchild.pid"
    task = asyncio.create_task(
        run([PY, "-c", grandchild_script(pid_file)], log_name="cancelme")
    )
    await wait_for(lambda: pid_file.exists() and pid_file.read_text() != "", "child up", 10)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    grandchild = int(pid_file.read_text())
    await wait_for(lambda: not pid_alive(grandchild), "grandchild gone after cancel", 5)


async def test_spawn_stop_escalates_to_sigkill_when_sigterm_is_ignored(
    caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    caplog.set_level(logging.INFO, logger="laterbased.proc")
    pid_file = tmp_path / "grandchild.pid"
    child = await spawn(
        [PY, "-c", grandchild_script(pid_file, ignore_term=True)], log_name="stubborn"
    )
    await wait_for(lambda: pid_file.exists() and pid_file.read_text() != "", "child up", 10)
    assert child.returncode is None and pid_alive(child.pid)
    returncode = await child.stop([(signal.SIGTERM, 0.5)])
    assert returncode == -signal.SIGKILL
    assert child.returncode == -signal.SIGKILL
    assert not pid_alive(child.pid)
    grandchild = int(pid_file.read_text())
    await wait_for(lambda: not pid_alive(grandchild), "grandchild killed with the group", 5)
    assert "stubborn: ready" in [r.getMessage() for r in caplog.records]
    assert await child.stop() == -signal.SIGKILL  # stopping again is harmless


async def test_spawn_wait_returns_exit_status_and_logs_both_streams(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="laterbased.proc")
    script = "import sys; print('out'); print('err', file=sys.stderr); sys.exit(7)"
    async with await spawn([PY, "-c", script], log_name="brief") as child:
        assert await child.wait() == 7
    messages = [r.getMessage() for r in caplog.records]
    assert "brief: out" in messages and "brief: err" in messages


async def test_spawn_stop_with_sigterm_exits_gracefully() -> None:
    child = await spawn([PY, "-c", "import time; time.sleep(600)"], log_name="polite")
    assert await child.stop([(signal.SIGTERM, 10)]) == -signal.SIGTERM


def test_child_environment_strips_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    secrets = {
        "REPL_PASSWORD": "a",
        "PGPASSWORD": "b",
        "PGADMIN_PASSWORD": "c",
        "FOO_PASSWORD": "d",
        "FOO_PASSWORD_FILE": "/run/secret",
        "RCLONE_REMOTE_1_PARAM_SECRET_ACCESS_KEY": "e",
        "RCLONE_CONFIG_S3_TYPE": "s3",
        "LATERBASED_HTTP_TOKEN": "f",
        "GITHUB_TOKEN": "g",
        "AWS_SECRET_ACCESS_KEY": "h",
        "NOTIFY_SOCKET": "/run/systemd/notify",
        "WATCHDOG_USEC": "1000",
        "WATCHDOG_PID": "1",
    }
    for key, value in secrets.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("TZ", "Europe/Berlin")
    env = child_environment({"PGPASSFILE": "/state/pgpass", "RCLONE_CONFIG_X_TYPE": "local"})
    assert not set(secrets) & set(env)
    assert env["TZ"] == "Europe/Berlin"
    assert env["PATH"] == os.environ["PATH"]
    assert env["PGPASSFILE"] == "/state/pgpass" and env["RCLONE_CONFIG_X_TYPE"] == "local"


async def test_run_uses_a_clean_environment_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REPL_PASSWORD", "hunter2")
    result = await run(
        [PY, "-c", "import os; print(os.environ.get('REPL_PASSWORD', 'absent'))"],
        capture_stdout=True,
        log_name="env",
    )
    assert result.stdout.strip() == b"absent"


@needs_root
async def test_run_as_postgres_really_runs_as_that_user() -> None:
    run_as = resolve_run_as("postgres")
    assert run_as is not None
    entry = pwd.getpwnam("postgres")
    uid = await run(["id", "-u"], run_as=run_as, capture_stdout=True, log_name="id")
    assert uid.returncode == 0 and int(uid.stdout) == entry.pw_uid
    whoami = await run(["id", "-un"], run_as=run_as, capture_stdout=True, log_name="id")
    assert whoami.stdout.strip() == b"postgres"
    groups = await run(["id", "-G"], run_as=run_as, capture_stdout=True, log_name="id")
    assert groups.stdout.split() == [str(entry.pw_gid).encode()]  # no supplementary groups


@needs_root
def test_root_without_run_as_defaults_to_postgres_and_refuses_unknown_users() -> None:
    assert resolve_run_as(None) == RunAs(
        "postgres",
        pwd.getpwnam("postgres").pw_uid,
        pwd.getpwnam("postgres").pw_gid,
        pwd.getpwnam("postgres").pw_dir,
    )
    with pytest.raises(RefuseToRun, match="no-such-user-xyz"):
        resolve_run_as("no-such-user-xyz")
    with pytest.raises(RefuseToRun, match="root"):
        resolve_run_as("root")


def test_pid_alive_and_postmaster_pid(tmp_path: Path) -> None:
    assert pid_alive(os.getpid())
    assert pid_alive(1)  # EPERM or not, PID 1 exists
    assert not pid_alive(0)
    assert read_postmaster_pid(tmp_path) is None
    (tmp_path / "postmaster.pid").write_text("4242\n/var/lib/data\n1700000000\n5432\n")
    assert read_postmaster_pid(tmp_path) == 4242
    (tmp_path / "postmaster.pid").write_text("garbage\n")
    assert read_postmaster_pid(tmp_path) is None


async def test_pid_alive_is_false_for_an_exited_child() -> None:
    result = await run([PY, "-c", "import os; print(os.getpid())"], capture_stdout=True,
                       log_name="pid")
    assert not pid_alive(int(result.stdout))


def test_repeats_are_logged_once_then_summarised_once_a_window() -> None:
    fatal = (
        '{} UTC [{}] FATAL:  could not connect to the primary server: connection to server '
        'at "10.0.0.5", port 5432 failed: Connection refused'
    )
    hint = "\tIs the server running on that host and accepting TCP/IP connections?"
    collapser = RepeatCollapser(window=60)
    logged: list[str] = []
    for second in range(0, 130, 5):  # the walreceiver retries every 5 s
        logged += collapser.feed(fatal.format(f"13:{second:03d}", 1000 + second), float(second))
        logged += collapser.feed(hint, float(second))
    assert logged[0].startswith("13:000 UTC [1000] FATAL:  could not connect")
    assert logged[1] == hint
    summary = (
        'FATAL:  could not connect to the primary server: connection to server at "10.0.0.5", '
        "port 5432 failed: Connection refused (repeated {} times in the last minute)"
    )
    # 5 s … 55 s in the first minute, 60 s … 115 s in the second.
    assert logged[2:] == [summary.format(11), summary.format(12)]
    assert collapser.next_deadline() == 180.0
    # The primary is back: a new message is logged at once, the last repeats when due.
    assert collapser.feed("13:131 UTC [77] LOG:  started streaming WAL", 131.0) == [
        "13:131 UTC [77] LOG:  started streaming WAL"
    ]
    assert collapser.expire(180.0) == [summary.format(2)]
    assert collapser.expire(240.0) == []  # quiet for a window: forgotten ...
    assert collapser.feed(fatal.format("13:300", 5), 300.0)[0].startswith("13:300")  # ... so logged


async def test_standby_fatal_while_the_primary_is_down_is_collapsed(
    make_primary: Callable[..., PgServer], caplog: pytest.LogCaptureFixture
) -> None:
    # A real postgres in standby mode whose primary does not answer: its walreceiver fails
    # with the same FATAL every wal_retrieve_retry_interval (5 s by default, 100 ms here).
    caplog.set_level(logging.INFO, logger="laterbased.proc")
    async with orphan_standby(make_primary(), repeat_window=1.0):
        await wait_for(
            lambda: sum(
                "repeated" in m and "could not connect" in m
                for m in (r.getMessage() for r in caplog.records)
            ) >= 2,
            "two summaries of the repeated FATAL",
            timeout=30,
            log=lambda: caplog.text[-3000:],
        )
    messages = [r.getMessage() for r in caplog.records if r.name == "laterbased.proc"]
    fatal = [m for m in messages if "could not connect to the primary server" in m]
    full = [m for m in fatal if "repeated" not in m]
    summaries = [m for m in fatal if "repeated" in m]
    assert len(full) == 1, fatal
    assert len(summaries) >= 2
    assert all(m.startswith("standby postgres: FATAL:  could not connect") for m in summaries)
    counted = [int(m.rsplit("(repeated ", 1)[1].split()[0]) for m in summaries]
    assert sum(counted) >= 5, counted
    # The postmaster's own lines are still there, once each.
    assert sum("database system is shut down" in m for m in messages) == 1, messages[-10:]
