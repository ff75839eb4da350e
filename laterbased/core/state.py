"""The one in-memory model of "how are we doing".

Workers write facts here; ``health.py``, ``metrics.py`` and the HTTP pages only read them.
Everything is plain data so health verdicts stay pure functions of (state, config, clock).
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Literal

from laterbased.config import Config
from laterbased.core.actions import Action

Role = Literal["replica", "primary", "unknown"]

# The key of the globals' (roles, tablespaces) summary in ``State.backups``: PostgreSQL names
# cannot contain NUL, so no database, discovered or configured, can ever have this key (a
# database may well be called "(globals)", the name people see).
GLOBALS_KEY = "\x00globals"
GLOBALS_LABEL = "(globals)"


@dataclass
class StandbyState:
    """What the standby supervisor knows about the local postgres child."""

    enabled: bool = False
    # disabled | waiting | bootstrapping | starting | running | restarting | stopping
    # | stopped | promoted | failed
    phase: str = "disabled"
    role: Role = "unknown"
    pid: int | None = None
    # The port the running postgres was started with (a reloaded standby.port applies
    # only at its next start): where liveness checks and the monitor must ask.
    port: int | None = None
    started_at: float | None = None
    restarts: Counter[str] = field(default_factory=Counter)
    last_exit: str | None = None
    message: str | None = None
    bootstrap_bytes_done: int = 0
    bootstrap_bytes_total: int | None = None
    promoted_at: float | None = None
    # The system identifier in the data directory postgres runs on (pg/identity.py).
    system_identifier: str | None = None
    # Where the running postgres listens (listen_addresses), beside ``port``.
    listen_addresses: str | None = None
    # After a promotion: why it could not move to standby.failover_address/failover_port
    # (None when it did, or when no failover is planned), and the Resolve libraries it
    # serves (listed on the promoted server), for the status page's instructions.
    failover_problem: str | None = None
    libraries: tuple[str, ...] = ()
    # library -> the login owning it there: the user the workstations enter.
    library_owners: dict[str, str] = field(default_factory=dict)
    # Set to make the supervisor look at its postgres now instead of at its next check
    # (a promotion asks it to move the server to the failover endpoint).
    wake: asyncio.Event = field(default_factory=asyncio.Event, repr=False, compare=False)

    @property
    def running(self) -> bool:
        return self.phase in {"running", "promoted"} and self.pid is not None


@dataclass
class SlotState:
    """Our physical replication slot as the primary reports it."""

    name: str
    exists: bool = False
    active: bool = False
    restart_lsn: str | None = None
    retained_bytes: int | None = None
    wal_status: str | None = None  # reserved | extended | unreserved | lost (PG >= 13)
    safe_wal_size: int | None = None


@dataclass
class PrimaryState:
    """Facts from polling the primary."""

    reachable: bool | None = None  # None until the first poll
    last_ok: float | None = None
    last_error: str | None = None
    # PgUnavailable.reason of the last failure ("auth": it answered but refused the login).
    last_error_reason: str | None = None
    server_version_num: int | None = None
    system_identifier: str | None = None
    current_lsn: str | None = None
    slot: SlotState | None = None
    # pg_stat_replication row of our standby, if connected.
    replication_state: str | None = None
    write_lag_seconds: float | None = None
    flush_lag_seconds: float | None = None
    replay_lag_seconds: float | None = None
    # Monitor (issue 5): the standby's positions as the primary sees them, and whether the
    # "primary" is itself in recovery (someone promoted something else).
    sent_lsn: str | None = None
    replay_lsn: str | None = None
    in_recovery: bool | None = None


@dataclass
class LocalServerState:
    """Facts from polling our own postgres (standby, or primary after promotion)."""

    reachable: bool | None = None
    last_error: str | None = None
    in_recovery: bool | None = None
    receiver_status: str | None = None
    sender_host: str | None = None
    receive_lsn: str | None = None
    replay_lsn: str | None = None
    last_replay_timestamp: float | None = None
    # pg_wal_replay_pause() was called on the standby: it receives WAL but applies none.
    replay_paused: bool | None = None
    lag_bytes: int | None = None
    lag_seconds: float | None = None
    # Monitor (issue 5): last successful poll; our WAL position once promoted.
    last_ok: float | None = None
    current_lsn: str | None = None


@dataclass
class JobRun:
    """One run of a job: a dump, an upload, a prune, a verify."""

    id: str
    job: str
    started: float
    finished: float | None = None
    result: str | None = None  # success | failed | skipped | unchanged | cancelled
    detail: str | None = None
    database: str | None = None
    # A dump run: the server it reads (primary | standby | promoted), once chosen.
    source: str | None = None


@dataclass
class JobStatus:
    """Per job kind: the latest runs, counters and what comes next."""

    runs: Counter[str] = field(default_factory=Counter)  # by result
    skipped_overlap: int = 0
    last_run: JobRun | None = None
    last_success: float | None = None
    last_duration: float | None = None
    next_fire: float | None = None
    running: JobRun | None = None


@dataclass
class BackupSummary:
    """The newest good backup of one database, and how many are kept locally."""

    database: str
    last_success: float | None = None
    last_size: int | None = None
    last_file: str | None = None
    local_count: int = 0
    pending_upload: int = 0
    oldest_pending_upload: float | None = None
    last_failure: float | None = None
    last_error: str | None = None
    # Did the latest run that reached this database fail? Set in run order, so health need
    # not compare timestamps (a clock that ran fast, then was set back, would hide a failure).
    last_run_failed: bool | None = None
    # Why the newest backup failed verify (or its restore drill), from its manifest.
    verify_failed: str | None = None
    # Discovery no longer finds it on the primary (dropped, renamed): its backups stay,
    # and health forgets it backup.gone_grace after its last good backup.
    gone: bool = False

    @property
    def is_globals(self) -> bool:
        return self.database == GLOBALS_KEY

    @property
    def label(self) -> str:
        """The name to show: the database's, or ``(globals)``."""
        return GLOBALS_LABEL if self.is_globals else self.database


@dataclass
class ArchiveState:
    """The point-in-time archive: the pg_receivewal child and the window it keeps."""

    enabled: bool = False
    # disabled | starting | streaming | restarting | stopped | failed
    phase: str = "disabled"
    pid: int | None = None
    started_at: float | None = None
    restarts: int = 0
    failed_starts: int = 0  # in a row, counting runs gone within 2 min; reset by a longer one
    last_exit: str | None = None
    message: str | None = None
    last_segment: str | None = None  # the newest file in @wal (the .partial while streaming)
    last_receive: float | None = None  # when WAL last arrived (that file's mtime)
    # The restorable window (ISO facts as epoch seconds), the holes in it (first, last
    # missing segment) and when the newest hole began.
    earliest: float | None = None
    latest: float | None = None
    gaps: tuple[tuple[str, str], ...] = ()
    gap_since: float | None = None
    # Every restorable (earliest, latest), the ones cut off by a gap too, oldest first.
    ranges: tuple[tuple[float, float], ...] = ()
    base_backups: int = 0
    last_base_backup: float | None = None
    last_base_backup_error: str | None = None
    # Why a base backup is wanted before the schedule's next one (a gap cut the window:
    # nothing after it is restorable until one is taken); None when the schedule will do.
    base_backup_wanted: str | None = None
    # With upload on: finished WAL files and base backups without an off-site copy yet, and
    # since when the oldest of them waits (epoch).
    pending_upload: int = 0
    oldest_pending_upload: float | None = None
    # The archive's own slot on the primary (pitr.slot_name), as last polled: the WAL it
    # keeps there while pg_receivewal is behind or down fills the Resolve server's disk.
    slot: SlotState | None = None


@dataclass
class Event:
    """A recent noteworthy event for the status page (errors, restarts, promotions)."""

    at: float
    level: str
    message: str


@dataclass
class State:
    """Root of the shared state. Owned by the daemon, handed to every worker."""

    config: Config
    started_at: float = field(default_factory=time.time)
    standby: StandbyState = field(default_factory=StandbyState)
    primary: PrimaryState = field(default_factory=PrimaryState)
    local: LocalServerState = field(default_factory=LocalServerState)
    archive: ArchiveState = field(default_factory=ArchiveState)
    jobs: dict[str, JobStatus] = field(default_factory=dict)
    backups: dict[str, BackupSummary] = field(default_factory=dict)
    events: deque[Event] = field(default_factory=lambda: deque(maxlen=50))
    worker_restarts: Counter[str] = field(default_factory=Counter)
    retention_deleted: int = 0
    upload_last_success: float | None = None
    upload_bytes: int = 0
    # Notifications (notify.py) by channel: webhook, command; failures also: queue, error.
    notifications_sent: Counter[str] = field(default_factory=Counter)
    notifications_failed: Counter[str] = field(default_factory=Counter)
    ready: bool = False
    # The primary cluster laterbased accepted (pg/identity.py, persisted in the state dir)
    # and why; health compares it with primary.system_identifier.
    accepted_system_identifier: str | None = None
    accepted_how: str | None = None
    # Operator actions the running workers offer, by name (core/actions.py); the web part
    # answers POST /api/<name> with them.
    actions: dict[str, Action] = field(default_factory=dict)
    # Set while the backup worker holds the backup directory (its flock, .partial/ cleaned):
    # a backup on demand runs only then, never beside another writer.
    backup_directory_held: asyncio.Event = field(default_factory=asyncio.Event)
    # The token this daemon wrote into <state_dir> for commands on this host (backup-now,
    # promote); POST /api/<action> accepts it beside http.token (core/local_token.py).
    local_token: str | None = None

    @property
    def primary_is_stranger(self) -> bool:
        """The primary last seen is another cluster than the one laterbased accepted."""
        observed, accepted = self.primary.system_identifier, self.accepted_system_identifier
        return observed is not None and accepted is not None and observed != accepted

    def job(self, name: str) -> JobStatus:
        return self.jobs.setdefault(name, JobStatus())

    def backup(self, database: str) -> BackupSummary:
        return self.backups.setdefault(database, BackupSummary(database=database))

    def record_event(self, level: str, message: str) -> None:
        self.events.append(Event(at=time.time(), level=level, message=message))
