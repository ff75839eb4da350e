"""The Grafana dashboard and the alert rules name only metrics a real daemon exports."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from daemon_process import DaemonProcess, minimal_config, write_config

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "deploy" / "grafana" / "laterbased.json"
RULES = ROOT / "deploy" / "prometheus" / "alerts.yaml"
METRIC = re.compile(r"\blaterbased_[a-z0-9_]+\b")


def dashboard() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return data


def dashboard_exprs() -> list[str]:
    exprs = []
    for panel in dashboard()["panels"]:
        exprs += [target["expr"] for target in panel.get("targets", [])]
    for variable in dashboard()["templating"]["list"]:
        exprs.append(variable["definition"])
    return exprs


def rule_exprs() -> list[str]:
    doc = yaml.safe_load(RULES.read_text())
    return [rule["expr"] for group in doc["groups"] for rule in group["rules"]]


def referenced(exprs: list[str]) -> set[str]:
    return {name for expr in exprs for name in METRIC.findall(expr)}


def exported_names(exposition: str) -> set[str]:
    """Every series name a Prometheus server would store from this /metrics text,
    including families that have no samples yet (e.g. no backup has run)."""
    names: set[str] = set()
    suffixes = {
        "counter": ("_total", "_created"),
        "histogram": ("_bucket", "_sum", "_count", "_created"),
        "summary": ("_sum", "_count", "_created"),
        "info": ("_info",),
    }
    for line in exposition.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(maxsplit=3)
            names.add(name)
            names.update(name + suffix for suffix in suffixes.get(kind, ()))
        elif line and not line.startswith("#"):
            names.add(re.split(r"[{ ]", line, maxsplit=1)[0])
    return names


async def test_every_metric_in_dashboard_and_alerts_exists_in_a_real_scrape(
    tmp_path: Path,
) -> None:
    config = minimal_config(tmp_path)
    port = config["http"]["port"]
    daemon = await DaemonProcess.start(write_config(tmp_path / "laterbased.yaml", config), port)
    try:
        await daemon.wait_http()
        async with aiohttp.ClientSession() as session:
            async with session.get(f"{daemon.url}/metrics") as response:
                assert response.status == 200
                exposition = await response.text()
    finally:
        await daemon.stop()
    exported = exported_names(exposition)
    assert "laterbased_up" in exported
    for source, exprs in (("dashboard", dashboard_exprs()), ("alert rules", rule_exprs())):
        missing = sorted(referenced(exprs) - exported)
        assert missing == [], f"{source} name metrics /metrics does not export: {missing}"


def test_dashboard_and_alerts_cover_the_design_metrics() -> None:
    used = referenced(dashboard_exprs()) | referenced(rule_exprs())
    for name in (
        "laterbased_replication_lag_bytes",
        "laterbased_replication_lag_seconds",
        "laterbased_replication_slot_retained_wal_bytes",
        "laterbased_replication_slot_wal_status",
        "laterbased_backup_last_success_timestamp_seconds",
        "laterbased_backup_last_size_bytes",
        "laterbased_job_runs_total",
        "laterbased_standby_running",
        "laterbased_primary_up",
    ):
        assert name in used, name


def test_dashboard_is_importable_grafana_json() -> None:
    data = dashboard()
    assert data["uid"] == "laterbased" and data["title"]
    assert [i["name"] for i in data["__inputs"]] == ["DS_PROMETHEUS"]
    ids = [panel["id"] for panel in data["panels"]]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for panel in data["panels"]:
        if panel["type"] == "row":
            continue
        assert panel["datasource"]["uid"] == "${DS_PROMETHEUS}", panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert METRIC.search(target["expr"]), (panel["title"], target["expr"])
            assert 'instance=~"$instance"' in target["expr"], (panel["title"], target["expr"])


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool missing")
def test_every_dashboard_query_is_valid_promql(tmp_path: Path) -> None:
    # promtool has no "check query"; a recording rule per panel query gets the same parser.
    rules = [
        {"record": f"laterbased_dashboard:query{index}", "expr": expr.replace("$instance", ".*")}
        for index, expr in enumerate(dashboard_exprs())
        if not expr.startswith("label_values(")
    ]
    path = tmp_path / "dashboard-queries.yaml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    result = subprocess.run(
        ["promtool", "check", "rules", str(path)],
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
