"""A real streaming standby of a test primary, made with pg_basebackup through a slot.

Used by the prepare-primary and check tests as proof that a primary is ready (and as the
"good setup" a check should call all OK). Runs as the server's OS user, like the primary.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
from pathlib import Path

from pgserver import PgServer, free_port

from laterbased.pg.passfile import passfile_line


class Replica:
    def __init__(self, primary: PgServer, *, slot: str, user: str, password: str) -> None:
        self.primary = primary
        self.slot = slot
        self.base_dir = Path(tempfile.mkdtemp(prefix="laterbased-replica-"))
        self.data_dir = self.base_dir / "data"
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None
        self._user = user
        self._password = password
        self.base_dir.chmod(0o755)
        self._chown(self.base_dir)
        self.passfile = self.base_dir / "pgpass"
        fd = os.open(self.passfile, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(passfile_line(primary.host, primary.port, "*", user, password) + "\n")
        self._chown(self.passfile)

    def _chown(self, path: Path) -> None:
        if self.primary.os_user is not None:
            os.chown(path, self.primary.os_user.pw_uid, self.primary.os_user.pw_gid)

    def _kwargs(self) -> dict[str, object]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PG", "LATERBASED_"))}
        env.update(LC_ALL="C.UTF-8", PGPASSFILE=str(self.passfile))
        kwargs: dict[str, object] = {"env": env, "cwd": str(self.base_dir)}
        if self.primary.os_user is not None:
            kwargs.update(
                user=self.primary.os_user.pw_uid, group=self.primary.os_user.pw_gid, extra_groups=[]
            )
        return kwargs

    def basebackup(self) -> subprocess.CompletedProcess[str]:
        """pg_basebackup -R through the slot; returns the finished process (check it)."""
        return subprocess.run(
            [
                str(self.primary.bindir / "pg_basebackup"),
                "-D",
                str(self.data_dir),
                "-h",
                self.primary.host,
                "-p",
                str(self.primary.port),
                "-U",
                self._user,
                "-w",
                "-X",
                "stream",
                "-S",
                self.slot,
                "-R",
                "--checkpoint=fast",
                "--no-sync",
            ],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
            stdin=subprocess.DEVNULL,
            **self._kwargs(),  # type: ignore[arg-type]
        )

    def start(self) -> None:
        """Start the standby and wait until the primary shows its slot active."""
        log = open(self.base_dir / "server.log", "ab")  # noqa: SIM115 - closed by Popen's owner
        try:
            self.process = subprocess.Popen(
                [
                    str(self.primary.bindir / "postgres"),
                    "-D",
                    str(self.data_dir),
                    "-c",
                    f"port={self.port}",
                    "-c",
                    "listen_addresses=127.0.0.1",
                    "-c",
                    f"unix_socket_directories={self.base_dir}",
                    "-c",
                    "hot_standby=on",
                ],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                **self._kwargs(),  # type: ignore[arg-type]
            )
        finally:
            log.close()
        query = f"SELECT active FROM pg_replication_slots WHERE slot_name = '{self.slot}'"  # noqa: S608

        def streaming() -> bool:
            assert self.process is not None
            if self.process.poll() is not None:
                raise AssertionError(f"standby exited: {self.log_tail()}")
            return self.primary.sql(query) == "t"

        PgServer.wait_until(streaming, 60, f"standby streaming through slot {self.slot}")

    def log_tail(self) -> str:
        try:
            return (self.base_dir / "server.log").read_text(errors="replace")[-3000:]
        except OSError:
            return "(no log)"

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(30)
        self.process = None

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.base_dir, ignore_errors=True)
