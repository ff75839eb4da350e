"""Cloning the primary: staged ``pg_basebackup``, verify, configure, rename into place.

The clone is built in a staging directory next to the data directory (inside it when the
data directory is a mount point, e.g. a Docker volume), so the target path holds either
nothing or a complete, configured standby. An interrupted clone is removed on the way out
and, should the process die too hard for that, at the next start.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import logging
import os
import re
import shutil
import signal
import stat
import time
from dataclasses import dataclass
from pathlib import Path
from subprocess import DEVNULL

from laterbased.core.state import StandbyState
from laterbased.errors import JobFailed
from laterbased.pg.conninfo import build_conninfo
from laterbased.pg.features import BASEBACKUP_SLOT, VERIFY_BACKUP, supports
from laterbased.proc import (
    RunAs,
    child_environment,
    finish_uncancellable,
    pid_alive,
    process_facts,
    run,
)
from laterbased.standby import configure, safety
from laterbased.units import format_size

logger = logging.getLogger(__name__)

INNER_STAGING = ".laterbased-staging"
# Written into the data directory before a clone's entries are moved into it one by one:
# the names being moved, so an interrupted move is undone without touching anything else.
MOVING_LIST = ".laterbased-moving"
# An entry copied across mounts waits under this prefix until it is complete.
INCOMING_PREFIX = ".laterbased-incoming-"
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


def is_mount_point(path: Path) -> bool:
    """True when ``path`` is a mount point, including a bind mount or a container volume
    on the same file system as its parent: ``os.path.ismount`` compares device numbers
    and misses those (Docker's vfs driver, ``mount --bind``), so the kernel's mount table
    (``/proc/self/mountinfo``) decides as well."""
    if os.path.ismount(path):
        return True
    real = os.path.realpath(path)
    try:
        table = Path("/proc/self/mountinfo").read_text(encoding="utf-8", errors="replace")
    except OSError as exc:
        logger.warning("cannot read /proc/self/mountinfo (%s); trusting os.path.ismount", exc)
        return False
    for line in table.splitlines():
        fields = line.split(" ")
        # Field 5 is the mount point, with space, tab, newline and backslash as octal escapes.
        if len(fields) > 4 and _MOUNTINFO_ESCAPE.sub(_unescape, fields[4]) == real:
            return True
    return False


_MOUNTINFO_ESCAPE = re.compile(r"\\([0-7]{3})")


def _unescape(match: re.Match[str]) -> str:
    return chr(int(match.group(1), 8))


def staging_for(data_dir: Path) -> Path:
    """Sibling of the data directory, or inside it when it is a mount point (a rename
    across file systems is not atomic, and a mount point cannot be replaced) or a symbolic
    link to the real place (an operator's way to put it on a bigger disk: the link stays)."""
    if data_dir.is_dir() and (data_dir.is_symlink() or is_mount_point(data_dir)):
        return data_dir / INNER_STAGING
    return data_dir.with_name(f".{data_dir.name}.laterbased-staging")


def clean_leftovers(data_dir: Path) -> None:
    """Remove what an interrupted bootstrap left, and only that: the staging directory
    (beside or inside the data directory), and the entries a half-finished move into the
    data directory placed there, as its list (:data:`MOVING_LIST`) names them. Whatever
    else is in the directory (``lost+found`` of a file system, the operator's files) is
    never touched. Blocking: call via ``asyncio.to_thread``."""
    sibling = data_dir.with_name(f".{data_dir.name}.laterbased-staging")
    inner = data_dir / INNER_STAGING
    for staging in (sibling, inner):
        stop_leftover_basebackup(staging)
    if sibling.exists() or sibling.is_symlink():
        logger.warning("removing staging directory of an interrupted bootstrap: %s", sibling)
        safety.remove_tree(sibling)
    if inner.exists() or inner.is_symlink():
        logger.warning("removing staging directory of an interrupted bootstrap: %s", inner)
        safety.remove_tree(inner)
    listing = data_dir / MOVING_LIST
    if not (listing.exists() or listing.is_symlink()):
        return
    names = _read_moving_list(listing)
    if (data_dir / "global" / "pg_control").is_file() and not (
        data_dir / (INCOMING_PREFIX + "global")
    ).exists():
        # ``global`` moves last, so the move had finished: only the list was left.
        listing.unlink()
        safety.fsync_dir(data_dir)
        return
    logger.warning(
        "removing an interrupted move of a fresh clone into %s: %s",
        data_dir,
        " ".join(sorted(names)),
    )
    for name in names:
        for candidate in (data_dir / name, data_dir / (INCOMING_PREFIX + name)):
            if candidate.exists() or candidate.is_symlink():
                safety.remove_tree(candidate)
    listing.unlink()
    safety.fsync_dir(data_dir)


def stop_leftover_basebackup(staging: Path) -> None:
    """Kill a ``pg_basebackup`` an earlier, killed laterbased left writing into ``staging``
    (it runs in its own session and outlives the daemon), or it would write into the next
    clone's staging directory. Ours means: the program is ``pg_basebackup``, it runs as the
    staging directory's owner (we made it for the run-as user), and its ``-D`` is exactly
    this staging path. Anything else is left alone."""
    try:
        info = staging.lstat()
    except FileNotFoundError:
        return
    if not stat.S_ISDIR(info.st_mode):
        return
    target = str(staging)
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        facts = process_facts(int(entry.name))
        if facts is None or facts.program != "pg_basebackup":
            continue
        if not facts.uids or any(uid != info.st_uid for uid in facts.uids):
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"-D" not in argv or argv.index(b"-D") + 1 >= len(argv):
            continue
        if argv[argv.index(b"-D") + 1].decode(errors="replace") != target:
            continue
        logger.warning(
            "killing leftover pg_basebackup pid=%s of an interrupted bootstrap into %s",
            facts.pid,
            staging,
        )
        with contextlib.suppress(ProcessLookupError):
            os.kill(facts.pid, signal.SIGKILL)
        deadline = time.monotonic() + 5.0
        while pid_alive(facts.pid) and time.monotonic() < deadline:
            time.sleep(0.05)  # in a thread (clean_leftovers' contract); SIGKILL is quick


def _read_moving_list(listing: Path) -> list[str]:
    """The entry names in a move list; anything that is not a plain name is ignored."""
    try:
        names = json.loads(listing.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        logger.warning("unreadable %s (%s); removing only the list", listing, exc)
        return []
    if not isinstance(names, list):
        return []
    return [
        name
        for name in names
        if isinstance(name, str)
        and name not in ("", ".", "..", "lost+found", MOVING_LIST)
        and "/" not in name
        and "\0" not in name
    ]


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
    add_local_rule(data_dir, run_as)


def write_primary_link(data_dir: Path, major: str, link: configure.PrimaryLink,
                       run_as: RunAs | None) -> None:
    """Rewrite only the primary connection settings of an existing standby (reload)."""
    if configure.uses_standby_signal(major):
        auto = data_dir / configure.AUTO_CONF
        existing = auto.read_text(encoding="utf-8") if auto.exists() else ""
        write_file(auto, configure.render_auto_conf(existing, link), run_as)
    elif (data_dir / configure.RECOVERY_CONF).exists():
        write_file(data_dir / configure.RECOVERY_CONF, configure.render_recovery_conf(link), run_as)
    add_local_rule(data_dir, run_as)


def add_local_rule(data_dir: Path, run_as: RunAs | None) -> None:
    """Give the standby's pg_hba.conf a ``local`` rule when it has none (a Windows
    primary's), so laterbased's own checks over the socket leave no FATAL line; at every
    start, so standbys cloned before this rule existed get it too."""
    path = data_dir / configure.HBA_FILE
    try:
        existing = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return  # none (or unreadable): postgres says so itself when it starts
    updated = configure.render_hba_with_local_rule(existing)
    if updated is not None:
        write_file(path, updated, run_as)
        logger.info(
            "standby: %s had no 'local' line (a Windows primary's); added '%s' for "
            "laterbased's checks over the standby's private socket",
            path,
            configure.LOCAL_RULE,
        )


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
    if staging.exists() or staging.is_symlink():
        safety.remove_tree(staging)
    if run_as is not None and staging.name == INNER_STAGING:
        # Inner staging: the (empty) directory becomes the data directory anyway, and
        # pg_basebackup, run as run_as, must get into it (a volume is often root's, 0700).
        os.chown(staging.parent, run_as.uid, run_as.gid)
        os.chmod(staging.parent, 0o700)
    staging.mkdir(mode=0o700)
    if run_as is not None:
        os.chown(staging, run_as.uid, run_as.gid)


def publish(staging: Path, data_dir: Path, run_as: RunAs | None) -> None:
    """Put the finished clone at ``data_dir``: one rename of the sibling staging directory,
    or, when ``data_dir`` cannot be replaced (a mount point: inner staging, or one the
    detection missed, where ``rmdir`` says EBUSY or ``rename`` EXDEV), its entries moved
    in one by one with ``global`` last, so the directory counts as a cluster only once
    complete."""
    if staging.parent == data_dir:
        move_entries_into(staging, data_dir, run_as)
        return
    try:
        if data_dir.exists():
            os.rmdir(data_dir)  # empty (checked by the caller); rename cannot replace it
        os.rename(staging, data_dir)
    except OSError as exc:
        if exc.errno not in (errno.EBUSY, errno.EXDEV):
            raise
        logger.warning(
            "bootstrap: %s cannot be replaced (%s: a mount point?); moving the clone's "
            "entries into it instead",
            data_dir,
            exc.strerror,
        )
        data_dir.mkdir(mode=0o700, exist_ok=True)
        move_entries_into(staging, data_dir, run_as)
        return
    safety.fsync_dir(data_dir.parent)


def move_entries_into(staging: Path, data_dir: Path, run_as: RunAs | None) -> None:
    """Move every entry of ``staging`` into ``data_dir`` (which stays where it is, e.g. a
    mount point), ``global`` last. The names are written to :data:`MOVING_LIST` first, so
    an interrupted move is undone by :func:`clean_leftovers` without touching anything
    else in the directory. Across mounts (EXDEV) an entry is copied under a temporary
    name, given to ``run_as`` and renamed into place, so it appears whole or not at all."""
    # The mount point becomes the data directory itself: postgres's user, 0700.
    if run_as is not None:
        os.chown(data_dir, run_as.uid, run_as.gid)
    os.chmod(data_dir, 0o700)
    names = sorted(os.listdir(staging), key=lambda name: name == "global")
    listing = data_dir / MOVING_LIST
    fd = os.open(listing, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    try:
        os.write(fd, json.dumps(names).encode("utf-8"))
        os.fsync(fd)
    finally:
        os.close(fd)
    safety.fsync_dir(data_dir)
    for name in names:
        try:
            os.rename(staging / name, data_dir / name)
        except OSError as exc:
            if exc.errno != errno.EXDEV:
                raise
            _copy_entry(staging / name, data_dir, name, run_as)
    safety.remove_tree(staging)
    safety.fsync_dir(data_dir)
    listing.unlink()
    safety.fsync_dir(data_dir)


def _copy_entry(source: Path, data_dir: Path, name: str, run_as: RunAs | None) -> None:
    incoming = data_dir / (INCOMING_PREFIX + name)
    if incoming.exists() or incoming.is_symlink():
        safety.remove_tree(incoming)
    if source.is_dir() and not source.is_symlink():
        shutil.copytree(source, incoming, symlinks=True)
    else:
        shutil.copy2(source, incoming, follow_symlinks=False)
    if run_as is not None:
        # Copies made as root belong to root; postgres must own every file.
        os.lchown(incoming, run_as.uid, run_as.gid)
        for root, dirs, files in os.walk(incoming):
            for item in (*dirs, *files):
                os.lchown(os.path.join(root, item), run_as.uid, run_as.gid)
    os.rename(incoming, data_dir / name)
    safety.remove_tree(source)


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
            cleanup = asyncio.ensure_future(asyncio.to_thread(_clean_quietly, plan.data_dir))
            await finish_uncancellable(cleanup)
    logger.info(
        "bootstrap finished data_dir=%s size=%s copy_seconds=%.1f total_seconds=%.1f",
        plan.data_dir,
        format_size(state.bootstrap_bytes_done),
        copied,
        time.monotonic() - started,
    )


def _clean_quietly(data_dir: Path) -> None:
    try:
        clean_leftovers(data_dir)
    except OSError as exc:
        logger.warning("could not remove an interrupted bootstrap in %s (removed at next "
                       "start): %s", data_dir, exc)
