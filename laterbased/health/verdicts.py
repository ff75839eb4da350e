"""Health verdicts: pure functions of (state, config, clock), so they test without servers.

Each enabled part of the daemon contributes one or more :class:`Check`. ``/healthz`` is 200
only when every check is ok; otherwise 503 with the failing checks and why. A ``warning``
fails ``/healthz`` too: it means "a human should look", and nobody looks at a green light.
"""

from __future__ import annotations

import functools
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any, Literal
from zoneinfo import ZoneInfo

from laterbased.config import Config
from laterbased.core.clock import FUTURE_TOLERANCE
from laterbased.core.state import BackupSummary, SlotState, State
from laterbased.schedule.cron import period_of
from laterbased.units import format_duration, format_size

Severity = Literal["ok", "warning", "critical"]

# Standby phases that mean "on its way up": a warning, not yet a failure.
_STANDBY_COMING_UP = {"waiting", "bootstrapping", "starting"}

RECLONE_ADVICE = (
    "re-clone the standby: stop laterbased, move the standby data directory aside, "
    "start laterbased (it bootstraps a fresh copy), then delete the old directory"
)


@dataclass(frozen=True)
class Check:
    name: str
    severity: Severity
    reason: str

    @property
    def ok(self) -> bool:
        return self.severity == "ok"


def check_daemon(state: State, now: float) -> Check:
    if not state.ready:
        return Check("daemon", "critical", "starting up")
    return Check("daemon", "ok", f"up {now - state.started_at:.0f}s")


def _poll_grace(config: Config) -> float:
    """How old a successful poll may be before we stop believing it (the monitor is stuck)."""
    monitor = config.monitor
    return 3 * monitor.interval + config.primary.connect_timeout + 4 * monitor.query_timeout


def check_primary(state: State, now: float) -> Check:
    if is_promoted(state):
        return check_old_primary(state)
    primary = state.primary
    if primary.reachable is None:
        return Check("primary", "warning", "not polled yet")
    if not primary.reachable and primary.last_error_reason == "auth":
        return Check(
            "primary",
            "critical",
            f"login refused: {primary.last_error or 'unknown'}; fix primary.password "
            "(REPL_PASSWORD) or primary.user, or the primary's pg_hba.conf "
            "(laterbased check tells which)",
        )
    if not primary.reachable:
        return Check("primary", "critical", f"unreachable: {primary.last_error or 'unknown'}")
    if state.primary_is_stranger:
        config = state.config
        return Check(
            "primary",
            "critical",
            f"a different cluster answers at {config.primary.host}:{config.primary.port}: "
            f"system identifier {primary.system_identifier}, accepted "
            f"{state.accepted_system_identifier} ({state.accepted_how or '?'}); no backups "
            "of it and no replication slot on it. A new primary: laterbased accept-primary "
            f"--system-identifier {primary.system_identifier}. The real one lost: the "
            "standby and the backups hold its last state",
        )
    if primary.last_ok is not None and now - primary.last_ok > _poll_grace(state.config):
        return Check(
            "primary",
            "warning",
            f"no successful poll for {format_duration(now - primary.last_ok)}",
        )
    if primary.in_recovery:
        return Check(
            "primary",
            "warning",
            "the configured primary is in recovery (it is a standby itself): "
            "was another server promoted?",
        )
    return Check("primary", "ok", "reachable")


def check_old_primary(state: State) -> Check:
    """After a failover the configured primary is the old one: gone is what we expect."""
    primary, config = state.primary, state.config
    where = f"{config.primary.host}:{config.primary.port}"
    if primary_is_this_server(state):
        return Check("primary", "ok", f"{where} is this promoted server")
    if not primary.reachable:
        return Check("primary", "ok", f"{where} gone (promoted away): this server is the primary")
    if primary.in_recovery:
        return Check("primary", "ok", f"{where} runs again, as a standby (promoted away)")
    # Not a warning of its own: a promotion with --force knows it, and our slot left there
    # (check_slot) is what harms it; the advice stays on the page.
    return Check(
        "primary",
        "ok",
        f"the old primary {where} runs again and accepts writes, beside this promoted "
        "server: keep Resolve away from it (writes there never reach this server); stop "
        "its PostgreSQL, or make it a standby of this server (move its data directory "
        "aside and clone it from here)",
    )


def primary_is_this_server(state: State) -> bool:
    """``primary.host``/``port`` name our own promoted server (an operator pointed them
    here after the failover, as older instructions said)."""
    config, standby = state.config, state.standby
    port = standby.port or config.standby.promoted_port
    if config.primary.port != port:
        return False
    ours = {"127.0.0.1", "localhost", "::1", *config.standby.failover_address}
    ours |= {a.strip() for a in config.standby.listen_addresses.split(",")}
    return config.primary.host in ours


def check_standby(state: State, now: float) -> Check:
    """Is the local postgres child running (when the standby is enabled)."""
    standby = state.standby
    detail = f": {standby.message}" if standby.message else ""
    if standby.running:
        if standby.phase == "promoted":
            return Check("standby", "ok", "promoted: this server is now a primary")
        accepted = state.accepted_system_identifier
        if standby.system_identifier and accepted and standby.system_identifier != accepted:
            return Check(
                "standby",
                "critical",
                f"the standby data directory holds cluster {standby.system_identifier}, not "
                f"the accepted primary {accepted}: it cannot follow it. Set "
                "standby.reclone_on_mismatch: true to have it moved aside (never deleted) "
                "and cloned afresh, or stop laterbased, move standby.data_dir aside, start it",
            )
        return Check("standby", "ok", f"running pid {standby.pid}")
    if standby.phase in _STANDBY_COMING_UP:
        return Check("standby", "warning", f"{standby.phase}{detail}")
    return Check("standby", "critical", f"not running (phase {standby.phase}){detail}")


def is_streaming(state: State) -> bool:
    """True when our standby receives WAL from the primary right now.

    The standby's own ``pg_stat_wal_receiver`` says so when our role may read it; without
    ``pg_monitor`` its status reads NULL and the primary's ``pg_stat_replication`` decides,
    or, when that is hidden too, an active slot on the primary.
    """
    status = state.local.receiver_status
    if status == "streaming":
        return True
    if status != "unknown":
        return False
    seen_by_primary = state.primary.replication_state
    if seen_by_primary == "unknown":
        # Neither side lets our role read the status: a WAL receiver exists here and a
        # WAL sender holds our slot on the primary. Good enough; pg_monitor makes it exact.
        slot = state.primary.slot
        return slot is not None and slot.active
    return seen_by_primary == "streaming"


def check_replication(state: State, now: float) -> Check:
    """Our standby in recovery, streaming, within ``monitor.max_lag_*``."""
    local, config = state.local, state.config.monitor
    if local.reachable is None:
        return Check("replication", "warning", "standby not polled yet")
    if not local.reachable:
        return Check(
            "replication", "critical", f"standby not answering: {local.last_error or 'unknown'}"
        )
    if local.in_recovery is False:
        return Check("replication", "critical", "the local server is not in recovery")
    if not is_streaming(state):
        return Check(
            "replication",
            "critical",
            f"not streaming from the primary (wal receiver: {local.receiver_status or 'none'})",
        )
    if local.replay_paused:
        dump = state.jobs.get("dump")
        running = dump.running if dump is not None else None
        if (
            state.config.backup.source != "primary"
            and running is not None
            and running.source != "primary"
        ):
            # Our own dump pauses replay on the standby while it reads (no recovery
            # conflicts) and resumes it when it ends. A run that went to the primary
            # (auto never takes a standby already paused) paused nothing.
            return Check(
                "replication",
                "ok",
                f"streaming, replay paused for dump {running.id}, {describe_lag(state)}",
            )
        return Check(
            "replication",
            "warning",
            f"replay paused: the standby receives WAL but applies none ({describe_lag(state)}); "
            "someone ran pg_wal_replay_pause() on it: SELECT pg_wal_replay_resume() resumes it",
        )
    problems = []
    if local.lag_bytes is not None and local.lag_bytes > config.max_lag_bytes:
        problems.append(
            f"{format_size(local.lag_bytes)} behind (limit {format_size(config.max_lag_bytes)})"
        )
    if local.lag_seconds is not None and local.lag_seconds > config.max_lag_seconds:
        problems.append(
            f"{format_duration(local.lag_seconds)} behind "
            f"(limit {format_duration(config.max_lag_seconds)})"
        )
    if problems:
        return Check("replication", "warning", "streaming but " + " and ".join(problems))
    return Check("replication", "ok", f"streaming, {describe_lag(state)}")


def describe_lag(state: State) -> str:
    local = state.local
    if local.lag_bytes is None:
        return "lag unknown"
    seconds = "" if local.lag_seconds is None else f", {format_duration(local.lag_seconds)}"
    return f"lag {format_size(local.lag_bytes)}{seconds}"


def slot_verdict(slot: SlotState | None, config: Config, standby_running: bool) -> Check:
    """How dangerous our replication slot is for the primary's disk and for the standby."""
    if slot is None:
        return Check("slot", "warning", "slot not checked yet")
    name = slot.name
    if not slot.exists:
        if standby_running:
            return Check(
                "slot",
                "warning",
                f"slot {name} does not exist on the primary: the primary may remove WAL "
                "the standby still needs",
            )
        return Check("slot", "ok", f"slot {name} not created yet")
    retained = ""
    if slot.retained_bytes is not None:
        retained = f", retains {format_size(slot.retained_bytes)}"
    if slot.wal_status == "lost":
        return Check(
            "slot",
            "critical",
            f"slot {name} lost WAL the standby needs (wal_status=lost): the standby can never "
            f"catch up; {RECLONE_ADVICE}",
        )
    if slot.wal_status == "unreserved":
        return Check(
            "slot",
            "warning",
            f"slot {name} is past max_slot_wal_keep_size (wal_status=unreserved{retained}): "
            "the next checkpoint on the primary may remove WAL the standby needs",
        )
    if slot.wal_status == "extended":
        return Check(
            "slot",
            "warning",
            f"slot {name} holds WAL beyond max_wal_size (wal_status=extended{retained}): "
            "the standby is far behind; the primary's disk fills while this lasts",
        )
    threshold = config.monitor.slot_retained_warn_bytes
    if (
        not slot.active
        and slot.retained_bytes is not None
        and slot.retained_bytes > threshold
    ):
        return Check(
            "slot",
            "warning",
            f"slot {name} is inactive and retains {format_size(slot.retained_bytes)} of WAL "
            f"on the primary (limit {format_size(threshold)}); it grows until the standby "
            "reconnects and fills the primary's disk",
        )
    return Check("slot", "ok", f"slot {name} {'active' if slot.active else 'inactive'}{retained}")


def is_promoted(state: State) -> bool:
    """True once our standby was promoted: the local server is a primary of its own."""
    return state.standby.role == "primary" or state.standby.phase == "promoted"


def orphaned_slot_verdict(slot: SlotState | None, config: Config) -> Check:
    """After a promotion nothing uses our slot on the old primary any more; while it exists
    it keeps every WAL segment written there since the promotion, until that disk is full."""
    where = f"{config.primary.host}:{config.primary.port}"
    name = config.standby.slot_name if slot is None else slot.name
    if slot is None:
        return Check("slot", "warning", f"promoted; slot {name} on {where} not checked yet")
    if not slot.exists:
        return Check("slot", "ok", f"promoted; slot {name} no longer exists on {where}")
    retains = (
        "WAL" if slot.retained_bytes is None else f"{format_size(slot.retained_bytes)} of WAL"
    )
    return Check(
        "slot",
        "warning",
        f"promoted, but slot {name} still exists on the old primary {where} and retains "
        f"{retains} there, growing until its disk is full: drop it with SELECT "
        f"pg_drop_replication_slot('{name}') on {where}, or reconfigure primary.host "
        "to the server laterbased should watch now",
    )


def check_slot(state: State, now: float) -> Check:
    if is_promoted(state):
        return orphaned_slot_verdict(state.primary.slot, state.config)
    return slot_verdict(state.primary.slot, state.config, state.standby.running)


def backup_stale_after(config: Config, now: float) -> float:
    """``backup.stale_after``, or twice the schedule's period around ``now``."""
    if config.backup.stale_after is not None:
        return config.backup.stale_after
    # Whole hours are precise enough for a staleness limit, and the cache keeps croniter
    # off the /healthz path (it cost ~0.3 ms per database per request).
    return _stale_after_from_schedule(config.backup.schedule, config.zone, int(now // 3600))


@functools.lru_cache(maxsize=64)
def _stale_after_from_schedule(expression: str, zone: ZoneInfo, hour: int) -> float:
    try:
        period = period_of(expression, zone, datetime.fromtimestamp(hour * 3600, UTC))
    except ValueError:
        return 2 * 86400.0
    return 2 * period.total_seconds()


def backup_check_name(summary: BackupSummary) -> str:
    """``backup:<database>``; the globals' check is ``globals``, as ``backup:(globals)``
    may be a database's."""
    return "globals" if summary.is_globals else f"backup:{summary.database}"


def gone_for_good(summary: BackupSummary, state: State, now: float) -> bool:
    """Discovery no longer finds it and ``backup.gone_grace`` has passed since its last good
    backup: health forgets it (its backups stay listed as "database gone")."""
    if not summary.gone:
        return False
    since = summary.last_success or summary.last_failure or state.started_at
    return now - since > state.config.backup.gone_grace


def check_backup(summary: BackupSummary, state: State, now: float) -> Check:
    """One database: a recent good backup, and the last run did not fail."""
    name = backup_check_name(summary)
    if summary.gone:
        since = summary.last_success or summary.last_failure or state.started_at
        left = state.config.backup.gone_grace - (now - since)
        return Check(
            name,
            "warning",
            f"database gone: {summary.database!r} is no longer on the primary (dropped or "
            f"renamed?); its backups are kept; this check ends in {format_duration(left)}",
        )
    stale_after = backup_stale_after(state.config, now)
    if summary.last_run_failed is not None:
        # The latest run's result, in run order: comparing timestamps would let a success
        # stamped by a clock that ran fast hide every later failure.
        failed = summary.last_run_failed
    else:
        failed = summary.last_failure is not None and (
            summary.last_success is None or summary.last_failure > summary.last_success
        )
    error = f": {summary.last_error}" if summary.last_error else ""
    if summary.last_success is None:
        waited = now - state.started_at
        if waited > stale_after:
            return Check(
                name,
                "critical",
                f"no successful backup in {format_duration(waited)} since start{error}",
            )
        if failed:
            return Check(name, "warning", f"first backup failed{error}")
        return Check(name, "ok", "no backup yet")
    age = now - summary.last_success
    if -age > FUTURE_TOLERANCE.total_seconds():
        # Recorded while the clock ran fast (or it was set back since): such an age proves
        # nothing, and trusting it would put "stale" off by the clock's error.
        return Check(
            name,
            "warning",
            f"last good backup is dated {format_duration(-age)} in the future: was the "
            f"clock wrong? The next good run clears this{error if failed else ''}",
        )
    if age > stale_after:
        return Check(
            name,
            "critical",
            f"last good backup is {format_duration(age)} old "
            f"(limit {format_duration(stale_after)}){error if failed else ''}",
        )
    if failed:
        return Check(name, "warning", f"last run failed{error}")
    return Check(name, "ok", f"last good backup {format_duration(age)} ago")


def check_backup_run(state: State, now: float) -> Check | None:
    """The last dump run failed before we knew any database to judge (first run ever, the
    primary down, discovery found nothing): without this check /healthz would stay green.
    Once databases are known, the runner charges such a failure to each of them instead."""
    status = state.jobs.get("dump")
    last = status.last_run if status is not None else None
    if last is None or last.result != "failed":
        return None
    reason = last.detail or "see the log"
    waited = now - state.started_at
    if waited > backup_stale_after(state.config, now):
        return Check(
            "backup",
            "critical",
            f"no successful backup in {format_duration(waited)} since start; "
            f"backup run failed: {reason}",
        )
    return Check("backup", "warning", f"backup run failed: {reason}")


def backup_databases(state: State) -> list[str]:
    """Databases to judge: those configured plus those any backup run has reported."""
    return sorted(set(state.config.backup.databases) | set(state.backups))


def check_upload(summary: BackupSummary, state: State, now: float) -> Check:
    name = "globals-upload" if summary.is_globals else f"upload:{summary.database}"
    oldest = summary.oldest_pending_upload
    limit = state.config.upload.pending_max_age
    if oldest is not None and now - oldest > limit:
        return Check(
            name,
            "warning",
            f"{summary.pending_upload} backup(s) waiting for upload, the oldest for "
            f"{format_duration(now - oldest)} (limit {format_duration(limit)})",
        )
    if summary.pending_upload:
        return Check(name, "ok", f"{summary.pending_upload} backup(s) waiting for upload")
    return Check(name, "ok", "nothing waiting")


def check_verify(state: State, now: float) -> Check | None:
    """The verify job (and restore drill): its last run, and any database whose newest
    backup is marked as failing verification in its manifest (survives a restart).
    None until there is something to judge."""
    status = state.jobs.get("verify")
    last = status.last_run if status is not None else None
    if last is not None and last.result == "failed":
        return Check("verify", "critical", f"verify run {last.id} failed: {last.detail or '?'}")
    damaged = [
        f"{summary.label}: {summary.verify_failed}"
        for _name, summary in sorted(state.backups.items())
        if summary.verify_failed
    ]
    if damaged:
        return Check(
            "verify", "critical", "newest backup failed verification: " + "; ".join(damaged)
        )
    if last is None or last.finished is None:
        return None
    return Check("verify", "ok", f"last verify {format_duration(now - last.finished)} ago passed")


def evaluate(state: State, now: float) -> list[Check]:
    """All checks that apply to the current configuration, in a stable order."""
    checks = [check_daemon(state, now)]
    config = state.config
    if config.primary.host is not None:
        checks.append(check_primary(state, now))
    if config.standby.enabled:
        checks.append(check_standby(state, now))
        promoted = is_promoted(state)
        if state.standby.running and not promoted:
            checks.append(check_replication(state, now))
        # After a promotion the old primary is still watched: our slot there would keep
        # its WAL forever (orphaned_slot_verdict).
        if state.primary.reachable:
            checks.append(check_slot(state, now))
    if config.backup.enabled:
        databases = backup_databases(state)
        for database in databases:
            summary = state.backups.get(database) or BackupSummary(database=database)
            if gone_for_good(summary, state, now):
                continue
            checks.append(check_backup(summary, state, now))
            if config.upload.enabled:
                checks.append(check_upload(summary, state, now))
        run_failed = None if databases else check_backup_run(state, now)
        if run_failed is not None:
            checks.append(run_failed)
        verified = check_verify(state, now)
        if verified is not None:
            checks.append(verified)
    if config.pitr.enabled:
        checks.append(check_pitr(state, now))
        if config.upload.enabled:
            checks.append(check_pitr_upload(state, now))
    return checks


def iso_utc(moment: float | None) -> str | None:
    """An epoch time as ISO 8601 UTC (``2026-11-29T08:21:26Z``), or None."""
    if moment is None:
        return None
    return datetime.fromtimestamp(moment, UTC).isoformat().replace("+00:00", "Z")


PITR_RESTARTS_CRITICAL = 3


def check_pitr(state: State, now: float) -> Check:
    """The point-in-time archive: pg_receivewal streaming, a base backup to start from, and
    no segment missing in the window (a gap: nothing before it can be carried past it). A
    gap older than the window (``pitr.window``) no longer breaks it."""
    archive = state.archive
    if archive.phase != "streaming":
        detail = f": {archive.message}" if archive.message else ""
        # One restart is a hiccup; a child that keeps failing (no REPLICATION right, the
        # primary gone) leaves the window growing stale.
        coming_up = archive.phase == "starting" or (
            archive.phase == "restarting" and archive.failed_starts < PITR_RESTARTS_CRITICAL
        )
        severity: Severity = "warning" if coming_up else "critical"
        return Check("pitr", severity, f"WAL archive not streaming (phase {archive.phase}){detail}")
    window_start = now - state.config.pitr_window
    hole = ""
    first, last = archive.gaps[-1] if archive.gaps else ("", "")
    if archive.gaps and _healed(archive.gap_since, archive.earliest, window_start):
        # A base backup after the gap made the window whole again from it on: the archive
        # works, and a week of 503 (the gap stays in the window that long) would page every
        # day for nothing anyone can do. The hole stays in the reason, status and metrics.
        hole = (
            f"; WAL segments {first} to {last} are missing, so moments from "
            f"{iso_utc(archive.gap_since)} to {iso_utc(archive.earliest)} cannot be restored"
        )
    elif archive.gaps and (archive.gap_since is None or archive.gap_since >= window_start):
        since = iso_utc(archive.gap_since) or "unknown"
        ranges = "; ".join(f"{iso_utc(a)} to {iso_utc(b)}" for a, b in archive.ranges)
        restorable = f"restorable: {ranges}" if ranges else "nothing restorable to a moment"
        if archive.earliest is None:
            restorable += " (nothing after the gap until the next base backup)"
        return Check(
            "pitr",
            "critical",
            f"the window is broken since {since}: WAL segments {first} to {last} are missing "
            f"from the archive; {restorable}",
        )
    slot = archive.slot
    if slot is not None and slot.wal_status == "lost":
        return Check(
            "pitr",
            "critical",
            f"the archive's slot {slot.name} lost WAL on the primary (wal_status=lost): "
            "segments are missing from the archive from here on until pg_receivewal catches up",
        )
    retained = slot.retained_bytes if slot is not None else None
    if retained is not None and retained > state.config.monitor.slot_retained_warn_bytes:
        return Check(
            "pitr",
            "warning",
            f"the archive's slot {slot.name if slot else ''} keeps {format_size(retained)} of "
            "WAL on the primary: pg_receivewal is behind (is the backup disk full or slow?)",
        )
    if archive.earliest is None and archive.base_backups and not archive.ranges:
        # Base backups there, none usable, no hole between segments: the WAL they start
        # from is gone (deleted by hand, lost) — not 'the first one is under way'.
        return Check(
            "pitr",
            "critical",
            f"{archive.base_backups} base backup(s) but nothing restorable: the WAL they start "
            "from is missing from the archive (deleted?); restorable again from the next base "
            "backup on",
        )
    if archive.earliest is None:
        error = archive.last_base_backup_error
        reason = f"the last one failed: {error}" if error else "the first one is under way"
        return Check("pitr", "warning", f"no base backup yet, nothing restorable ({reason})")
    return Check(
        "pitr",
        "ok",
        f"streaming; restorable from {iso_utc(archive.earliest)} to {iso_utc(archive.latest)}"
        f"{hole}",
    )


def _healed(gap_since: float | None, earliest: float | None, window_start: float) -> bool:
    """A gap inside the window that a later base backup has left behind: the newest unbroken
    run (from ``earliest``) starts after it."""
    return (
        gap_since is not None
        and gap_since >= window_start
        and earliest is not None
        and earliest > gap_since
    )


def check_pitr_upload(state: State, now: float) -> Check:
    """The archive's off-site copy, judged like a database's uploads: a warning when the
    oldest base backup or WAL file waiting for it waits longer than
    ``upload.pending_max_age``."""
    archive = state.archive
    oldest = archive.oldest_pending_upload
    limit = state.config.upload.pending_max_age
    if archive.pending_upload and oldest is not None and now - oldest > limit:
        return Check(
            "pitr-upload",
            "warning",
            f"{archive.pending_upload} point-in-time archive file(s) waiting for upload, the "
            f"oldest for {format_duration(now - oldest)} (limit {format_duration(limit)})",
        )
    if archive.pending_upload:
        return Check(
            "pitr-upload",
            "ok",
            f"{archive.pending_upload} point-in-time archive file(s) waiting for upload",
        )
    return Check("pitr-upload", "ok", "nothing waiting")


def is_healthy(checks: list[Check]) -> bool:
    return all(check.ok for check in checks)


def report(checks: list[Check]) -> dict[str, Any]:
    """The JSON body of ``/healthz``."""
    return {
        "status": "healthy" if is_healthy(checks) else "unhealthy",
        "checks": [asdict(check) | {"ok": check.ok} for check in checks],
        "failing": [check.name for check in checks if not check.ok],
    }
