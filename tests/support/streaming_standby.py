"""A real streaming standby of a test primary, made with ``pg_basebackup`` through a slot.

Stands in for the daemon's own standby supervisor where a test needs standby-side facts
(wal receiver, replay position) under its own control: stop it, pause replay, start it
(monitor tests); and serves as proof that a primary is ready for a standby (prepare-primary
and check tests, where the clone itself is what is tested). Runs as the ``postgres`` OS user
like :mod:`pgserver`; the WAL receiver's password lives in a 0600 passfile owned by that user.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pgserver import PgServer, free_port

from laterbased.pg.conninfo import build_conninfo
from laterbased.pg.passfile import passfile_line
from laterbased.proc import pids_with_cwd_under

APPLICATION_NAME = "laterbased"


class StreamingStandby:
    """A standby of ``primary`` replicating through ``slot_name`` as ``user`` (default: the
    primary's replication user), on a free port.

    ``StreamingStandby.running(primary, slot)`` creates the slot, clones and starts in one
    go; otherwise call :meth:`basebackup` (and check its result) then :meth:`start`.
    """

    def __init__(
        self,
        primary: PgServer,
        slot_name: str,
        *,
        user: str | None = None,
        password: str | None = None,
    ) -> None:
        self.primary = primary
        self.slot_name = slot_name
        self.user = user or primary.replication_user
        self.password = primary.replication_password if password is None else password
        self.port = free_port()
        self.base_dir = Path(tempfile.mkdtemp(prefix="laterbased-standby-"))
        self.data_dir = self.base_dir / "data"
        self.socket_dir = self.base_dir / "sock"
        self.passfile = self.base_dir / "pgpass"
        self.log_file = self.base_dir / "standby.log"
        self._postmaster: subprocess.Popen[bytes] | None = None
        self._created_slot = False
        try:
            self._prepare()
        except BaseException:
            self.cleanup()
            raise

    @classmethod
    def running(cls, primary: PgServer, slot_name: str) -> StreamingStandby:
        """Create ``slot_name`` on the primary, clone through it and start the standby."""
        standby = cls(primary, slot_name)
        try:
            standby.create_slot()
            result = standby.basebackup()
            if result.returncode != 0:
                raise RuntimeError(f"pg_basebackup failed: {result.stderr}")
            standby.start()
        except BaseException:
            standby.cleanup()
            raise
        return standby

    def _kwargs(self) -> dict[str, Any]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PG", "LATERBASED_"))}
        env.update(LC_ALL="C.UTF-8", LANG="C.UTF-8", PGPASSFILE=str(self.passfile))
        kwargs: dict[str, Any] = {"env": env, "cwd": str(self.base_dir)}
        user = self.primary.os_user
        if user is not None:
            env.update(HOME=user.pw_dir, USER="postgres", LOGNAME="postgres")
            kwargs.update(user=user.pw_uid, group=user.pw_gid, extra_groups=[])
        return kwargs

    def _chown(self, path: Path) -> None:
        user = self.primary.os_user
        if user is not None:
            os.chown(path, user.pw_uid, user.pw_gid)

    def _prepare(self) -> None:
        primary = self.primary
        self.base_dir.chmod(0o755)
        self._chown(self.base_dir)
        self.socket_dir.mkdir(mode=0o755)
        self._chown(self.socket_dir)
        line = passfile_line(primary.host, primary.port, "*", self.user, self.password)
        fd = os.open(self.passfile, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(line + "\n")
        self._chown(self.passfile)

    def create_slot(self) -> None:
        self.primary.sql(
            "SELECT pg_create_physical_replication_slot("
            f"'{self.slot_name}', immediately_reserve => true)"
        )
        self._created_slot = True

    def basebackup(self) -> subprocess.CompletedProcess[str]:
        """``pg_basebackup -X stream -S <slot>``, then the standby's settings; returns the
        finished pg_basebackup (check its returncode)."""
        primary = self.primary
        result = subprocess.run(
            [
                str(primary.bindir / "pg_basebackup"),
                "-h", primary.host, "-p", str(primary.port), "-U", self.user,
                "-D", str(self.data_dir), "-X", "stream", "-c", "fast", "-S", self.slot_name,
                "--no-sync", "-w",
            ],
            capture_output=True, text=True, check=False, timeout=120,
            stdin=subprocess.DEVNULL, **self._kwargs(),
        )
        if result.returncode != 0:
            return result
        (self.data_dir / "standby.signal").touch()
        self._chown(self.data_dir / "standby.signal")
        conninfo = build_conninfo(
            host=primary.host, port=primary.port, user=self.user,
            passfile=str(self.passfile), application_name=APPLICATION_NAME,
        )
        with open(self.data_dir / "postgresql.auto.conf", "a", encoding="utf-8") as handle:
            handle.write(
                f"primary_conninfo = '{conninfo.replace(chr(39), chr(39) * 2)}'\n"
                f"primary_slot_name = '{self.slot_name}'\n"
                f"port = {self.port}\n"
                f"unix_socket_directories = '{self.socket_dir}'\n"
                "listen_addresses = '127.0.0.1'\n"
                "hot_standby = on\n"
                "wal_receiver_status_interval = 1s\n"
            )
        return result

    # ---- lifecycle --------------------------------------------------------------------

    @property
    def pid(self) -> int | None:
        return None if self._postmaster is None else self._postmaster.pid

    def start(self, *, until_streaming: bool = False) -> None:
        """Start the standby and wait until it accepts SQL; with ``until_streaming`` also
        until the primary shows its slot active."""
        if self._postmaster is not None and self._postmaster.poll() is None:
            return
        with open(self.log_file, "ab") as log:
            self._postmaster = subprocess.Popen(
                [str(self.primary.bindir / "postgres"), "-D", str(self.data_dir)],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True, **self._kwargs(),
            )
        postmaster = self._postmaster

        def ready() -> bool:
            if postmaster.poll() is not None:
                raise RuntimeError(f"standby exited during start:\n{self.log_tail()}")
            return self.sql("SELECT 1", check=False) == "1"

        PgServer.wait_until(ready, 60, f"standby on port {self.port} accepts SQL")
        if not until_streaming:
            return
        query = (
            "SELECT active FROM pg_replication_slots "  # noqa: S608
            f"WHERE slot_name = '{self.slot_name}'"
        )

        def streaming() -> bool:
            if postmaster.poll() is not None:
                raise RuntimeError(f"standby exited: {self.log_tail()}")
            return self.primary.sql(query) == "t"

        PgServer.wait_until(streaming, 60, f"standby streaming through slot {self.slot_name}")

    def stop(self, timeout: float = 60.0) -> None:
        postmaster, self._postmaster = self._postmaster, None
        if postmaster is None or postmaster.poll() is not None:
            return
        postmaster.send_signal(signal.SIGINT)  # fast shutdown
        try:
            postmaster.wait(timeout)
        except subprocess.TimeoutExpired:
            postmaster.kill()
            postmaster.wait(30)

    def sql(self, query: str, *, check: bool = True) -> str:
        """psql over the unix socket (trust), as the superuser."""
        result = subprocess.run(
            [
                str(self.primary.bindir / "psql"), "-X", "-q", "-A", "-t",
                "-v", "ON_ERROR_STOP=1", "-h", str(self.socket_dir), "-p", str(self.port),
                "-U", self.primary.superuser, "-d", "postgres", "-f", "-",
            ],
            input=query, capture_output=True, text=True, check=False, timeout=60,
            **{k: v for k, v in self._kwargs().items() if k in ("env", "cwd")},
        )
        if check and result.returncode != 0:
            raise RuntimeError(f"standby psql failed for {query!r}: {result.stderr}")
        return result.stdout.strip()

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def cleanup(self) -> None:
        with contextlib.suppress(Exception):
            self.stop(timeout=20)
        for pid in pids_with_cwd_under(self.base_dir):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        shutil.rmtree(self.base_dir, ignore_errors=True)
        if not self._created_slot:
            return
        with contextlib.suppress(Exception):
            self.primary.sql(
                f"SELECT pg_drop_replication_slot('{self.slot_name}') "  # noqa: S608
                f"FROM pg_replication_slots WHERE slot_name = '{self.slot_name}' "
                "AND NOT active"
            )


@contextlib.contextmanager
def primary_with_standby(
    bindir: Path, slot_name: str
) -> Iterator[tuple[PgServer, StreamingStandby]]:
    """A private primary (with a ``filler`` table) and a standby streaming from it through
    ``slot_name``; both removed at the end."""
    primary = PgServer(bindir)
    standby: StreamingStandby | None = None
    try:
        primary.sql("CREATE TABLE filler (id serial PRIMARY KEY, payload text)")
        standby = StreamingStandby.running(primary, slot_name)
        yield primary, standby
    finally:
        if standby is not None:
            standby.cleanup()
        primary.cleanup()
