"""A real, throw-away local PostgreSQL cluster: for the tests and for `laterbased demo`.

Runs as the unprivileged ``postgres`` OS user when the tests run as root (PostgreSQL
refuses root), in a directory made with ``tempfile.mkdtemp()`` (pytest's tmp_path is
root-only). Passwords never appear in any child's argv: initdb gets ``--pwfile``, SQL goes
to psql on stdin, psql finds passwords in a passfile.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import asyncpg

from laterbased.pg.passfile import passfile_line
from laterbased.proc import pids_with_cwd_under, read_postmaster_pid

SUPERUSER = "postgres"
REPLICATION_USER = "replicator"
# Every character that has ever broken a conninfo, a .pgpass line, a shell or SQL quoting.
NASTY_PASSWORD = r'p@ss w\'o"rd\\:ü'
START_TIMEOUT = 60.0

_live_servers: set[PgServer] = set()
_STOP_SIGNALS = {"smart": signal.SIGTERM, "fast": signal.SIGINT, "immediate": signal.SIGQUIT}


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def find_pg_bindir() -> Path:
    """LATERBASED_TEST_PG_BINDIR, then ``pg_config --bindir``, then the newest
    /usr/lib/postgresql/*/bin that has initdb."""
    configured = os.environ.get("LATERBASED_TEST_PG_BINDIR")
    if configured:
        path = Path(configured)
        if not (path / "initdb").exists():
            raise RuntimeError(f"LATERBASED_TEST_PG_BINDIR={configured} has no initdb")
        return path
    pg_config = shutil.which("pg_config")
    if pg_config:
        out = subprocess.run(
            [pg_config, "--bindir"], capture_output=True, text=True, check=False, timeout=30
        )
        path = Path(out.stdout.strip())
        if out.returncode == 0 and (path / "initdb").exists():
            return path
    candidates = [p for p in Path("/usr/lib/postgresql").glob("*/bin") if (p / "initdb").exists()]
    if not candidates:
        raise RuntimeError(
            "no PostgreSQL server binaries: run 'sudo bash scripts/setup' or set "
            "LATERBASED_TEST_PG_BINDIR"
        )
    return max(candidates, key=lambda p: tuple(int(x) for x in p.parent.name.split(".")))


def ensure_postgres_user() -> pwd.struct_passwd:
    try:
        return pwd.getpwnam("postgres")
    except KeyError:
        subprocess.run(
            ["useradd", "--system", "--home-dir", "/var/lib/postgresql", "--shell",
             "/bin/bash", "postgres"],
            check=True,
            timeout=60,
        )
        return pwd.getpwnam("postgres")


def _quote_setting(value: object) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, int | float):
        return str(value)
    return "'" + str(value).replace("'", "''") + "'"


def _sql_literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


class PgServer:
    """One initdb'd cluster on 127.0.0.1:<port>, run as a child of the test process.

    Attributes: host, port, superuser, superuser_password, replication_user,
    replication_password, base_dir, data_dir, socket_dir, log_file, bindir, os_user
    (pwd entry of the user running the server, None when not root).
    """

    def __init__(self, bindir: Path | None = None, **settings: object) -> None:
        self.bindir = bindir or find_pg_bindir()
        self.host = "127.0.0.1"
        self.port = free_port()
        self.superuser = SUPERUSER
        self.superuser_password = "super-" + os.urandom(8).hex()
        self.replication_user = REPLICATION_USER
        self.replication_password = NASTY_PASSWORD
        self.os_user = ensure_postgres_user() if os.geteuid() == 0 else None
        self.base_dir = Path(tempfile.mkdtemp(prefix="laterbased-pg-"))
        self.data_dir = self.base_dir / "data"
        self.socket_dir = self.base_dir / "sock"
        self.log_file = self.base_dir / "server.log"
        self.passfile = self.base_dir / "pgpass"  # owned by us (root), read by our psql
        self._settings = settings
        self._postmaster: subprocess.Popen[bytes] | None = None
        _live_servers.add(self)
        try:
            self._init()
        except BaseException:
            self.cleanup()
            raise

    def __repr__(self) -> str:
        return f"<PgServer {self.host}:{self.port} {self.data_dir}>"

    # ---- running programs -------------------------------------------------------------

    def _child_kwargs(self, as_server_user: bool) -> dict[str, Any]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PG", "LATERBASED_"))}
        env.update(LC_ALL="C.UTF-8", LANG="C.UTF-8", PGPASSFILE=str(self.passfile))
        kwargs: dict[str, Any] = {"env": env, "cwd": str(self.base_dir)}
        if as_server_user and self.os_user is not None:
            env.update(HOME=self.os_user.pw_dir, USER="postgres", LOGNAME="postgres")
            kwargs.update(user=self.os_user.pw_uid, group=self.os_user.pw_gid, extra_groups=[])
        return kwargs

    def run_server_tool(
        self, tool: str, *args: str, check: bool = True, timeout: float = 120.0
    ) -> subprocess.CompletedProcess[str]:
        """Run ``<bindir>/<tool> args`` as the server's OS user."""
        result = subprocess.run(
            [str(self.bindir / tool), *args],
            capture_output=True,
            text=True,
            check=False,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
            **self._child_kwargs(as_server_user=True),
        )
        if check and result.returncode != 0:
            raise RuntimeError(
                f"{tool} {' '.join(args)} failed ({result.returncode}):\n{result.stdout}\n"
                f"{result.stderr}\n--- server log ---\n{self.log_tail()}"
            )
        return result

    def _chown(self, path: Path) -> None:
        if self.os_user is not None:
            os.chown(path, self.os_user.pw_uid, self.os_user.pw_gid)

    def _init(self) -> None:
        self.base_dir.chmod(0o755)
        self._chown(self.base_dir)
        self.socket_dir.mkdir(mode=0o755, exist_ok=True)
        self._chown(self.socket_dir)
        pwfile = self.base_dir / "initdb.pw"
        fd = os.open(pwfile, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(self.superuser_password + "\n")
        self._chown(pwfile)
        try:
            self.run_server_tool(
                "initdb",
                "-D", str(self.data_dir),
                "-U", self.superuser,
                f"--pwfile={pwfile}",
                "--auth-local=trust",
                "--auth-host=scram-sha-256",
                "-E", "UTF8",
                "--locale=C.UTF-8",
                "--no-sync",
            )
        finally:
            pwfile.unlink()
        self.write_passfile()
        settings: dict[str, object] = {
            "listen_addresses": self.host,
            "port": self.port,
            "unix_socket_directories": str(self.socket_dir),
            "wal_level": "replica",
            "max_wal_senders": 10,
            "max_replication_slots": 10,
            "hot_standby": True,
            "fsync": False,
            "synchronous_commit": False,
            "full_page_writes": True,
            "password_encryption": "scram-sha-256",
            "shared_buffers": "32MB",
            "log_line_prefix": "%m [%p] %q%u@%d ",
        }
        settings.update(self._settings)
        self._append_conf(settings)
        # Replace initdb's pg_hba (which has trust for local replication too) with ours.
        (self.data_dir / "pg_hba.conf").write_text(
            "local all all trust\n"
            "local replication all trust\n"
            "host all all 127.0.0.1/32 scram-sha-256\n"
            "host replication all 127.0.0.1/32 scram-sha-256\n"
        )
        self._chown(self.data_dir / "pg_hba.conf")
        self.start()
        self.sql(
            f"CREATE ROLE {self.replication_user} WITH REPLICATION LOGIN PASSWORD "
            f"{_sql_literal(self.replication_password)}"
        )

    def write_passfile(self) -> None:
        """(Re)write the passfile our psql uses: superuser and replicator, any database."""
        lines = [
            passfile_line(self.host, self.port, "*", self.superuser, self.superuser_password),
            passfile_line(
                self.host, self.port, "*", self.replication_user, self.replication_password
            ),
        ]
        fd = os.open(self.passfile, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write("".join(line + "\n" for line in lines))

    def _append_conf(self, settings: Mapping[str, object]) -> None:
        with open(self.data_dir / "postgresql.conf", "a", encoding="utf-8") as handle:
            handle.write("\n# laterbased.pg.localcluster\n")
            for key, value in settings.items():
                handle.write(f"{key} = {_quote_setting(value)}\n")

    # ---- lifecycle --------------------------------------------------------------------

    @property
    def pid(self) -> int | None:
        return read_postmaster_pid(self.data_dir)

    def is_running(self) -> bool:
        return self._postmaster is not None and self._postmaster.poll() is None

    def start(self) -> None:
        """Start the postmaster as our own child (so we reap it: PID 1 here reaps nothing)
        and wait until it accepts SQL."""
        if self.is_running():
            return
        with open(self.log_file, "ab") as log:
            self._postmaster = subprocess.Popen(
                [str(self.bindir / "postgres"), "-D", str(self.data_dir)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                **self._child_kwargs(as_server_user=True),
            )
        postmaster = self._postmaster

        def ready() -> bool:
            if postmaster.poll() is not None:
                raise RuntimeError(
                    f"postgres exited with {postmaster.returncode} during start:\n"
                    f"{self.log_tail()}"
                )
            return self.sql("SELECT 1", check=False) == "1"

        self.wait_until(ready, START_TIMEOUT, f"{self} accepts SQL after start")

    def stop(self, mode: str = "fast", timeout: float = 60.0) -> None:
        """Stop like pg_ctl -m smart|fast|immediate; SIGKILL if it takes over ``timeout``."""
        postmaster = self._postmaster
        if postmaster is None:
            return
        if postmaster.poll() is None:
            postmaster.send_signal(_STOP_SIGNALS[mode])
            try:
                postmaster.wait(timeout)
            except subprocess.TimeoutExpired:
                postmaster.kill()
                postmaster.wait(30)
        self._postmaster = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def fail_over_in_place(self) -> None:
        """A failover of the same cluster as a client sees it: the server at this address
        comes back on a new timeline with the same system identifier (stopped, started as
        a standby of nobody, promoted)."""
        self.stop()
        marker = self.data_dir / "standby.signal"
        marker.touch()
        self._chown(marker)
        self.start()
        self.run_server_tool("pg_ctl", "promote", "-w", "-D", str(self.data_dir))

    def replace_by_new_cluster(self) -> Path:
        """Stop this server and ``initdb`` a new cluster in its place: same port, same
        roles and passwords, another system identifier (a reinstalled server). The old
        data directory is kept beside it; returns where."""
        self.stop()
        old = self.base_dir / f"data.replaced-{os.urandom(3).hex()}"
        os.rename(self.data_dir, old)
        self._init()
        return old

    def reload(self) -> None:
        self.run_server_tool("pg_ctl", "reload", "-D", str(self.data_dir))

    def append_hba(self, line: str, *, reload: bool = True) -> None:
        with open(self.data_dir / "pg_hba.conf", "a", encoding="utf-8") as handle:
            handle.write(line.rstrip("\n") + "\n")
        if reload and self.is_running():
            self.reload()

    def set_conf(self, *, restart: bool = False, **settings: object) -> None:
        """Append settings to postgresql.conf; reload (or restart) a running server."""
        self._append_conf(settings)
        if self.is_running():
            if restart:
                self.restart()
            else:
                self.reload()

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no server log)"

    @staticmethod
    def wait_until(condition: Callable[[], bool], timeout: float, what: str) -> None:
        """Poll ``condition`` until true; AssertionError naming ``what`` after ``timeout``."""
        deadline = time.monotonic() + timeout
        while True:
            if condition():
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout}s waiting for: {what}")
            time.sleep(0.05)

    def cleanup(self) -> None:
        """Stop the server (fast, then immediate, then SIGKILL), kill anything still
        running inside its directory, and delete the directory."""
        _live_servers.discard(self)
        with contextlib.suppress(Exception):
            self.stop("fast", timeout=20)
        with contextlib.suppress(Exception):
            self.stop("immediate", timeout=20)
        # Backends start their own sessions; after a postmaster crash they are orphans
        # (adopted by PID 1) that only their working directory still ties to us.
        leftovers = pids_with_cwd_under(self.base_dir)
        for pid in leftovers:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        shutil.rmtree(self.base_dir, ignore_errors=True)

    # ---- talking to it ----------------------------------------------------------------

    def psql_argv(self, database: str = "postgres", user: str | None = None) -> list[str]:
        return [
            str(self.bindir / "psql"),
            "-X", "-q", "-A", "-t",
            "-v", "ON_ERROR_STOP=1",
            "-h", self.host,
            "-p", str(self.port),
            "-U", user or self.superuser,
            "-d", database,
        ]

    def sql(
        self,
        query: str,
        database: str = "postgres",
        *,
        user: str | None = None,
        check: bool = True,
        env: Mapping[str, str] | None = None,
    ) -> str:
        """Run ``query`` through psql over TCP (password from the passfile, query on stdin);
        return its unaligned, tuples-only output, stripped."""
        kwargs = self._child_kwargs(as_server_user=False)
        if env:
            kwargs["env"].update(env)
        result = subprocess.run(
            [*self.psql_argv(database, user), "-f", "-"],
            input=query,
            capture_output=True,
            text=True,
            check=False,
            timeout=120,
            **kwargs,
        )
        if check and result.returncode != 0:
            raise RuntimeError(f"psql failed ({result.returncode}) for {query!r}:\n{result.stderr}")
        output: str = result.stdout
        return output.strip()

    def create_database(self, name: str) -> None:
        quoted = '"' + name.replace('"', '""') + '"'
        self.sql(f"CREATE DATABASE {quoted}")

    async def connect(
        self, database: str = "postgres", user: str | None = None, password: str | None = None
    ) -> Any:
        """asyncpg connection over TCP; as the superuser unless ``user`` is given (the
        replication user's password is known)."""
        user = user or self.superuser
        if password is None:
            password = {
                self.superuser: self.superuser_password,
                self.replication_user: self.replication_password,
            }.get(user)
        return await asyncpg.connect(
            host=self.host,
            port=self.port,
            user=user,
            password=password,
            database=database,
            timeout=30,
        )

    def dsn_kwargs(self, database: str = "postgres") -> dict[str, Any]:
        """host/port/user/password/database for the replication user (laterbased's own)."""
        return {
            "host": self.host,
            "port": self.port,
            "user": self.replication_user,
            "password": self.replication_password,
            "database": database,
        }


@contextlib.contextmanager
def pg_server(bindir: Path | None = None, **settings: object) -> Iterator[PgServer]:
    server = PgServer(bindir, **settings)
    try:
        yield server
    finally:
        server.cleanup()


@atexit.register
def _cleanup_all() -> None:
    for server in list(_live_servers):
        server.cleanup()
