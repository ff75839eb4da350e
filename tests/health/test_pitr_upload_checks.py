"""What the point-in-time archive has waiting for its off-site copy shows like the dumps'
uploads: health's ``pitr-upload`` check warns when the oldest waits longer than
``upload.pending_max_age``, a metric counts it, and /status.json and the status page say it."""

from __future__ import annotations

import re
import shutil
import subprocess
from typing import Any

from laterbased.config import load_config
from laterbased.core.state import State
from laterbased.health.metrics import build_registry, render
from laterbased.health.verdicts import evaluate
from laterbased.web.status import pitr_document

UPLOAD = {
    "RCLONE_REMOTE_NAME": "offsite",
    "RCLONE_REMOTE_PATH": "bucket/laterbased",
    "RCLONE_REMOTE_1_NAME": "offsite",
    "RCLONE_REMOTE_1_TYPE": "local",
    "LATERBASED_UPLOAD_PENDING_MAX_AGE": "1h",
}


def state_with(upload: bool, **archive: Any) -> State:
    env = {"PRIMARY_HOST": "resolve.local", "LATERBASED_PITR_ENABLED": "true"}
    state = State(config=load_config(None, env | (UPLOAD if upload else {})))
    for name, value in archive.items():
        setattr(state.archive, name, value)
    return state


def pitr_upload_check(state: State, now: float) -> Any:
    return next((c for c in evaluate(state, now) if c.name == "pitr-upload"), None)


def test_archive_files_waiting_too_long_for_upload_are_a_warning() -> None:
    now = 100_000.0
    waiting = state_with(True, pending_upload=12, oldest_pending_upload=now - 600)
    check = pitr_upload_check(waiting, now)
    assert check is not None and check.severity == "ok", check
    assert "12 point-in-time archive file(s) waiting for upload" in check.reason

    stuck = state_with(True, pending_upload=40, oldest_pending_upload=now - 2 * 3600)
    check = pitr_upload_check(stuck, now)
    assert check is not None and check.severity == "warning", check
    assert "40 point-in-time archive file(s)" in check.reason and "limit 1h" in check.reason

    assert pitr_upload_check(state_with(True), now).reason == "nothing waiting"
    assert pitr_upload_check(state_with(False, pending_upload=3), now) is None, "upload off"


def test_metrics_and_status_count_the_archive_files_waiting_for_upload() -> None:
    state = state_with(True, phase="streaming", pending_upload=7, oldest_pending_upload=1.0)
    text = render(build_registry(state)).decode()
    sample = re.search(r"^laterbased_pitr_pending_uploads (\S+)$", text, re.MULTILINE)
    assert sample is not None and float(sample.group(1)) == 7, text
    promtool = shutil.which("promtool")
    assert promtool is not None
    checked = subprocess.run(
        [promtool, "check", "metrics"], input=text.encode(), capture_output=True, check=False
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert pitr_document(state)["pending_upload"] == 7

    off = state_with(False, pending_upload=7)
    assert "laterbased_pitr_pending_uploads" not in render(build_registry(off)).decode()
    assert pitr_document(off)["pending_upload"] is None
