"""Cloning the primary: staged ``pg_basebackup``, verify, configure, rename into place.

The clone is built in a staging directory next to the data directory (inside it when the
data directory is a mount point, e.g. a Docker volume), so the target path holds either
nothing or a complete, configured standby. An interrupted clone is removed on the way out
and, should the process die too hard for that, at the next start.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from subprocess import DEVNULL

from laterbased.errors import JobFailed
from laterbased.pg.conninfo import build_conninfo
from laterbased.pg.features import BASEBACKUP_SLOT, VERIFY_BACKUP, supports
from laterbased.proc import RunAs, child_environment, finish_uncancellable, run
from laterbased.state import StandbyState
from laterbased.units import format_size

from . import configure, safety

logger = logging.getLogger(__name__)

INNER_STAGING = ".laterbased-staging"
PROGRESS_LOG_EVERY = 30.0
TERM_GRACE = 5.0
# "  123456/654321 kB (18%), 0/1 tablespace" (the line may be cut short or padded)
_PROGRESS = re.compile(r"(\d+)/(\d+) kB \((\d+)%\)")


@dataclass(frozen=True)
class BootstrapPlan:
    bindir: Path
    major: str
    data_dir: Path
    link: configure.PrimaryLink
    checkpoint: str
    run_as: RunAs | None


def staging_for(data_dir: Path) -> Path:
    """Sibling of the data directory, or inside it when it is a mount point (a rename
    across file systems is not atomic, and a mount point cannot be replaced)."""
    if data_dir.is_dir() and os.path.ismount(data_dir):
        return data_dir / INNER_STAGING
    return data_dir.with_name(f".{data_dir.name}.laterbased-staging")


def clean_leftovers(data_dir: Path) -> None:
    """Remove what an interrupted bootstrap left: the sibling staging directory, or a
    half-finished move out of an inner one. Blocking: call via ``asyncio.to_thread``."""
    sibling = data_dir.with_name(f".{data_dir.name}.laterbased-staging")
    if sibling.exists() or sibling.is_symlink():
        logger.warning("removing staging directory of an interrupted bootstrap: %s", sibling)
        safety.remove_tree(sibling)
    inner = data_dir / INNER_STAGING
    if inner.exists():
        complete = (data_dir / "global" / "pg_control").is_file()
        if complete:
            safety.remove_tree(inner)
        else:
            logger.warning(
                "removing an interrupted bootstrap inside %s (marker %s present)",
                data_dir,
                INNER_STAGING,
            )
            for entry in os.listdir(data_dir):
                safety.remove_tree(data_dir / entry)


class _Progress:
    """Turns pg_basebackup's stderr into state, status messages and sparse log lines."""

    def __init__(self, state: StandbyState, checkpoint: str) -> None:
        self.state = state
        self.checkpoint = checkpoint
        self.last_logged = 0.0
        self.last_percent = -10
        self.tail: list[str] = []

    def line(self, text: str) -> None:
        text = text.strip()
        if not text:
            return
        match = _PROGRESS.search(text)
        if match:
            done, total, percent = (int(g) for g in match.groups())
            self.state.bootstrap_bytes_done = done * 1024
            self.state.bootstrap_bytes_total = total * 1024
            self.state.message = (
                f"copying from primary: {format_size(done * 1024)} of "
                f"{format_size(total * 1024)} ({percent}%)"
            )
            now = time.monotonic()
            if percent >= self.last_percent + 10 or now - self.last_logged >= PROGRESS_LOG_EVERY:
                self.last_percent = percent - percent % 10
                self.last_logged = now
                logger.info(
                    "bootstrap progress percent=%s done=%s total=%s",
                    percent,
                    format_size(done * 1024),
                    format_size(total * 1024),
                )
            return
        self.tail = [*self.tail[-19:], text]
        if "waiting for checkpoint" in text:
            self.state.message = f"waiting for checkpoint on primary (checkpoint={self.checkpoint})"
            if self.checkpoint == "spread":
                logger.warning(
                    "bootstrap: waiting for the primary's checkpoint (checkpoint=spread can "
                    "take up to checkpoint_timeout; standby.checkpoint: fast avoids the wait)"
                )
            else:
                logger.info("bootstrap: waiting for the primary's checkpoint")
            return
        if "checkpoint completed" in text:
            self.state.message = "checkpoint done; copying from primary"
        logger.info("pg_basebackup: %s", text.removeprefix("pg_basebackup: "))


def basebackup_argv(plan: BootstrapPlan, staging: Path) -> list[str]:
    """The pg_basebackup command line; the password is in the passfile named inside."""
    link = plan.link
    conninfo = build_conninfo(
        host=link.host,
        port=link.port,
        user=link.user,
        passfile=str(link.passfile),
        sslmode=link.sslmode,
        connect_timeout=link.connect_timeout,
        application_name=f"{link.application_name}_bootstrap",
    )
    # 9.5's pg_basebackup has no --slot (see laterbased.pg.features for what that costs).
    slot = ["-S", link.slot_name] if supports(plan.major, BASEBACKUP_SLOT) else []
    return [
        str(plan.bindir / "pg_basebackup"),
        f"--dbname={conninfo}",
        "--no-password",
        "-D",
        str(staging),
        "-X",
        "stream",
        *slot,
        f"--checkpoint={plan.checkpoint}",
        "--progress",
        "--verbose",
    ]


async def run_basebackup(plan: BootstrapPlan, staging: Path, state: StandbyState) -> None:
    """Run pg_basebackup into ``staging``; JobFailed with its last words on failure.

    Cancellation stops its process group (TERM, then KILL) and reaps it before returning.
    """
    progress = _Progress(state, plan.checkpoint)
    logger.info(
        "bootstrap: pg_basebackup starting primary=%s:%s slot=%s checkpoint=%s",
        plan.link.host,
        plan.link.port,
        plan.link.slot_name,
        plan.checkpoint,
    )
    result = await run(
        basebackup_argv(plan, staging),
        env=child_environment({"PGPASSFILE": str(plan.link.passfile)}),
        run_as=plan.run_as,
        cwd="/",
        stdout=DEVNULL,
        log_name="pg_basebackup",
        term_grace=TERM_GRACE,
        on_line=progress.line,
    )
    if result.returncode != 0:
        last = " | ".join(progress.tail[-3:]) or "no output"
        raise JobFailed(f"pg_basebackup failed with status {result.returncode}: {last}")


async def verify(plan: BootstrapPlan, staging: Path) -> None:
    """pg_verifybackup (PostgreSQL 13+) against the backup manifest, WAL included."""
    tool = plan.bindir / "pg_verifybackup"
    if not supports(plan.major, VERIFY_BACKUP):
        logger.info("bootstrap: PostgreSQL %s has no pg_verifybackup; skipping verify", plan.major)
        return
    if not tool.exists():
        logger.info("bootstrap: no %s (PostgreSQL %s); skipping verify", tool, plan.major)
        return
    started = time.monotonic()
    result = await run(
        [str(tool), "--quiet", str(staging)],
        run_as=plan.run_as,
        log_name="pg_verifybackup",
        stderr_level=logging.WARNING,
    )
    if result.returncode != 0:
        raise JobFailed(
            "the fresh base backup failed verification: " + " | ".join(result.stderr_tail[-3:])
        )
    logger.info("bootstrap: pg_verifybackup ok seconds=%.1f", time.monotonic() - started)


def write_standby_files(data_dir: Path, major: str, link: configure.PrimaryLink,
                        run_as: RunAs | None) -> None:
    """standby.signal + primary_conninfo (postgresql.auto.conf), or recovery.conf before 12.

    Blocking: call via ``asyncio.to_thread``. Files are written whole, then renamed.
    """
    if configure.uses_standby_signal(major):
        auto = data_dir / configure.AUTO_CONF
        existing = auto.read_text(encoding="utf-8") if auto.exists() else ""
        write_file(auto, configure.render_auto_conf(existing, link), run_as)
        write_file(data_dir / configure.STANDBY_SIGNAL, "", run_as)
    else:
        write_file(data_dir / configure.RECOVERY_CONF, configure.render_recovery_conf(link), run_as)


def write_primary_link(data_dir: Path, major: str, link: configure.PrimaryLink,
                       run_as: RunAs | None) -> None:
    """Rewrite only the primary connection settings of an existing standby (reload)."""
    if configure.uses_standby_signal(major):
        auto = data_dir / configure.AUTO_CONF
        existing = auto.read_text(encoding="utf-8") if auto.exists() else ""
        write_file(auto, configure.render_auto_conf(existing, link), run_as)
    elif (data_dir / configure.RECOVERY_CONF).exists():
        write_file(data_dir / configure.RECOVERY_CONF, configure.render_recovery_conf(link), run_as)


def write_file(path: Path, text: str, run_as: RunAs | None) -> None:
    temp = path.with_name(f".{path.name}.laterbased.tmp")
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    try:
        if run_as is not None:
            os.fchown(fd, run_as.uid, run_as.gid)
        os.write(fd, text.encode("utf-8"))
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(temp, path)


def prepare_staging(staging: Path, run_as: RunAs | None) -> None:
    if staging.exists():
        safety.remove_tree(staging)
    staging.mkdir(mode=0o700)
    if run_as is not None:
        os.chown(staging, run_as.uid, run_as.gid)


def publish(staging: Path, data_dir: Path, run_as: RunAs | None) -> None:
    """Put the finished clone at ``data_dir``: one rename, or (inner staging in a mount
    point) entries moved up with ``global`` last, so the directory counts as a cluster only
    once complete."""
    if staging.parent == data_dir:
        # The mount point becomes the data directory itself: postgres's user, 0700.
        if run_as is not None:
            os.chown(data_dir, run_as.uid, run_as.gid)
        os.chmod(data_dir, 0o700)
        entries = sorted(os.listdir(staging), key=lambda name: name == "global")
        for entry in entries:
            os.rename(staging / entry, data_dir / entry)
        os.rmdir(staging)
        safety.fsync_dir(data_dir)
        return
    if data_dir.exists():
        os.rmdir(data_dir)  # empty (checked by the caller); rename cannot replace it on all FS
    os.rename(staging, data_dir)
    safety.fsync_dir(data_dir.parent)


async def bootstrap(plan: BootstrapPlan, state: StandbyState) -> None:
    """Clone the primary into ``plan.data_dir`` (absent or empty). On any failure or
    cancellation the staging directory is removed and the target left as it was."""
    staging = staging_for(plan.data_dir)
    await asyncio.to_thread(prepare_staging, staging, plan.run_as)
    started = time.monotonic()
    state.bootstrap_bytes_done = 0
    state.bootstrap_bytes_total = None
    published = False
    try:
        await run_basebackup(plan, staging, state)
        copied = time.monotonic() - started
        state.message = "verifying the base backup"
        await verify(plan, staging)
        await asyncio.to_thread(
            write_standby_files, staging, plan.major, plan.link, plan.run_as
        )
        await asyncio.to_thread(publish, staging, plan.data_dir, plan.run_as)
        published = True
    finally:
        if not published:
            cleanup = asyncio.ensure_future(asyncio.to_thread(_remove_quietly, staging))
            await finish_uncancellable(cleanup)
    logger.info(
        "bootstrap finished data_dir=%s size=%s copy_seconds=%.1f total_seconds=%.1f",
        plan.data_dir,
        format_size(state.bootstrap_bytes_done),
        copied,
        time.monotonic() - started,
    )


def _remove_quietly(path: Path) -> None:
    try:
        if path.exists():
            safety.remove_tree(path)
    except OSError as exc:
        logger.warning("could not remove staging %s (removed at next start): %s", path, exc)
