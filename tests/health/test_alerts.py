"""Prometheus alert rules, checked and unit-tested by promtool itself."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

RULES_DIR = Path(__file__).resolve().parents[2] / "deploy" / "prometheus"
RULES = RULES_DIR / "alerts.yaml"
RULE_TESTS = RULES_DIR / "alerts_test.yaml"

needs_promtool = pytest.mark.skipif(
    shutil.which("promtool") is None, reason="promtool missing: apt-get install prometheus"
)


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["promtool", *args], capture_output=True, text=True, timeout=120, check=False,
        cwd=RULES_DIR,
    )


def alert_names() -> list[str]:
    doc = yaml.safe_load(RULES.read_text())
    return [rule["alert"] for group in doc["groups"] for rule in group["rules"]]


@needs_promtool
def test_promtool_check_rules_accepts_the_rules() -> None:
    result = promtool("check", "rules", str(RULES))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(alert_names())} rules found" in result.stdout


@needs_promtool
def test_promtool_unit_tests_pass() -> None:
    result = promtool("test", "rules", str(RULE_TESTS))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_every_alert_is_tested_firing_and_not_firing() -> None:
    fires: set[str] = set()
    quiet: set[str] = set()
    for case in yaml.safe_load(RULE_TESTS.read_text())["tests"]:
        for check in case["alert_rule_test"]:
            (fires if check["exp_alerts"] else quiet).add(check["alertname"])
    names = set(alert_names())
    assert names - fires == set(), "alerts never tested firing"
    assert names - quiet == set(), "alerts never tested staying quiet"


def test_required_alerts_exist_with_severity_and_text() -> None:
    doc = yaml.safe_load(RULES.read_text())
    rules = {rule["alert"]: rule for group in doc["groups"] for rule in group["rules"]}
    for name in (
        "LaterbasedStandbyDown",
        "LaterbasedReplicationLagHigh",
        "LaterbasedSlotInactive",
        "LaterbasedSlotRetainedWalHigh",
        "LaterbasedSlotWalLost",
        "LaterbasedPrimaryUnreachable",
        "LaterbasedBackupStale",
        "LaterbasedBackupMissing",
        "LaterbasedBackupJobFailing",
        "LaterbasedUploadPendingTooLong",
    ):
        assert name in rules, name
    assert "absent(laterbased_backup_last_success_timestamp_seconds)" in (
        rules["LaterbasedBackupMissing"]["expr"]
    )
    for name, rule in rules.items():
        assert rule["labels"]["severity"] in {"warning", "critical"}, name
        assert rule["annotations"]["summary"] and rule["annotations"]["description"], name
