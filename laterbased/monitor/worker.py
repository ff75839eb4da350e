"""The monitor worker: poll the primary and our standby, publish facts, log what changes.

Both servers are polled concurrently, each over its own long-lived connection with a connect
timeout and a per-query timeout, so a slow or dead primary costs the event loop nothing.
A server that fails is retried with a doubling delay (from ``monitor.interval`` up to
``monitor.interval`` + :data:`RECONNECT_SLACK`); its state says "unreachable" immediately,
not after the delay, and a server that comes back is seen within two poll intervals plus
that slack, however long it was gone.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import asyncpg

from laterbased.config import Config
from laterbased.core.state import LocalServerState, PrimaryState, State
from laterbased.health import verdicts as health
from laterbased.monitor.lsn import LagClock, parse_lsn
from laterbased.monitor.probes import probe_local, probe_primary, server_version_num
from laterbased.pg.connect import PgUnavailable, connect
from laterbased.records import identity
from laterbased.units import format_duration, format_size

if TYPE_CHECKING:
    from laterbased.core.context import WorkerContext

logger = logging.getLogger(__name__)

# The longest a failed server waits for its next try beyond one poll interval. Small on
# purpose: a cheap refused connection costs nothing, while a long backoff kept a returning
# primary "unreachable" (and its alert firing) for up to a minute after it was back.
RECONNECT_SLACK = 5.0
# Errors that mean "this server cannot answer right now" rather than a bug of ours.
_SERVER_TROUBLE: tuple[type[BaseException], ...] = (
    PgUnavailable,
    OSError,
    TimeoutError,
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    # asyncpg's word for a connection whose protocol state it lost track of ("cannot switch
    # to state 12; another operation is in progress", "not connected"): seen in a test run
    # while the primary was stopped, as a crash of the whole monitor with a traceback.
    # It is closed and opened afresh at the next poll like any broken connection.
    asyncpg.InternalClientError,
)


@dataclass
class _Target:
    """One server we poll: its connection and when we may try again after a failure."""

    label: str
    conn: Any = None
    version_num: int = 0
    failures: int = 0
    retry_at: float = 0.0
    # IDENTIFY_SYSTEM's answer when pg_control_system() gives none (9.5): asked once per
    # connection (a replaced server breaks the connection), not at every poll.
    replication_identifier: str | None = None
    replication_identifier_asked: bool = False

    def close(self) -> None:
        # terminate() is synchronous: safe in finally blocks and during cancellation.
        if self.conn is not None:
            with contextlib.suppress(Exception):
                self.conn.terminate()
        self.conn = None
        self.replication_identifier = None
        self.replication_identifier_asked = False

    def failed(self, interval: float) -> float:
        self.close()
        self.failures += 1
        delay = min(interval * 2.0 ** min(self.failures - 1, 30), interval + RECONNECT_SLACK)
        self.retry_at = time.monotonic() + delay
        return delay

    def succeeded(self) -> None:
        self.failures = 0
        self.retry_at = 0.0


def local_host(config: Config) -> str:
    """Where our standby listens: its first listen address, loopback for wildcards."""
    first = config.standby.listen_addresses.split(",")[0].strip()
    if first in {"", "*", "0.0.0.0"}:  # noqa: S104 - mapping a wildcard to loopback
        return "127.0.0.1"
    if first == "::":
        return "::1"
    return first


def _error_text(exc: BaseException, timeout: float) -> str:
    if isinstance(exc, TimeoutError):
        return f"no answer within {timeout:g}s"
    return str(exc) or type(exc).__name__


class Monitor:
    """Polls once per :meth:`poll_once`; owns its connections (call :meth:`close`)."""

    def __init__(self, state: State) -> None:
        self.state = state
        self.primary = _Target("primary")
        self.local = _Target("standby")
        self.clock = LagClock()
        self._reported: dict[str, object] = {}
        self._connected_with: object = None

    @property
    def config(self) -> Config:
        return self.state.config

    def close(self) -> None:
        self.primary.close()
        self.local.close()

    async def poll_once(self) -> None:
        settings = (self.config.primary, self._local_port(), local_host(self.config))
        if settings != self._connected_with:
            # A reload changed where or how we connect: drop connections made the old way.
            self.close()
            self.primary.succeeded()
            self.local.succeeded()
            self.clock = LagClock()
            self._connected_with = settings
        poll_local = self.config.standby.enabled and self.state.standby.running
        async with asyncio.TaskGroup() as group:
            if self.config.primary.host is not None:
                group.create_task(self._poll_primary())
            if poll_local:
                group.create_task(self._poll_local())
        if not poll_local:
            # A stopped standby must not keep answering /replica with its last facts.
            self.local.close()
            self.state.local = LocalServerState()
        self._compute_lag(time.time())
        self._report_changes()

    def _local_port(self) -> int:
        # Where the standby listens now: a reloaded standby.port applies at its next start.
        return self.state.standby.port or self.config.standby.port

    # --- polling ------------------------------------------------------------------------

    async def _connect(self, target: _Target, host: str, port: int, sslmode: str) -> Any:
        if target.conn is not None and not target.conn.is_closed():
            return target.conn
        config = self.config
        password = config.primary.password.reveal() if config.primary.password else None
        target.conn = await connect(
            host=host,
            port=port,
            user=config.primary.user,
            password=password,
            database=config.primary.database,
            timeout=config.primary.connect_timeout,
            application_name="laterbased-monitor",
            sslmode=sslmode,
        )
        target.version_num = await server_version_num(target.conn, config.monitor.query_timeout)
        return target.conn

    def _budget(self) -> float:
        # Belt and braces over asyncpg's own timeouts: one poll of one server can never
        # take longer than a connect plus a few queries.
        return self.config.primary.connect_timeout + 5 * self.config.monitor.query_timeout

    async def _poll_primary(self) -> None:
        target, config = self.primary, self.config
        if time.monotonic() < target.retry_at:
            return
        assert config.primary.host is not None  # noqa: S101 - checked by poll_once
        timeout = config.monitor.query_timeout
        try:
            async with asyncio.timeout(self._budget()):
                conn = await self._connect(
                    target, config.primary.host, config.primary.port, config.primary.sslmode
                )
                facts = await probe_primary(conn, config, target.version_num, timeout)
        except _SERVER_TROUBLE as exc:
            delay = target.failed(config.monitor.interval)
            previous = self.state.primary
            self.state.primary = PrimaryState(
                reachable=False,
                last_ok=previous.last_ok,
                last_error=_error_text(exc, self._budget()),
                last_error_reason=exc.reason if isinstance(exc, PgUnavailable) else None,
                server_version_num=previous.server_version_num,
                system_identifier=previous.system_identifier,
                # The last facts the primary gave, as of last_ok: dashboards and the slot
                # and lag alerts keep their series instead of a gap (their age is
                # laterbased_primary_facts_age_seconds).
                current_lsn=previous.current_lsn,
                slot=previous.slot,
                in_recovery=previous.in_recovery,
            )
            logger.debug("primary poll failed; next try in %.1fs: %s", delay, exc)
            return
        target.succeeded()
        if facts.system_identifier is None:
            if not target.replication_identifier_asked:
                target.replication_identifier_asked = True
                target.replication_identifier = await identity.primary_over_replication(
                    config, timeout
                )
            facts.system_identifier = target.replication_identifier
        self.clock.observe(time.time(), parse_lsn(facts.current_lsn or "0/0"))
        self.state.primary = facts
        # Which cluster this is, against the one we accepted (first contact accepts one).
        verdict = await asyncio.to_thread(identity.settle, config, facts.system_identifier)
        if verdict.accepted is not None:
            self.state.accepted_system_identifier = verdict.accepted.system_identifier
            self.state.accepted_how = verdict.accepted.how

    async def _poll_local(self) -> None:
        target, config = self.local, self.config
        if time.monotonic() < target.retry_at:
            return
        timeout = config.monitor.query_timeout
        try:
            async with asyncio.timeout(self._budget()):
                # Our own standby on loopback: primary.sslmode (and its certificate's
                # host name) is about the network link to the primary, not this one.
                conn = await self._connect(target, local_host(config), self._local_port(), "prefer")
                facts = await probe_local(conn, target.version_num, timeout)
        except _SERVER_TROUBLE as exc:
            target.failed(config.monitor.interval)
            previous = self.state.local
            # A standby that stopped answering has not replayed anything since we last saw
            # it: keep its last positions so the lag keeps growing instead of vanishing.
            self.state.local = LocalServerState(
                reachable=False,
                last_error=_error_text(exc, self._budget()),
                in_recovery=previous.in_recovery,
                receive_lsn=previous.receive_lsn,
                replay_lsn=previous.replay_lsn,
                last_replay_timestamp=previous.last_replay_timestamp,
            )
            return
        target.succeeded()
        self.state.local = facts

    def _compute_lag(self, now: float) -> None:
        """Lag bytes = primary's current WAL position − standby's replay position.

        While the primary cannot be asked, its last known position stands in, raised to
        what the standby has received since (the standby alone knows that much): a lower
        bound that still grows while replay is stuck, instead of no lag at all."""
        local, primary = self.state.local, self.state.primary
        if not (local.in_recovery and local.replay_lsn):
            return
        if not primary.current_lsn or primary.in_recovery:
            local.lag_bytes = None
            local.lag_seconds = None
            return
        replay = parse_lsn(local.replay_lsn)
        newest = parse_lsn(primary.current_lsn)
        if not primary.reachable and local.receive_lsn:
            newest = max(newest, parse_lsn(local.receive_lsn))
        # The two servers were asked at slightly different moments: never report < 0.
        local.lag_bytes = max(0, newest - replay)
        local.lag_seconds = self.clock.lag_seconds(now, replay)

    # --- telling humans -----------------------------------------------------------------

    def _changed(self, key: str, value: object) -> bool:
        """True (and remember) when ``value`` differs from what we last reported."""
        if key in self._reported and self._reported[key] == value:
            return False
        first = key not in self._reported
        self._reported[key] = value
        return not first or value is not None

    def _report_changes(self) -> None:
        state, config = self.state, self.config
        primary, local = state.primary, state.local
        where = f"{config.primary.host}:{config.primary.port}"
        # Keyed on the error text too: "connection refused" turning into "password
        # authentication failed" is news for the operator.
        primary_key = (primary.reachable, None if primary.reachable else primary.last_error)
        if config.primary.host is not None and self._changed("primary", primary_key):
            if primary.reachable:
                logger.info(
                    "primary reachable host=%s version=%s system_identifier=%s",
                    where,
                    primary.server_version_num,
                    primary.system_identifier or "unknown",
                )
                state.record_event("info", f"primary {where} reachable")
            elif primary.reachable is False and primary.last_error_reason == "auth":
                # It answers: "unreachable" would send the operator to check cables.
                logger.error(
                    "primary refused our login host=%s error=%s", where, primary.last_error
                )
                state.record_event(
                    "error", f"primary {where} refused our login: {primary.last_error}"
                )
            elif primary.reachable is False and health.is_promoted(state):
                # After a failover the old primary being gone is the expected world.
                logger.info("old primary gone (promoted away) host=%s error=%s", where,
                            primary.last_error)
                state.record_event("info", f"old primary {where} gone (promoted away)")
            elif primary.reachable is False:
                logger.error("primary unreachable host=%s error=%s", where, primary.last_error)
                state.record_event("error", f"primary {where} unreachable: {primary.last_error}")
        stranger = state.primary_is_stranger
        identities = (primary.system_identifier, state.accepted_system_identifier)
        if primary.reachable and self._changed("stranger", identities if stranger else None):
            if stranger:
                assert primary.system_identifier is not None  # noqa: S101 - stranger
                message = identity.mismatch_message(
                    where,
                    primary.system_identifier,
                    state.accepted_system_identifier or "?",
                    state.accepted_how or "?",
                    "the primary's address",
                )
                logger.critical("%s", message)
                state.record_event("critical", message)
            else:
                logger.info(
                    "primary %s is the accepted cluster again system_identifier=%s",
                    where,
                    primary.system_identifier,
                )
        if primary.reachable and self._changed("primary_in_recovery", primary.in_recovery):
            if primary.in_recovery:
                logger.warning("primary %s is in recovery: it is a standby, not a primary", where)
                state.record_event("warning", f"primary {where} is in recovery")
        if primary.reachable and self._changed("replication_state", primary.replication_state):
            logger.info(
                "standby on the primary: pg_stat_replication state=%s",
                primary.replication_state or "absent (not connected)",
            )
        # Also after a promotion: our slot left on the old primary keeps its WAL forever.
        if config.standby.enabled and primary.reachable:
            self._report_slot()
        if state.standby.running and self._changed(
            "receiver", (local.reachable, local.in_recovery, local.receiver_status)
        ):
            self._report_receiver()
        if local.reachable and local.in_recovery:
            self._report_lag()
        hidden = local.receiver_status == "unknown" or primary.replication_state == "unknown"
        if hidden and self._changed("privilege_hint", True):
            logger.warning(
                "role %s may not read replication status (pg_stat_wal_receiver / "
                "pg_stat_replication show NULL); streaming is judged from the slot instead. "
                "For exact status run on the primary: GRANT pg_monitor TO %s",
                config.primary.user,
                config.primary.user,
            )

    def _report_slot(self) -> None:
        state = self.state
        verdict = health.check_slot(state, time.time())
        # Keyed on the promotion too: a slot that was already "warning" before it is told
        # again, now as the orphan it has become.
        if not self._changed("slot", (health.is_promoted(state), verdict.severity)):
            return
        slot = state.primary.slot
        retained = format_size(slot.retained_bytes) if slot and slot.retained_bytes else "0 B"
        if verdict.severity == "critical":
            logger.critical("replication slot in danger: %s", verdict.reason)
            state.record_event("critical", verdict.reason)
        elif verdict.severity == "warning":
            logger.warning("replication slot warning: %s", verdict.reason)
            state.record_event("warning", verdict.reason)
        else:
            logger.info("replication slot ok: %s retained=%s", verdict.reason, retained)

    def _report_receiver(self) -> None:
        local = self.state.local
        if local.reachable is False:
            logger.warning("standby not answering: %s", local.last_error)
            self.state.record_event("warning", f"standby not answering: {local.last_error}")
        elif local.in_recovery is False:
            logger.warning("standby is not in recovery: it was promoted or is a primary")
        elif local.reachable:
            logger.info(
                "standby wal receiver status=%s sender=%s",
                local.receiver_status,
                local.sender_host or "-",
            )

    def _report_lag(self) -> None:
        local, limits = self.state.local, self.config.monitor
        too_far = (local.lag_bytes is not None and local.lag_bytes > limits.max_lag_bytes) or (
            local.lag_seconds is not None and local.lag_seconds > limits.max_lag_seconds
        )
        previous = self._reported.get("lag_exceeded")
        if not self._changed("lag_exceeded", too_far):
            return
        bytes_text = "unknown" if local.lag_bytes is None else format_size(local.lag_bytes)
        seconds_text = (
            "unknown" if local.lag_seconds is None else format_duration(local.lag_seconds)
        )
        if too_far:
            logger.warning(
                "standby lagging lag_bytes=%s lag_seconds=%s limits=%s/%s",
                bytes_text,
                seconds_text,
                format_size(limits.max_lag_bytes),
                format_duration(limits.max_lag_seconds),
            )
            self.state.record_event("warning", f"standby lagging {bytes_text} / {seconds_text}")
        elif previous is True:
            logger.info("standby caught up lag_bytes=%s lag_seconds=%s", bytes_text, seconds_text)


async def run_monitor(ctx: WorkerContext) -> None:
    """The ``monitor`` worker: poll every ``monitor.interval`` until the daemon stops."""
    monitor = Monitor(ctx.state)
    try:
        while True:
            await monitor.poll_once()
            if await ctx.sleep(ctx.config.monitor.interval):
                return
    finally:
        monitor.close()
