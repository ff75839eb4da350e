"""Prometheus metrics, rendered from :mod:`state` at scrape time.

A custom collector over a private ``CollectorRegistry``: metrics are read from the state
when Prometheus asks, so no worker has to remember to update a gauge, and tests that build
several daemons in one process never share a metric. Names follow postgres_exporter where
it has one (``*_lag_seconds``, ``*_safe_wal_size_bytes``, ``wal_status`` as a label). A fact
that is not known yet (no poll, no backup) has its family but no sample: absent, not 0.
"""

from __future__ import annotations

import platform
import time
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    InfoMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from laterbased import __version__
from laterbased.core.state import JobStatus, State
from laterbased.health import verdicts as health

PREFIX = "laterbased_"

WAL_STATUSES = ("reserved", "extended", "unreserved", "lost")
# Why the standby supervisor restarts postgres (standby/supervisor.py): each is exported at 0
# from the first scrape, so increase() sees the first restart and panels show 0, not "No data".
RESTART_REASONS = ("crash", "exited", "killed", "stuck")
RECEIVER_STATUSES = ("streaming", "starting", "waiting", "restarting", "stopping", "stopped")


class StateCollector(Collector):
    """Turns the daemon's state into metric families on every scrape."""

    def __init__(self, state: State) -> None:
        self.state = state

    def collect(self) -> Iterator[Metric]:
        yield from daemon_metrics(self.state)
        yield from standby_metrics(self.state)
        yield from replication_metrics(self.state)
        yield from slot_metrics(self.state)
        yield from job_metrics(self.state)
        yield from backup_metrics(self.state)
        yield from pitr_metrics(self.state)
        yield from health_metrics(self.state)


def _gauge(name: str, documentation: str, labels: list[str] | None = None) -> GaugeMetricFamily:
    return GaugeMetricFamily(f"{PREFIX}{name}", documentation, labels=labels)


def _counter(name: str, documentation: str, labels: list[str] | None = None) -> CounterMetricFamily:
    # prometheus_client appends "_total" to counter samples.
    return CounterMetricFamily(f"{PREFIX}{name}", documentation, labels=labels)


def _gauge_of(name: str, documentation: str, value: float | None) -> GaugeMetricFamily:
    """An unlabelled gauge with one sample when ``value`` is known, none when it is not
    (an unknown fact has no sample rather than a misleading zero)."""
    family = _gauge(name, documentation)
    if value is not None:
        family.add_metric([], float(value))
    return family


def _flag(value: bool | None) -> float:
    return 1.0 if value else 0.0


def daemon_metrics(state: State) -> Iterator[Metric]:
    build = InfoMetricFamily(f"{PREFIX}build", "laterbased version and Python runtime")
    build.add_metric([], {"version": __version__, "python": platform.python_version()})
    yield build
    up = _gauge("up", "1 while the daemon is running and ready")
    up.add_metric([], _flag(state.ready))
    yield up
    started = _gauge("start_time_seconds", "Unix time the daemon started")
    started.add_metric([], state.started_at)
    yield started
    restarts = _counter("worker_restarts", "Crashes of a daemon worker (restarted)", ["worker"])
    for worker, count in sorted(state.worker_restarts.items()):
        restarts.add_metric([worker], float(count))
    yield restarts
    last_event = _gauge(
        "last_event_timestamp_seconds",
        "Unix time of the newest recent event of each level (as on the status page)",
        ["level"],
    )
    newest: dict[str, float] = {}
    for event in state.events:
        newest[event.level] = max(newest.get(event.level, 0.0), event.at)
    for level, at in sorted(newest.items()):
        last_event.add_metric([level], at)
    yield last_event
    # The configured channels start at 0 (failures also count in "queue" and "error"), so
    # the first notification is an increase and panels show 0 rather than "No data".
    notify = state.config.notify
    channels = (["webhook"] if notify.webhook_url else []) + (["command"] if notify.command else [])
    sent_counts = dict.fromkeys(channels, 0) | dict(state.notifications_sent)
    failure_channels = [*channels, "queue", "error"] if channels else []
    failed_counts = dict.fromkeys(failure_channels, 0) | dict(state.notifications_failed)
    sent = _counter("notifications_sent", "Notifications delivered, by channel", ["channel"])
    for channel, count in sorted(sent_counts.items()):
        sent.add_metric([channel], float(count))
    yield sent
    failed = _counter(
        "notifications_failed", "Notifications that could not be delivered", ["channel"]
    )
    for channel, count in sorted(failed_counts.items()):
        failed.add_metric([channel], float(count))
    yield failed


def standby_metrics(state: State) -> Iterator[Metric]:
    standby = state.standby
    running = _gauge("standby_running", "1 while the local standby postgres runs")
    running.add_metric([], _flag(standby.running))
    yield running
    restarts = _counter(
        "standby_restarts", "Restarts of the local standby postgres, by reason", ["reason"]
    )
    known = dict.fromkeys(RESTART_REASONS, 0) if state.config.standby.enabled else {}
    for reason, count in sorted((known | dict(standby.restarts)).items()):
        restarts.add_metric([reason], float(count))
    yield restarts
    done = _gauge("standby_bootstrap_done_bytes", "Bytes copied by the running base backup")
    total = _gauge(
        "standby_bootstrap_size_bytes", "Expected size of the running base backup, if known"
    )
    if standby.phase == "bootstrapping":
        done.add_metric([], float(standby.bootstrap_bytes_done))
        if standby.bootstrap_bytes_total is not None:
            total.add_metric([], float(standby.bootstrap_bytes_total))
    yield done
    yield total


def replication_metrics(state: State) -> Iterator[Metric]:
    primary, local = state.primary, state.local
    primary_up = _gauge("primary_up", "1 when the last poll of the primary succeeded")
    if state.config.primary.host is not None:
        primary_up.add_metric([], _flag(primary.reachable))
    yield primary_up
    yield _gauge_of(
        "primary_server_version_num",
        "server_version_num of the primary",
        primary.server_version_num,
    )
    # Known only once both the accepted and the primary's system identifier are.
    identities_known = primary.system_identifier is not None and state.accepted_system_identifier
    yield _gauge_of(
        "primary_is_another_cluster",
        "1 when the primary's system identifier is not the accepted one (a fresh initdb or "
        "another server at its address): no backups of it, no slot on it",
        _flag(state.primary_is_stranger) if identities_known else None,
    )
    yield _gauge_of(
        "primary_last_poll_success_timestamp_seconds",
        "Unix time of the last good primary poll",
        primary.last_ok,
    )
    yield _gauge_of(
        "primary_facts_age_seconds",
        "Age of the primary-side facts (slot, the WAL position behind the lag): at most a "
        "poll interval while polls succeed, growing while the primary cannot be asked",
        None if primary.last_ok is None else max(0.0, time.time() - primary.last_ok),
    )
    in_recovery = _gauge("standby_in_recovery", "1 when the local postgres is in recovery")
    if local.in_recovery is not None:
        in_recovery.add_metric([], _flag(local.in_recovery))
    yield in_recovery
    receiver = _gauge(
        "wal_receiver_status",
        "1 for the local WAL receiver's current status (pg_stat_wal_receiver), else 0",
        ["status"],
    )
    if local.receiver_status is not None:
        known = list(RECEIVER_STATUSES)
        if local.receiver_status not in known:
            known.append(local.receiver_status)
        for status in known:
            receiver.add_metric([status], _flag(status == local.receiver_status))
    yield receiver
    yield _gauge_of(
        "standby_last_replay_timestamp_seconds",
        "Commit time of the last transaction the local standby replayed "
        "(pg_last_xact_replay_timestamp()); known to the standby alone",
        local.last_replay_timestamp,
    )
    yield _gauge_of(
        "standby_replay_paused",
        "1 while WAL replay on the local standby is paused (pg_wal_replay_pause())",
        None if local.replay_paused is None else _flag(local.replay_paused),
    )
    yield _gauge_of(
        "replication_lag_bytes",
        "Primary's current WAL position minus the standby's replay one",
        local.lag_bytes,
    )
    yield _gauge_of(
        "replication_lag_seconds",
        "How long ago the primary was where the standby's replay is now (0 when caught up)",
        local.lag_seconds,
    )


def slot_metrics(state: State) -> Iterator[Metric]:
    slot = state.primary.slot
    labels = ["slot_name"]
    exists = _gauge("replication_slot_exists", "1 when our slot exists on the primary", labels)
    active = _gauge("replication_slot_active", "1 when a standby uses our slot", labels)
    retained = _gauge(
        "replication_slot_retained_wal_bytes", "WAL the primary keeps for our slot", labels
    )
    safe = _gauge(
        "replication_slot_safe_wal_size_bytes",
        "WAL that can still be written before the slot is lost (PostgreSQL 13+)",
        labels,
    )
    wal_status = _gauge(
        "replication_slot_wal_status",
        "1 for the slot's current wal_status (reserved, extended, unreserved, lost), else 0",
        ["slot_name", "status"],
    )
    # Also while the primary cannot be asked: the last known facts, whose age is
    # laterbased_primary_facts_age_seconds (a gap would silence the slot alerts).
    if slot is not None:
        exists.add_metric([slot.name], _flag(slot.exists))
        if slot.exists:
            active.add_metric([slot.name], _flag(slot.active))
            if slot.retained_bytes is not None:
                retained.add_metric([slot.name], float(slot.retained_bytes))
            if slot.safe_wal_size is not None:
                safe.add_metric([slot.name], float(slot.safe_wal_size))
            if slot.wal_status is not None:
                for status in WAL_STATUSES:
                    wal_status.add_metric([slot.name, status], _flag(status == slot.wal_status))
    yield from (exists, active, retained, safe, wal_status)


def configured_job_kinds(state: State) -> list[str]:
    """The job kinds this configuration runs (their series exist from the first scrape)."""
    backup = state.config.backup
    if not backup.enabled:
        return []
    kinds = ["dump", "prune", "verify"]
    if state.config.upload.enabled:
        kinds.append("upload")
    if backup.optimize_schedule:
        kinds.append("optimize")
    return kinds


def job_metrics(state: State) -> Iterator[Metric]:
    # The label is "kind", not "job": Prometheus attaches its own "job" (the scrape target).
    runs = _counter(
        "job_runs",
        "Finished job runs by kind (dump, upload, prune, verify, optimize) and result",
        ["kind", "result"],
    )
    # A gauge of the last run, named for what it is (not a histogram of all runs).
    duration = _gauge(
        "job_last_duration_seconds", "Duration of the last finished run", ["kind"]
    )
    last_success = _gauge(
        "job_last_success_timestamp_seconds", "Unix time of the last successful run", ["kind"]
    )
    next_fire = _gauge(
        "job_next_fire_timestamp_seconds", "Unix time the job is scheduled next", ["kind"]
    )
    running = _gauge("job_running", "1 while a run of the job is in progress", ["kind"])
    overlap = _counter(
        "job_skipped_overlap", "Fires skipped because the previous run still ran", ["kind"]
    )
    # Every configured job starts with explicit zeros for success and failed, so that
    # increase(...{result="failed"}) sees the very first failure of a fresh daemon.
    jobs = {name: JobStatus() for name in configured_job_kinds(state)} | state.jobs
    for name, job in sorted(jobs.items()):
        counts = {"success": 0, "failed": 0} | dict(job.runs)
        for result, count in sorted(counts.items()):
            runs.add_metric([name, result], float(count))
        if job.last_duration is not None:
            duration.add_metric([name], job.last_duration)
        if job.last_success is not None:
            last_success.add_metric([name], job.last_success)
        if job.next_fire is not None:
            next_fire.add_metric([name], job.next_fire)
        running.add_metric([name], _flag(job.running is not None))
        overlap.add_metric([name], float(job.skipped_overlap))
    yield from (runs, duration, last_success, next_fire, running, overlap)


def backup_metrics(state: State) -> Iterator[Metric]:
    labels = ["database"]
    last_success = _gauge(
        "backup_last_success_timestamp_seconds", "Unix time of the newest good backup", labels
    )
    last_size = _gauge("backup_last_size_bytes", "Size of the newest good backup", labels)
    # Not "..._count": promtool reserves that suffix for histograms and summaries.
    local = _gauge("backups_local", "Backups kept in the local backup directory", labels)
    pending = _gauge("backup_pending_uploads", "Backups not yet uploaded", labels)
    last_failure = _gauge(
        "backup_last_failure_timestamp_seconds", "Unix time of the last failed backup", labels
    )
    for name in sorted(state.backups):
        summary = state.backups[name]
        if summary.is_globals:
            # Not a database: as database="(globals)" it would clash with a database of
            # that name (a duplicate series fails the whole scrape). Its health check
            # (laterbased_health_check_ok{check="globals"}) tells how it does.
            continue
        if summary.last_success is not None:
            last_success.add_metric([name], summary.last_success)
        if summary.last_size is not None:
            last_size.add_metric([name], float(summary.last_size))
        local.add_metric([name], float(summary.local_count))
        pending.add_metric([name], float(summary.pending_upload))
        if summary.last_failure is not None:
            last_failure.add_metric([name], summary.last_failure)
    yield from (last_success, last_size, local, pending, last_failure)
    deleted = _counter("retention_deleted", "Local backups deleted by retention")
    deleted.add_metric([], float(state.retention_deleted))
    yield deleted
    yield _gauge_of(
        "upload_last_success_timestamp_seconds",
        "Unix time of the last successful upload",
        state.upload_last_success,
    )
    uploaded = _counter("upload_bytes", "Bytes uploaded with rclone")
    uploaded.add_metric([], float(state.upload_bytes))
    yield uploaded


def pitr_metrics(state: State) -> Iterator[Metric]:
    """The point-in-time archive, only when ``pitr.enabled`` (no series for a feature off)."""
    if not state.config.pitr.enabled:
        return
    archive = state.archive
    streaming = _gauge("pitr_archive_streaming", "1 while pg_receivewal streams into the archive")
    streaming.add_metric([], _flag(archive.phase == "streaming"))
    yield streaming
    restarts = _counter("pitr_archive_restarts", "Restarts of pg_receivewal")
    restarts.add_metric([], float(archive.restarts))
    yield restarts
    yield _gauge_of(
        "pitr_window_earliest_timestamp_seconds",
        "The earliest moment restore --at can restore exactly (none: nothing restorable)",
        archive.earliest,
    )
    yield _gauge_of(
        "pitr_window_latest_timestamp_seconds",
        "The latest moment restore --at can restore exactly",
        archive.latest,
    )
    yield _gauge_of(
        "pitr_last_receive_timestamp_seconds", "When WAL last arrived in the archive",
        archive.last_receive,
    )
    yield _gauge_of("pitr_base_backups", "Base backups in the archive", archive.base_backups)
    if state.config.upload.enabled:
        yield _gauge_of(
            "pitr_pending_uploads",
            "Base backups and finished WAL files of the archive not yet uploaded",
            archive.pending_upload,
        )
    slot = archive.slot
    yield _gauge_of(
        "pitr_slot_retained_wal_bytes",
        "WAL the archive's slot keeps on the primary",
        slot.retained_bytes if slot is not None else None,
    )
    gaps = _gauge("pitr_window_gaps", "Runs of WAL segments missing from the archive")
    gaps.add_metric([], float(len(archive.gaps)))
    yield gaps


def health_metrics(state: State) -> Iterator[Metric]:
    checks = health.evaluate(state, time.time())
    healthy = _gauge("healthy", "1 when /healthz answers 200")
    healthy.add_metric([], _flag(health.is_healthy(checks)))
    yield healthy
    check_ok = _gauge("health_check_ok", "1 when this /healthz check passes", ["check"])
    for check in checks:
        check_ok.add_metric([check.name], _flag(check.ok))
    yield check_ok


def build_registry(state: State) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(StateCollector(state))
    return registry


def render(registry: CollectorRegistry) -> bytes:
    return generate_latest(registry)
