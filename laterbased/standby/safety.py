"""Checks before a data directory is used: what it is, who owns it, who runs in it.

All functions here are synchronous and touch only the file system: call them through
``asyncio.to_thread``.
"""

from __future__ import annotations

import enum
import logging
import os
import shutil
import stat
from datetime import UTC, datetime
from pathlib import Path

from laterbased.errors import RefuseToRun
from laterbased.proc import (
    ProcessFacts,
    RunAs,
    pid_alive,
    pids_with_cwd_under,
    process_facts,
    read_postmaster_pid,
)

logger = logging.getLogger(__name__)


class DataDirKind(enum.Enum):
    ABSENT = "absent"  # no directory at all
    EMPTY = "empty"  # an empty directory (e.g. a fresh volume)
    CLUSTER = "cluster"  # has PG_VERSION and global/pg_control
    FOREIGN = "foreign"  # has files but is not a PostgreSQL data directory


def classify(data_dir: Path) -> DataDirKind:
    if not data_dir.exists():
        return DataDirKind.ABSENT
    if not data_dir.is_dir():
        return DataDirKind.FOREIGN
    entries = [e for e in os.listdir(data_dir) if e != "lost+found"]
    if not entries:
        return DataDirKind.EMPTY
    if (data_dir / "PG_VERSION").is_file() and (data_dir / "global" / "pg_control").is_file():
        return DataDirKind.CLUSTER
    return DataDirKind.FOREIGN


def cluster_major(data_dir: Path) -> str:
    """The major version written in ``PG_VERSION`` ("15", "9.5")."""
    return (data_dir / "PG_VERSION").read_text(encoding="ascii").strip()


def check_ownership(data_dir: Path, run_as: RunAs | None) -> None:
    """The data directory must belong to the user postgres runs as, mode 0700.

    A wrong mode is fixed (postgres itself refuses a group/world-readable directory); a
    wrong owner is refused: changing ownership of someone's files is not our call.
    """
    info = data_dir.stat()
    uid = run_as.uid if run_as is not None else os.geteuid()
    if info.st_uid != uid:
        user = run_as.name if run_as is not None else f"uid {uid}"
        raise RefuseToRun(
            f"standby data directory {data_dir} belongs to uid {info.st_uid}, not to {user} "
            f"who runs the standby; fix it with: chown -R {user}: {data_dir}"
        )
    mode = stat.S_IMODE(info.st_mode)
    if mode != 0o700:
        logger.warning("standby data directory %s had mode %o; setting 0700", data_dir, mode)
        os.chmod(data_dir, 0o700)


def live_postmaster(data_dir: Path) -> int | None:
    """PID of a running postgres that owns ``data_dir`` (per ``postmaster.pid``), if any.

    A stale file whose PID now belongs to some other program does not count.
    """
    pid = read_postmaster_pid(data_dir)
    if pid is None or not pid_alive(pid):
        return None
    try:
        comm = Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return pid  # cannot tell: assume the worst
    return pid if comm.startswith(("postgres", "postmaster")) else None


def why_not_ours(pid: int, data_dir: Path, run_as: RunAs | None) -> str | None:
    """None when ``pid`` is a postmaster we may stop: the ``postgres`` program, run by our
    run-as user, working in our data directory (what pg_ctl trusts, plus who and which
    program). Otherwise the reason, for the refusal message."""
    facts = process_facts(pid)
    if facts is None or not facts.exe or not facts.cwd:
        return "its /proc entry cannot be read"
    uid = run_as.uid if run_as is not None else os.geteuid()
    if not facts.uids or any(owner != uid for owner in facts.uids):
        return f"it runs as uid {facts.uids[1] if len(facts.uids) > 1 else '?'}, not {uid}"
    if facts.program not in ("postgres", "postmaster"):
        return f"its program is {facts.exe}, not postgres"
    if facts.cwd != os.path.realpath(data_dir):
        return f"it works in {facts.cwd}"
    return None


def postmaster_to_stop(data_dir: Path, run_as: RunAs | None) -> int | None:
    """The pid of a postmaster left running on ``data_dir`` that is ours to stop (one an
    earlier laterbased started and then died without stopping, e.g. SIGKILL or OOM), or
    None when none runs. Any other live server there is refused (:class:`RefuseToRun`).

    A ``postmaster.pid`` whose pid now belongs to a process that provably does not run
    on this directory (after a crash or reboot the number was reused, often by another
    postgres of the same user: the primary's own) is stale: it is removed, as postgres
    itself would refuse to start beside it ("lock file already exists") for ever.
    """
    pid = read_postmaster_pid(data_dir)
    if pid is None or not pid_alive(pid):
        return None  # no server; postgres replaces a file whose pid is gone by itself
    facts = process_facts(pid)
    uid = run_as.uid if run_as is not None else os.geteuid()
    if facts is not None and (
        (facts.cwd and facts.cwd != os.path.realpath(data_dir))
        # A postmaster runs as its data directory's owner, the run-as user.
        or (not facts.cwd and facts.uids and any(owner != uid for owner in facts.uids))
    ):
        _remove_stale_pid_file(data_dir, pid, facts)
        return None
    reason = why_not_ours(pid, data_dir, run_as)
    if reason is None:
        return pid
    user = run_as.name if run_as is not None else "the postgres user"
    raise RefuseToRun(
        f"a PostgreSQL server (pid {pid}) not started by laterbased is already running "
        f"on {data_dir} ({reason}); refusing to start a second one. Stop it first, e.g. "
        f"'runuser -u {user} -- pg_ctl stop -m fast -D {data_dir}', then start laterbased"
    )


def _remove_stale_pid_file(data_dir: Path, pid: int, facts: ProcessFacts) -> None:
    path = data_dir / "postmaster.pid"
    logger.warning(
        "removing stale %s: its pid %s now belongs to %s (working in %s), not to a server "
        "of this directory",
        path,
        pid,
        facts.exe or "a process of another user",
        facts.cwd or "?",
    )
    path.unlink(missing_ok=True)


def move_aside(data_dir: Path, reason: str) -> Path:
    """Rename ``data_dir`` to ``<name>.<reason>-<UTC timestamp>`` next to it; never delete."""
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    target = data_dir.with_name(f"{data_dir.name}.{reason}-{stamp}")
    counter = 1
    while target.exists():
        counter += 1
        target = data_dir.with_name(f"{data_dir.name}.{reason}-{stamp}-{counter}")
    os.rename(data_dir, target)
    _fsync_dir(data_dir.parent)
    return target


def remove_tree(path: Path) -> None:
    """Delete a directory tree we created (staging), tolerating a half-gone one."""
    if path.is_symlink() or path.is_file():
        path.unlink()
        return
    shutil.rmtree(path, ignore_errors=False)


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(directory: Path) -> None:
    _fsync_dir(directory)


def server_leftovers(data_dir: Path, uid: int) -> list[int]:
    """PostgreSQL processes of ``uid`` still working in ``data_dir``.

    Backends start their own sessions, so after a postmaster is killed they escape its
    process group; they must be gone before a new postmaster can use the directory.
    """
    found = []
    for pid in pids_with_cwd_under(data_dir):
        try:
            comm = Path(f"/proc/{pid}/comm").read_text().strip()
            owner = Path(f"/proc/{pid}").stat().st_uid
        except OSError:
            continue
        if owner == uid and comm.startswith(("postgres", "postmaster")):
            found.append(pid)
    return found
