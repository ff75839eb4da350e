"""The backup worker: schedules wired to the chain dump → upload → prune, plus verify and
optimize, and the ``POST /api/backup`` endpoint that runs the same chain on demand.

Each job kind never overlaps itself: a run that finds the previous one still going is
skipped and counted (``state.jobs[kind].skipped_overlap``). Each run has an id
(``dump-20261126T1300Z-ab12``) that appears in every log line about it.
"""

from __future__ import annotations

import asyncio
import importlib
import logging
import secrets
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from laterbased.backup.dump import DumpOutcome, run_dumps
from laterbased.backup.prune import RetentionPolicy, prune
from laterbased.config import Config
from laterbased.core.actions import ActionInvalid, ActionOutcome
from laterbased.core.state import JobRun, State
from laterbased.records.catalogue import (
    GLOBALS_KEY,
    BackupRecord,
    Catalogue,
    CatalogueBusy,
    CatalogueLock,
)
from laterbased.schedule.cron import next_fire
from laterbased.schedule.ticker import run_schedule

logger = logging.getLogger(__name__)

UPLOAD_MODULE = "laterbased.offsite.upload"


def new_run_id(kind: str, now: datetime | None = None) -> str:
    moment = (now or datetime.now(UTC)).astimezone(UTC)
    return f"{kind}-{moment:%Y%m%dT%H%M%S}Z-{secrets.token_hex(2)}"


@dataclass
class ChainResult:
    """The outcome of one chain run, as ``POST /api/backup`` and ``backup-now`` report it."""

    run_id: str
    result: str  # success | failed | skipped | cancelled
    steps: list[dict[str, Any]] = field(default_factory=list)
    started: float = field(default_factory=time.time)
    finished: float | None = None

    @property
    def ok(self) -> bool:
        return self.result == "success"

    def to_json(self) -> dict[str, Any]:
        return {
            "run": self.run_id,
            "result": self.result,
            "started": self.started,
            "finished": self.finished,
            "steps": self.steps,
        }


def begin_job(state: State, kind: str, run_id: str) -> JobRun | None:
    """Mark ``kind`` as running, or count a skipped overlap and return None.

    Check and set happen without an ``await`` in between, so on one event loop this is
    atomic: the scheduler and the HTTP endpoint cannot both start the same kind.
    """
    status = state.job(kind)
    if status.running is not None:
        status.skipped_overlap += 1
        status.runs["skipped"] += 1
        logger.warning(
            "job skipped run=%s job=%s reason=previous run %s still going",
            run_id,
            kind,
            status.running.id,
        )
        return None
    run = JobRun(id=run_id, job=kind, started=time.time())
    status.running = run
    return run


def finish_job(state: State, run: JobRun, result: str, detail: str | None = None) -> None:
    status = state.job(run.job)
    run.finished = time.time()
    run.result = result
    run.detail = detail
    status.runs[result] += 1
    status.last_run = run
    status.last_duration = run.finished - run.started
    if result in {"success", "unchanged"}:
        status.last_success = run.finished
    if status.running is run:
        status.running = None
    if result == "failed":
        state.record_event("error", f"{run.job} {run.id} failed: {detail or 'see log'}")


def refresh_backup_state(state: State, catalogue: Catalogue, upload_enabled: bool) -> None:
    """Rebuild ``state.backups`` counts from the catalogue (blocking: use a thread)."""
    records = catalogue.list_backups()
    now = datetime.now(UTC)
    by_database: dict[str, list[BackupRecord]] = {}
    for record in records:
        # By series: the globals are not the database called "(globals)".
        by_database.setdefault(record.series, []).append(record)
    for database, group in by_database.items():
        summary = state.backup(database)
        good = [r for r in group if r.good]
        summary.local_count = len(good)
        # A backup dated in the future (a clock that ran fast) is never the freshest: it
        # would hide every failure until that date.
        trusted = [r for r in group if not r.from_the_future(now)]
        trusted_good = [r for r in trusted if r.good]
        if trusted_good:
            newest = trusted_good[-1]
            fresh = newest.fresh_until(now).timestamp()
            summary.last_success = max(summary.last_success or 0.0, fresh)
            summary.last_size = newest.size
            summary.last_file = str(newest.path)
        newest_any = (trusted or group)[-1]
        summary.verify_failed = (
            (newest_any.verify_detail or "verify failed") if newest_any.verified is False else None
        )
        pending = [r for r in good if upload_enabled and r.uploaded_at is None]
        summary.pending_upload = len(pending)
        summary.oldest_pending_upload = (
            min(r.finished.timestamp() for r in pending) if pending else None
        )
    for database, summary in state.backups.items():
        if database not in by_database:
            summary.verify_failed = None
            summary.local_count = 0
            summary.pending_upload = 0
            summary.oldest_pending_upload = None


async def _upload_step(
    config: Config, state: State, catalogue: Catalogue, run_id: str
) -> dict[str, Any]:
    try:
        module = importlib.import_module(UPLOAD_MODULE)
    except ModuleNotFoundError:
        logger.error("upload configured but this build has no upload step run=%s", run_id)
        return {"step": "upload", "result": "failed", "detail": "upload step not available"}
    upload_pending: Callable[..., Awaitable[Any]] = module.upload_pending
    outcome = await upload_pending(config, state, catalogue, run_id)
    if hasattr(outcome, "to_json"):
        body: dict[str, Any] = dict(outcome.to_json())
    elif isinstance(outcome, dict):
        body = dict(outcome)
    else:
        body = {"result": "success" if outcome is not False else "failed"}
    body.setdefault("step", "upload")
    if "result" not in body:
        body["result"] = str(getattr(outcome, "result", "success"))
    return body


async def run_upload_job(state: State, catalogue: Catalogue, run_id: str) -> dict[str, Any]:
    """Upload every backup still waiting for it, as the ``upload`` job (never overlapping)."""
    upload_run = begin_job(state, "upload", run_id)
    if upload_run is None:
        running = state.job("upload").running
        return {
            "step": "upload",
            "result": "skipped",
            "detail": f"upload {running.id if running else '?'} is still going",
        }
    try:
        step = await _upload_step(state.config, state, catalogue, run_id)
    except asyncio.CancelledError:
        finish_job(state, upload_run, "cancelled")
        raise
    except Exception as exc:
        logger.exception("upload step crashed run=%s", run_id)
        step = {"step": "upload", "result": "failed", "detail": str(exc)}
    try:
        await asyncio.to_thread(
            refresh_backup_state, state, catalogue, state.config.upload.enabled
        )
    except asyncio.CancelledError:
        finish_job(state, upload_run, "cancelled")
        raise
    except Exception as exc:
        # Raised here it would end the upload job's loop (no upload until a restart): the
        # run fails with the reason instead.
        logger.exception("upload run could not re-read the backups run=%s", run_id)
        reason = f"re-reading the backups failed: {exc}"
        if step["result"] == "failed":
            reason = f"{step.get('detail')}; {reason}"
        step = {**step, "result": "failed", "detail": reason}
    finish_job(state, upload_run, str(step["result"]), step.get("detail"))
    return step


def intended_databases(state: State, requested: Sequence[str] | None) -> list[str]:
    """What a dump run was meant to back up: the request, else ``backup.databases``, else
    the databases we already know backups of (what discovery found before); plus the
    globals when ``backup.dump_globals``. Empty when nothing is known yet."""
    config = state.config
    names = list(requested or config.backup.databases) or sorted(
        name
        for name, summary in state.backups.items()
        if name != GLOBALS_KEY and not summary.gone
    )
    if names and config.backup.dump_globals:
        names.append(GLOBALS_KEY)
    return names


def record_outcomes(
    state: State,
    outcomes: Sequence[DumpOutcome],
    requested: Sequence[str] | None,
    now: float,
) -> None:
    """Write one run's results into ``state.backups``, which health judges.

    A failure of the whole run (``database == "*"``: primary down, no pg_dump, discovery
    failed) is a failed run for every database the run was meant to dump and did not
    reach; when none is known yet, health's ``backup`` check reports the run itself.
    """
    for outcome in outcomes:
        if outcome.database == "*":
            continue
        # Its key, not its name: a failed dump of a database called "(globals)" must not be
        # overwritten by the globals' success that follows in the same run.
        summary = state.backup(outcome.key)
        if outcome.result in {"success", "unchanged"} and outcome.record is not None:
            summary.last_success = now
            summary.last_size = outcome.record.size
            summary.last_file = str(outcome.record.path)
            summary.last_error = None
            summary.last_run_failed = False
        elif outcome.result == "failed":
            summary.last_failure = now
            summary.last_error = outcome.detail
            summary.last_run_failed = True
    run_failure = next((o for o in outcomes if o.database == "*" and o.result == "failed"), None)
    if run_failure is None:
        if not (requested or state.config.backup.databases):
            # Discovery chose what this run dumped: a database with backups that it no
            # longer finds is gone from the primary (one that comes back is not).
            found = {o.key for o in outcomes}
            for key, summary in state.backups.items():
                if not summary.is_globals:
                    summary.gone = key not in found
        return
    reached = {o.key for o in outcomes}
    for database in intended_databases(state, requested):
        if database not in reached:
            summary = state.backup(database)
            summary.last_failure = now
            summary.last_error = run_failure.detail
            summary.last_run_failed = True


def describe_failures(failed: Sequence[DumpOutcome]) -> str | None:
    """``db: reason; ...`` for the job's detail; a run-level failure is told as it is."""
    parts = [o.detail if o.database == "*" else f"{o.database}: {o.detail}" for o in failed]
    return "; ".join(parts) or None


def promoted_port(state: State) -> int | None:
    """Where our promoted standby runs (the dump source after a failover), else None."""
    standby = state.standby
    if not state.config.standby.enabled or standby.role != "primary":
        return None
    return standby.port or state.config.standby.promoted_port


async def run_backup_chain(
    state: State,
    *,
    databases: Sequence[str] | None = None,
    trigger: str = "schedule",
    upload_inline: bool = True,
) -> ChainResult:
    """dump → upload (when configured) → prune; the same for schedule, catch-up and manual.

    With ``upload_inline=False`` (the schedule) the upload is left to the upload job, so a
    slow off-site copy never delays the next dump; a manual run waits for it, so its exit
    code covers the upload too.
    """
    config = state.config
    run_id = new_run_id("dump")
    run = begin_job(state, "dump", run_id)
    if run is None:
        running = state.job("dump").running
        return ChainResult(
            run_id,
            "skipped",
            [
                {
                    "step": "dump",
                    "result": "skipped",
                    "detail": f"run {running.id if running else '?'} is still going",
                }
            ],
            finished=time.time(),
        )
    chain = ChainResult(run_id, "success")
    catalogue = Catalogue(config.backup_directory)
    logger.info("backup run started run=%s trigger=%s", run_id, trigger)
    try:
        outcomes = await run_dumps(
            config,
            catalogue,
            run_id,
            databases,
            promoted_port(state),
            on_source=lambda role: setattr(run, "source", role),
        )
        now = time.time()
        for outcome in outcomes:
            chain.steps.append(outcome.to_json())
        record_outcomes(state, outcomes, databases, now)
        failed = [o for o in outcomes if o.result == "failed"]
        dump_result = (
            "failed"
            if failed
            else (
                "unchanged"
                if outcomes and all(o.result == "unchanged" for o in outcomes)
                else "success"
            )
        )
        finish_job(state, run, dump_result, describe_failures(failed))
        if failed:
            chain.result = "failed"
        if config.upload.enabled and upload_inline:
            step = await run_upload_job(state, catalogue, run_id)
            chain.steps.append(step)
            if step["result"] == "failed":
                chain.result = "failed"
        # Prune never deletes a backup that still waits for its upload, so it may run while
        # the scheduled upload job is still copying.
        await _prune_step(state, catalogue, run_id, chain)
        await asyncio.to_thread(refresh_backup_state, state, catalogue, config.upload.enabled)
    except asyncio.CancelledError:
        if state.job("dump").running is run:
            finish_job(state, run, "cancelled", "daemon stopping")
        logger.warning("backup run cancelled run=%s", run_id)
        raise
    except Exception as exc:
        # Whatever went wrong (a bug, an error nobody foresaw), this run ends as failed with
        # its reason in the log, health and metrics: a dump job left "running" would skip
        # every later run and POST /api/backup as overlapping, for ever.
        detail = f"the backup run crashed: {type(exc).__name__}: {exc}"
        logger.exception("backup run crashed run=%s", run_id)
        chain.result = "failed"
        in_dump = state.job("dump").running is run
        chain.steps.append(
            {"step": "dump" if in_dump else "chain", "result": "failed", "detail": detail}
        )
        if in_dump:
            record_outcomes(state, [DumpOutcome("*", "failed", detail)], databases, time.time())
            finish_job(state, run, "failed", detail)
        else:
            state.record_event("error", f"backup run {run_id} failed: {detail}")
    finally:
        chain.finished = time.time()
        if state.job("dump").running is run:
            # Reached only by an exception that is not an Exception (SystemExit, ...): the
            # job is never left marked as running.
            finish_job(state, run, "failed", "the backup run ended without a result")
    logger.info(
        "backup run finished run=%s result=%s seconds=%.1f",
        run_id,
        chain.result,
        chain.finished - chain.started,
    )
    return chain


_FOREIGN_SEEN: set[Any] = set()


async def _prune_step(state: State, catalogue: Catalogue, run_id: str, chain: ChainResult) -> None:
    config = state.config
    run = begin_job(state, "prune", run_id)
    if run is None:
        chain.steps.append({"step": "prune", "result": "skipped"})
        return
    try:
        outcome = await prune(
            catalogue,
            RetentionPolicy.from_config(config.backup, config.upload.enabled),
            datetime.now(UTC),
            config.zone,
            run_id,
            state=state,
            foreign_seen=_FOREIGN_SEEN,
        )
    except asyncio.CancelledError:
        finish_job(state, run, "cancelled")
        raise
    except Exception as exc:
        logger.exception("prune crashed run=%s", run_id)
        finish_job(state, run, "failed", str(exc))
        chain.steps.append({"step": "prune", "result": "failed", "detail": str(exc)})
        chain.result = "failed"
        return
    finish_job(state, run, outcome.result, "; ".join(outcome.errors) or None)
    chain.steps.append(outcome.to_json())
    if outcome.result == "failed":
        chain.result = "failed"


async def run_verify_job(state: State) -> dict[str, Any]:
    from laterbased.backup.verify import verify_newest

    run_id = new_run_id("verify")
    run = begin_job(state, "verify", run_id)
    if run is None:
        return {"run": run_id, "result": "skipped"}
    catalogue = Catalogue(state.config.backup_directory)
    try:
        results = await verify_newest(state.config, catalogue, run_id)
        # Inside the try: a refresh that raised would leave the job "running", and every
        # later verify would be skipped as an overlap.
        await asyncio.to_thread(
            refresh_backup_state, state, catalogue, state.config.upload.enabled
        )
    except asyncio.CancelledError:
        finish_job(state, run, "cancelled")
        raise
    except Exception as exc:
        logger.exception("verify crashed run=%s", run_id)
        finish_job(state, run, "failed", str(exc))
        return {"run": run_id, "result": "failed", "checks": [], "detail": str(exc)}
    failed = [r for r in results if not r["ok"]]
    finish_job(
        state,
        run,
        "failed" if failed else "success",
        "; ".join(f"{r['database']}: {r['detail']}" for r in failed) or None,
    )
    return {"run": run_id, "result": "failed" if failed else "success", "checks": results}


async def run_optimize_job(state: State) -> dict[str, Any]:
    from laterbased.backup.optimize import optimize_databases

    run_id = new_run_id("optimize")
    run = begin_job(state, "optimize", run_id)
    if run is None:
        return {"run": run_id, "result": "skipped"}
    try:
        failures = await optimize_databases(state.config, run_id, promoted_port(state))
    except asyncio.CancelledError:
        finish_job(state, run, "cancelled")
        raise
    except Exception as exc:
        logger.exception("optimize crashed run=%s", run_id)
        finish_job(state, run, "failed", f"crashed: {type(exc).__name__}: {exc}")
        return {"run": run_id, "result": "failed", "detail": str(exc)}
    finish_job(state, run, "failed" if failures else "success", "; ".join(failures) or None)
    return {"run": run_id, "result": "failed" if failures else "success"}


def catch_up_reference(catalogue: Catalogue) -> datetime:
    """The time of the stalest database's newest backup (epoch when there is none)."""
    newest: dict[str, datetime] = {}
    now = datetime.now(UTC)
    for record in catalogue.list_backups():
        # One dated in the future would put the catch-up off until that date.
        if record.is_globals or not record.good or record.from_the_future(now):
            continue
        previous = newest.get(record.database)
        fresh = record.fresh_until(now)
        if previous is None or fresh > previous:
            newest[record.database] = fresh
    if not newest:
        return datetime(1970, 1, 1, tzinfo=UTC)
    return min(newest.values())


def retry_delay(state: State, attempt: int, now: float) -> float | None:
    """How long to wait before retrying the last scheduled dump run, or None: it did not
    fail (or a manual run has succeeded since), or the next scheduled run comes first."""
    last = state.job("dump").last_run
    if last is None or last.result != "failed":
        return None
    backup = state.config.backup
    delay = min(backup.retry_delay * 2.0 ** min(attempt, 30), backup.retry_delay_max)
    try:
        upcoming = next_fire(
            backup.schedule, datetime.fromtimestamp(now, UTC), state.config.zone
        ).timestamp()
    except ValueError:
        return None
    return delay if now + delay < upcoming else None


def _set_next_fire(state: State, kind: str, expression: str, config: Config) -> None:
    try:
        state.job(kind).next_fire = next_fire(
            expression, datetime.now(UTC), config.zone
        ).timestamp()
    except ValueError:
        state.job(kind).next_fire = None


CLAIM_RETRY_SECONDS = 5.0


async def claim_catalogue(ctx: Any, catalogue: Catalogue) -> CatalogueLock | None:
    """Take the backup directory for this daemon (and clean ``.partial/``), waiting while
    another laterbased process (a ``backup-now`` running on its own) holds it; None when
    the daemon stops meanwhile."""
    waiting_since: float | None = None
    while True:
        try:
            return await asyncio.to_thread(catalogue.claim)
        except CatalogueBusy as exc:
            if waiting_since is None:
                waiting_since = time.monotonic()
                logger.warning("backups wait: %s", exc)
                ctx.state.record_event("warning", f"backups wait: {exc}")
        if await ctx.sleep(CLAIM_RETRY_SECONDS):
            return None


async def backup_worker(ctx: Any) -> None:
    """Daemon worker (``WorkerContext``): take the backup directory, clean up, then run the
    schedules until cancelled."""
    catalogue = Catalogue(ctx.state.config.backup_directory)
    held = await claim_catalogue(ctx, catalogue)
    if held is None:
        return
    ctx.state.backup_directory_held.set()
    try:
        await _run_schedules(ctx, catalogue)
    finally:
        ctx.state.backup_directory_held.clear()
        held.release()


async def _run_schedules(ctx: Any, catalogue: Catalogue) -> None:
    state: State = ctx.state
    config = state.config
    await asyncio.to_thread(refresh_backup_state, state, catalogue, config.upload.enabled)
    zone = config.zone
    catch_up = (
        await asyncio.to_thread(catch_up_reference, catalogue) if config.backup.catch_up else None
    )

    def skipped(kind: str) -> Callable[[datetime], None]:
        def on_skip(scheduled: datetime) -> None:
            state.job(kind).skipped_overlap += 1
            state.job(kind).runs["skipped"] += 1

        return on_skip

    def fire_with(
        kind: str, expression: str, job: Callable[[], Awaitable[object]]
    ) -> Callable[[datetime], Awaitable[None]]:
        async def fire(scheduled: datetime) -> None:
            try:
                await job()
            finally:
                _set_next_fire(state, kind, expression, state.config)

        return fire

    upload_wanted = asyncio.Event()
    upload_wanted.set()  # backups left un-uploaded by an earlier run go first

    async def scheduled_backup() -> ChainResult:
        chain = await run_backup_chain(state, upload_inline=False)
        if config.upload.enabled:
            upload_wanted.set()
        attempt = 0
        # A failed run is tried again by itself: after the primary comes back, backup:<db>
        # and /healthz must not stay red until the next fire (an hour, a day away).
        while (delay := retry_delay(state, attempt, time.time())) is not None:
            attempt += 1
            logger.warning(
                "backup run failed run=%s; retry %s in %.1fs (before the next scheduled run)",
                chain.run_id,
                attempt,
                delay,
            )
            if await ctx.sleep(delay):
                break
            chain = await run_backup_chain(state, upload_inline=False, trigger="retry")
            if config.upload.enabled:
                upload_wanted.set()
        return chain

    schedules: list[tuple[str, str, Callable[[], Awaitable[object]], datetime | None]] = [
        ("dump", config.backup.schedule, scheduled_backup, catch_up),
        ("verify", config.backup.verify_schedule, lambda: run_verify_job(state), None),
    ]
    if config.backup.optimize_schedule:
        schedules.append(
            ("optimize", config.backup.optimize_schedule, lambda: run_optimize_job(state), None)
        )
    async with asyncio.TaskGroup() as group:
        for kind, expression, job, catch_up_from in schedules:
            _set_next_fire(state, kind, expression, config)
            group.create_task(
                run_schedule(
                    kind,
                    expression,
                    zone,
                    fire_with(kind, expression, job),
                    on_skip=skipped(kind),
                    catch_up_from=catch_up_from,
                ),
                name=f"schedule:{kind}",
            )
        group.create_task(_watch_reload(ctx), name="schedule:reload")
        if config.upload.enabled:
            group.create_task(_upload_loop(state, catalogue, upload_wanted), name="upload")


async def _upload_loop(state: State, catalogue: Catalogue, wanted: asyncio.Event) -> None:
    """The upload job: runs after each scheduled dump (and once at start), on its own, so
    the dump schedule never waits for a slow remote. A failed upload is retried after the
    next dump; uploads are idempotent (the remote is asked before anything is sent)."""
    while True:
        await wanted.wait()
        wanted.clear()
        await run_upload_job(state, catalogue, new_run_id("upload"))


async def _watch_reload(ctx: Any) -> None:
    old: Config = ctx.config
    while True:
        new: Config = await ctx.wait_reload()
        for label, before, after in (
            ("backup.schedule", old.backup.schedule, new.backup.schedule),
            ("backup.verify_schedule", old.backup.verify_schedule, new.backup.verify_schedule),
            (
                "backup.optimize_schedule",
                old.backup.optimize_schedule,
                new.backup.optimize_schedule,
            ),
            ("backup.directory", old.backup_directory, new.backup_directory),
            ("timezone", old.timezone, new.timezone),
        ):
            if before != after:
                logger.warning("reload: %s changed; this takes effect after a restart", label)
        old = new


# --- HTTP: POST /api/backup ---------------------------------------------------------------


# How long a backup on demand waits for the backup worker to take the backup directory
# (start-up clean-up of .partial/) before it answers 409.
HELD_WAIT = 10.0


def register_actions(state: State, *, needs_held_directory: bool = False) -> None:
    """Offer ``backup`` (POST /api/backup: dump, upload, prune now) while backups run.
    Body: ``{}`` for every database, ``{"database": NAME}`` for one. With
    ``needs_held_directory`` (the daemon) it runs only while the backup worker holds the
    backup directory: not beside another process writing there, not before the start-up
    clean-up of ``.partial/`` that would delete its files."""

    async def backup_now(params: dict[str, Any]) -> ActionOutcome:
        if needs_held_directory and not state.backup_directory_held.is_set():
            try:
                await asyncio.wait_for(state.backup_directory_held.wait(), HELD_WAIT)
            except TimeoutError:
                return ActionOutcome(
                    409,
                    {
                        "error": "the backup directory is held by another laterbased "
                        "process (or the daemon is still starting): try again when it is done",
                        "result": "skipped",
                    },
                )
        databases: list[str] | None = None
        database = params.get("database")
        if database is not None:
            # No PostgreSQL name holds a NUL; one would also be filed under the globals' key.
            if not isinstance(database, str) or not database or "\0" in database:
                raise ActionInvalid("database must be a name")
            databases = [database]
        result = await run_backup_chain(state, databases=databases, trigger="http")
        return ActionOutcome(409 if result.result == "skipped" else 200, result.to_json())

    state.actions["backup"] = backup_now


def offer_actions(state: State) -> None:
    """What the daemon offers for the backup worker (see :func:`register_actions`)."""
    register_actions(state, needs_held_directory=True)
