"""A real replication-protocol connection to the primary, as the standby will make it.

asyncpg cannot speak the replication protocol, so ``psql`` opens a ``replication=true``
connection and sends ``IDENTIFY_SYSTEM``: if that answers, pg_hba, the password and the
REPLICATION privilege are all fine. The password travels in a 0600 passfile in a private
temporary directory, never in argv or the child's environment.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from laterbased.pg.binaries import major_key
from laterbased.pg.conninfo import build_conninfo
from laterbased.pg.passfile import passfile_line, write_passfile
from laterbased.proc import child_environment, run

logger = logging.getLogger(__name__)

ProbeReason = Literal["ok", "hba", "auth", "privilege", "unreachable", "no-psql", "error"]

# Fragments of libpq / server messages and what they mean for the operator.
_REASONS: tuple[tuple[str, ProbeReason], ...] = (
    ("no pg_hba.conf entry", "hba"),
    ("password authentication failed", "auth"),
    ("no password supplied", "auth"),
    ("permission denied to start wal sender", "privilege"),
    ("must be superuser or replication role", "privilege"),
    ("must have the replication attribute", "privilege"),
    ("connection refused", "unreachable"),
    ("could not translate host name", "unreachable"),
    ("timeout expired", "unreachable"),
    ("no route to host", "unreachable"),
    ("could not connect", "unreachable"),
)


@dataclass(frozen=True)
class ReplicationProbe:
    """What one replication connection attempt showed."""

    reason: ProbeReason
    message: str
    system_identifier: str | None = None
    timeline: int | None = None

    @property
    def ok(self) -> bool:
        return self.reason == "ok"


def find_psql(preferred: list[Path | None] | None = None) -> Path | None:
    """A psql program: in one of ``preferred`` bin directories, else the newest
    ``/usr/lib/postgresql/*/bin/psql``, else the one on PATH. Any major speaks
    ``IDENTIFY_SYSTEM``, so the version does not matter here."""
    for bindir in preferred or []:
        if bindir is not None and os.access(bindir / "psql", os.X_OK):
            return bindir / "psql"
    found: list[tuple[tuple[int, ...], Path]] = []
    for candidate in Path("/usr/lib/postgresql").glob("*/bin/psql"):
        try:
            key = major_key(candidate.parent.parent.name)
        except ValueError:
            continue
        if os.access(candidate, os.X_OK):
            found.append((key, candidate))
    if found:
        return max(found)[1]
    on_path = shutil.which("psql")
    return Path(on_path) if on_path else None


def classify(stderr: str) -> ProbeReason:
    lowered = stderr.lower()
    for fragment, reason in _REASONS:
        if fragment in lowered:
            return reason
    return "error"


async def probe_replication(
    *,
    host: str,
    port: int,
    user: str,
    password: str | None,
    sslmode: str = "prefer",
    timeout: float = 10.0,  # noqa: ASYNC109 - passed to libpq and to the child's deadline
    psql: Path | None = None,
) -> ReplicationProbe:
    """Open a physical replication connection and run ``IDENTIFY_SYSTEM``."""
    program = psql or find_psql()
    if program is None:
        return ReplicationProbe(
            "no-psql",
            "cannot test a replication connection: no psql found "
            "(apt-get install postgresql-client)",
        )
    workdir = Path(await asyncio.to_thread(tempfile.mkdtemp, prefix="laterbased-probe-"))
    try:
        passfile = workdir / "pgpass"
        lines = [passfile_line(host, port, "*", user, password)] if password else []
        await write_passfile(passfile, lines, None)
        conninfo = build_conninfo(
            host=host,
            port=port,
            user=user,
            dbname="replication",
            replication="true",
            sslmode=sslmode,
            connect_timeout=max(1, int(timeout)),
            application_name="laterbased-check",
        )
        env = child_environment({"PGPASSFILE": str(passfile)})
        completed = await run(
            [
                str(program),
                "-X",
                "-w",
                "-A",
                "-t",
                "-F",
                "|",
                "-d",
                conninfo,
                "-c",
                "IDENTIFY_SYSTEM",
            ],
            env=env,
            capture_stdout=True,
            log_name="psql replication probe",
            stderr_level=logging.DEBUG,
            timeout=timeout + 5,
        )
    finally:
        await asyncio.to_thread(shutil.rmtree, workdir, True)
    stderr = " ".join(line.strip() for line in completed.stderr_tail if line.strip())
    if completed.returncode != 0:
        reason = classify(stderr)
        detail = stderr.removeprefix("psql: error: ") or f"psql exited {completed.returncode}"
        return ReplicationProbe(reason, detail)
    fields = completed.stdout.decode("utf-8", errors="replace").strip().split("|")
    system_identifier = fields[0] if fields and fields[0] else None
    timeline = int(fields[1]) if len(fields) > 1 and fields[1].isdigit() else None
    return ReplicationProbe(
        "ok",
        f"replication connection as {user} accepted (system identifier {system_identifier})",
        system_identifier=system_identifier,
        timeline=timeline,
    )
