"""Metrics rendered from a hand-built state: names, values, absent-when-unknown, promtool."""

from __future__ import annotations

import shutil
import subprocess

from laterbased.config import Config, PrimaryConfig
from laterbased.core.state import SlotState, State
from laterbased.health.metrics import build_registry, render


def scrape(state: State) -> str:
    return render(build_registry(state)).decode()


def test_unknown_facts_have_no_sample_rather_than_a_misleading_zero() -> None:
    state = State(config=Config(primary=PrimaryConfig(host="resolve.local")))
    text = scrape(state)
    assert "# TYPE laterbased_replication_lag_bytes gauge" in text
    assert "\nlaterbased_replication_lag_bytes " not in text
    assert "laterbased_primary_up 0.0" in text  # not polled yet counts as down


def test_slot_and_lag_values_and_wal_status_as_labels() -> None:
    state = State(config=Config(primary=PrimaryConfig(host="resolve.local")))
    state.primary.reachable = True
    state.primary.slot = SlotState(name="s1", exists=True, active=False, retained_bytes=5000,
                                   wal_status="unreserved", safe_wal_size=-100)
    state.local.lag_bytes, state.local.lag_seconds = 123, 4.5
    state.local.receiver_status = "waiting"
    text = scrape(state)
    assert 'laterbased_replication_slot_active{slot_name="s1"} 0.0' in text
    assert 'laterbased_replication_slot_retained_wal_bytes{slot_name="s1"} 5000.0' in text
    assert 'laterbased_replication_slot_safe_wal_size_bytes{slot_name="s1"} -100.0' in text
    assert 'laterbased_replication_slot_wal_status{slot_name="s1",status="unreserved"} 1.0' in text
    assert 'laterbased_replication_slot_wal_status{slot_name="s1",status="lost"} 0.0' in text
    assert "laterbased_replication_lag_bytes 123.0" in text
    assert "laterbased_replication_lag_seconds 4.5" in text
    assert 'laterbased_wal_receiver_status{status="waiting"} 1.0' in text
    assert 'laterbased_wal_receiver_status{status="streaming"} 0.0' in text


def test_odd_database_names_are_escaped_and_promtool_accepts_the_output() -> None:
    state = State(config=Config(primary=PrimaryConfig(host="resolve.local")))
    summary = state.backup('Resolve "Main"\\Projects\nü')
    summary.last_success, summary.last_size, summary.local_count = 1.7e9, 42, 3
    job = state.job("dump")
    job.runs["failed"] += 1
    state.standby.restarts["crash"] += 2
    state.standby.phase, state.standby.bootstrap_bytes_done = "bootstrapping", 10
    state.record_event("error", "x")
    text = scrape(state)
    assert 'laterbased_backups_local{database="Resolve \\"Main\\"\\\\Projects\\nü"} 3.0' in text
    assert 'laterbased_job_runs_total{kind="dump",result="failed"} 1.0' in text
    assert 'laterbased_standby_restarts_total{reason="crash"} 2.0' in text
    assert "laterbased_standby_bootstrap_done_bytes 10.0" in text
    assert 'laterbased_last_event_timestamp_seconds{level="error"}' in text
    promtool = shutil.which("promtool")
    assert promtool, "promtool missing: apt-get install prometheus"
    result = subprocess.run([promtool, "check", "metrics"], input=text.encode(),
                            capture_output=True, timeout=60, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def test_no_metric_uses_the_labels_prometheus_attaches_itself() -> None:
    """`job` and `instance` are the scrape target's labels: a metric with its own `job`
    label would be renamed `exported_job` and break every query written against it."""
    from prometheus_client.parser import text_string_to_metric_families

    state = State(config=Config(primary=PrimaryConfig(host="resolve.local")))
    for kind in ("dump", "upload", "prune", "verify"):
        state.job(kind).runs["success"] += 1
        state.job(kind).last_duration = 1.0
        state.job(kind).last_success = 1.7e9
        state.job(kind).next_fire = 1.8e9
    state.backup("db").last_success = 1.7e9
    for family in text_string_to_metric_families(scrape(state)):
        for sample in family.samples:
            assert not {"job", "instance"} & set(sample.labels), (sample.name, sample.labels)


def test_configured_jobs_have_zero_series_before_their_first_run() -> None:
    state = State(config=Config(primary=PrimaryConfig(host="resolve.local")))
    text = scrape(state)
    for kind in ("dump", "prune", "verify"):
        for result in ("success", "failed"):
            assert f'laterbased_job_runs_total{{kind="{kind}",result="{result}"}} 0.0' in text
    assert 'kind="upload"' not in text  # no upload configured
