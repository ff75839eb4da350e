"""The Docker image and the compose file, built and run for real.

If no Docker engine answers, a private ``dockerd`` is started with its own data root (kept
in ``/var/tmp/laterbased-docker`` so its images are a cache between runs on one machine) and
socket, and stopped at the end. ``scripts/docker-base`` makes ``postgres:13`` (pulled, or a
stand-in built from Debian's archive), ``scripts/docker-wheelhouse`` the wheelhouse, and the
image is built with ``--network none``: the offline build of the README. The container then
runs as a user would run it from the old Laterbase ``.env``, against a real primary.

Only PostgreSQL 13 (``pg_majors(13)``): the image's standby must be the primary's major,
one image per major is built, and 13 is what Resolve 18-20 ship; one major keeps CI's time.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest
import yaml
from pgserver import PgServer, free_port
from waiting import wait_for

# One private Docker engine and one image cache: these tests share a worker (xdist group).
pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800), pytest.mark.xdist_group("docker")]

ROOT = Path(__file__).resolve().parents[2]
MAJOR = 13
CACHE = Path(os.environ.get("LATERBASED_TEST_DOCKER_CACHE", "/var/tmp/laterbased-docker"))
RUN_DIR = Path("/run/laterbased-docker")
PRIVATE_HOST = f"unix://{RUN_DIR / 'docker.sock'}"
# The pid of a private dockerd a test session started (one started by hand has none).
STARTED_BY_TESTS = RUN_DIR / "dockerd.started-by-tests"
IMAGE = f"laterbased-test:pg{MAJOR}"
COMPOSE = ROOT / "docker" / "compose.yaml"
LIBRARY = "Resolve Projects"
UID = 999  # the postgres user of the official image (and of the stand-in)


def docker_cli() -> str:
    program = shutil.which("docker")
    if program is None:
        pytest.fail("no docker CLI: run 'sudo bash scripts/setup' (installs docker.io)")
    return program


def run(argv: list[str], env: dict[str, str], timeout: float = 120,
        check: bool = True, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        argv, env=env, capture_output=True, text=True, timeout=timeout, check=False, cwd=cwd
    )
    if check and result.returncode != 0:
        raise AssertionError(
            f"{' '.join(argv[:4])} ... exit {result.returncode}\n{result.stdout[-3000:]}"
            f"\n{result.stderr[-3000:]}"
        )
    return result


def engine_answers(env: dict[str, str]) -> bool:
    with contextlib.suppress(subprocess.TimeoutExpired):
        return run([docker_cli(), "version"], env, timeout=20, check=False).returncode == 0
    return False


@contextlib.contextmanager
def flocked(path: Path, mode: int = fcntl.LOCK_EX, timeout: float = 1500) -> Iterator[None]:
    """Hold a lock on ``path`` (shared between test sessions on this machine), waiting at
    most ``timeout`` seconds for it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(handle, mode | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    pytest.fail(f"{path} still locked after {timeout}s")
                time.sleep(0.5)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def start_private_dockerd(env: dict[str, str]) -> None:
    """Start the private dockerd detached (``setsid --fork``: no test process is its
    parent, so whichever session stops it, none is left holding a child)."""
    dockerd = shutil.which("dockerd")
    if dockerd is None:
        pytest.fail("no dockerd: run 'sudo bash scripts/setup' (installs docker.io)")
    (CACHE / "data").mkdir(parents=True, exist_ok=True)
    driver = os.environ.get("LATERBASED_TEST_DOCKER_STORAGE_DRIVER", "overlay2")
    log_path = CACHE / "dockerd.log"
    pidfile = RUN_DIR / "dockerd.pid"
    pidfile.unlink(missing_ok=True)  # only a dockerd that answers is ours below
    with open(log_path, "ab") as log:
        subprocess.run(
            [
                "setsid", "--fork", dockerd, f"--storage-driver={driver}", "--iptables=false",
                "--bridge=none", f"--data-root={CACHE / 'data'}",
                f"--exec-root={RUN_DIR / 'exec'}", f"--pidfile={pidfile}",
                f"--host={PRIVATE_HOST}",
            ],
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, check=True,
            timeout=30,
        )
    deadline = time.monotonic() + 90
    while not (engine_answers(env) and pidfile.exists()):
        if time.monotonic() > deadline:
            tail = log_path.read_text(errors="replace")[-3000:]
            pytest.fail(f"private dockerd did not come up:\n{tail}")
        time.sleep(0.5)
    STARTED_BY_TESTS.write_text(pidfile.read_text())


def stop_private_dockerd() -> None:
    """Stop the private dockerd if a test session started it (this one or an earlier one):
    one started by hand is left alone."""
    try:
        pid = int(STARTED_BY_TESTS.read_text())
        command = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (FileNotFoundError, ProcessLookupError, ValueError):
        STARTED_BY_TESTS.unlink(missing_ok=True)
        return
    if b"dockerd" not in command or PRIVATE_HOST.encode() not in command:
        STARTED_BY_TESTS.unlink(missing_ok=True)  # that pid is someone else's by now
        return
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 60
    while alive(pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    if alive(pid):
        os.kill(pid, signal.SIGKILL)
    STARTED_BY_TESTS.unlink(missing_ok=True)


def alive(pid: int) -> bool:
    """Still running (a zombie is not: it waits for a reaper that may never come)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError):
        return False


@pytest.fixture(scope="session")
def docker_env() -> Iterator[dict[str, str]]:
    """The environment for docker commands that reach an engine: the machine's own, or a
    private dockerd (bridges cannot work on these machines: no iptables).

    Several test sessions on one machine (CI, a developer's run) share the private engine:
    each holds a shared lock on users.lock while it uses it, and only the last one out
    stops it. (Each session used to stop the engine it had started, killing the containers
    of another session that had found it running: both container tests failed at once.)"""
    env = dict(os.environ)
    if engine_answers(env):
        yield env
        return
    env["DOCKER_HOST"] = PRIVATE_HOST
    RUN_DIR.mkdir(parents=True, exist_ok=True)
    with open(RUN_DIR / "users.lock", "a") as users:
        with flocked(RUN_DIR / "start.lock", timeout=180):
            if not engine_answers(env):
                start_private_dockerd(env)
            fcntl.flock(users, fcntl.LOCK_SH)
        try:
            yield env
        finally:
            with flocked(RUN_DIR / "start.lock", timeout=180):
                fcntl.flock(users, fcntl.LOCK_UN)
                try:
                    fcntl.flock(users, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    pass  # another session still uses the engine: it stops it at its end
                else:
                    stop_private_dockerd()


def tree_hash(*paths: Path) -> str:
    digest = hashlib.sha256()
    for path in paths:
        files = sorted(path.rglob("*")) if path.is_dir() else [path]
        for file in files:
            if file.is_file() and "__pycache__" not in file.parts:
                digest.update(str(file.relative_to(ROOT)).encode() + b"\0" + file.read_bytes())
    return digest.hexdigest()[:16]


@pytest.fixture(scope="session")
def laterbased_image(docker_env: dict[str, str]) -> str:
    """laterbased:pg13 built offline (--network none) from a cached wheelhouse on a
    postgres:13 that scripts/docker-base provides (cached too). One session at a time
    builds (the wheelhouse, the base images and the prune are shared on this machine)."""
    with flocked(CACHE / "build.lock"):
        return build_laterbased_image(docker_env)


def build_laterbased_image(docker_env: dict[str, str]) -> str:
    run(["bash", str(ROOT / "scripts" / "docker-base"), str(MAJOR)], docker_env, timeout=1500)
    base_id = run(
        [docker_cli(), "image", "inspect", "--format", "{{.Id}}", f"postgres:{MAJOR}"],
        docker_env,
    ).stdout.strip()
    key = hashlib.sha256(
        (base_id + tree_hash(ROOT / "pyproject.toml", ROOT / "scripts" / "docker-wheelhouse"))
        .encode()
    ).hexdigest()[:16]
    wheelhouse = CACHE / f"wheelhouse-{key}"
    if not wheelhouse.is_dir():
        for old in CACHE.glob("wheelhouse-*"):
            shutil.rmtree(old, ignore_errors=True)
        making = Path(tempfile.mkdtemp(prefix="wheelhouse-", dir=CACHE))
        run(["bash", str(ROOT / "scripts" / "docker-wheelhouse"), str(MAJOR), str(making)],
            docker_env, timeout=900)
        making.rename(wheelhouse)
    context = Path(tempfile.mkdtemp(prefix="laterbased-build-"))
    try:
        ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
        for name in ("pyproject.toml", "README.md", ".dockerignore"):
            shutil.copy2(ROOT / name, context / name)
        shutil.copytree(ROOT / "laterbased", context / "laterbased", ignore=ignore)
        shutil.copytree(ROOT / "docker", context / "docker", ignore=ignore)
        for part in ("debs", "wheels"):
            shutil.copytree(wheelhouse / part, context / "docker" / "wheelhouse" / part)
        build = [docker_cli(), "build", "--network", "none",
                 "-f", str(context / "docker" / "Dockerfile"),
                 "--build-arg", f"PG_MAJOR={MAJOR}", str(context)]
        classic = docker_env | {"DOCKER_BUILDKIT": "0"}
        # The build stage tagged too, so that the next run finds it as cache and the prune
        # below removes only what older builds left (~250 MB each change under laterbased/).
        run([*build, "--target", "build", "-t", f"{IMAGE}-build"], classic, timeout=1500)
        run([*build, "-t", IMAGE], classic, timeout=1500)
        prune = [docker_cli(), "image", "prune", "--force"]
        if docker_env.get("DOCKER_HOST") != PRIVATE_HOST:
            # Someone's own engine: only the images this test made and replaced.
            prune += ["--filter", "label=org.opencontainers.image.title=laterbased"]
        run(prune, docker_env)
    finally:
        shutil.rmtree(context, ignore_errors=True)
    return IMAGE


@pytest.fixture(scope="session")
def pgadmin_image(docker_env: dict[str, str]) -> str:
    """The pgAdmin image compose.yaml names: the official one when the engine has it or can
    pull it, else scripts/docker-pgadmin's stand-in from PyPI (cached: rebuilt only when
    its recipe changes)."""
    with flocked(CACHE / "build.lock"):
        run(["bash", str(ROOT / "scripts" / "docker-pgadmin")], docker_env, timeout=1500)
    image: str = yaml.safe_load(COMPOSE.read_text())["services"]["pgadmin"]["image"]
    run([docker_cli(), "image", "inspect", image], docker_env)
    return image


def legacy_env(primary: PgServer) -> str:
    """An old Laterbase .env: host paths (relative backups dir), the pgAdmin login too."""
    return (
        "# the old Laterbase .env, unchanged\n"
        f"PRIMARY_HOST={primary.host}\n"
        f"PRIMARY_PORT={primary.port}\n"
        f"PRIMARY_USER={primary.superuser}\n"
        f"REPL_PASSWORD={primary.superuser_password}\n"
        "PGDATA=/var/lib/laterbase/standby\n"
        "LOCAL_BACKUP_PATH=./backups\n"
        "BACKUP_RETENTION_DAYS=7\n"
        "TZ=Europe/London\n"
        "RCLONE_REMOTE_NAME=\n"
        "RCLONE_REMOTE_PATH=resolve_backups/production\n"
        "PGADMIN_EMAIL=admin@example.com\n"
        "PGADMIN_PASSWORD=pgadmin-secret-1234\n"
    )


def owned_dir(path: Path, mode: int = 0o700) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    os.chown(path, UID, UID)
    path.chmod(mode)
    return path


@pytest.fixture
def host_dirs() -> Iterator[Path]:
    base = Path(tempfile.mkdtemp(prefix="laterbased-container-"))
    base.chmod(0o755)
    try:
        yield base
    finally:
        shutil.rmtree(base, ignore_errors=True)


async def healthz_status(port: int) -> int:
    try:
        async with aiohttp.ClientSession() as session, session.get(
            f"http://127.0.0.1:{port}/healthz", timeout=aiohttp.ClientTimeout(total=5)
        ) as response:
            return response.status
    except (TimeoutError, aiohttp.ClientError):
        return 0


async def _is_200(port: int) -> bool:
    return await healthz_status(port) == 200


async def streaming_on(primary: PgServer) -> bool:
    connection = await asyncpg.connect(
        host=primary.host, port=primary.port, user=primary.superuser,
        password=primary.superuser_password, database="postgres",
    )
    try:
        states = await connection.fetch("SELECT state FROM pg_stat_replication")
    finally:
        await connection.close()
    return any(row["state"] == "streaming" for row in states)


def container_story(env: dict[str, str], name: str) -> str:
    """How a container ended (or is doing) and its last log lines, for failure messages."""
    state = run([docker_cli(), "inspect", "--format", "{{json .State}}", name], env,
                check=False)
    logs = run([docker_cli(), "logs", "--tail", "150", "--timestamps", name], env,
               check=False)
    return (f"--- container {name[:12]}: {state.stdout.strip() or state.stderr.strip()}\n"
            f"{logs.stdout}{logs.stderr}")


def fail_if_stopped(env: dict[str, str], names: dict[str, str]) -> bool:
    """Fail at once, with the story, when a container has stopped, instead of waiting for
    a deadline (a daemon that exits within seconds of its start says why in its logs);
    False while they all run, so that ``fail_if_stopped(...) or condition`` waits on."""
    for service, name in names.items():
        status = run([docker_cli(), "inspect", "--format", "{{.State.Status}}", name], env,
                     check=False).stdout.strip()
        if status != "running":
            raise AssertionError(f"{service} container is {status or 'gone'}:\n"
                                 + container_story(env, name))
    return False


def container_pids(env: dict[str, str], name: str) -> list[int]:
    lines = run([docker_cli(), "top", name, "-o", "pid"], env).stdout.split()
    return [int(word) for word in lines if word.isdigit()]


def uids_and_environ(pid: int) -> tuple[list[int], bytes] | None:
    """Real/effective/saved/fs uids and the environment of a process, None once gone (a
    postgres backend may end between `docker top` and here)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
        environ = Path(f"/proc/{pid}/environ").read_bytes()
    except (FileNotFoundError, ProcessLookupError):
        return None
    for line in status.splitlines():
        if line.startswith("Uid:"):
            return [int(value) for value in line.split()[1:]], environ
    return None


@pytest.mark.pg_majors(13)
async def test_container_from_old_env_streams_backs_up_is_healthy_and_stops_cleanly(
    make_primary: Callable[..., PgServer], docker_env: dict[str, str],
    laterbased_image: str, host_dirs: Path,
) -> None:
    docker = docker_cli()
    primary = make_primary()
    # A Resolve project library, found by the daemon's auto-discovery (no PRIMARY_DB).
    primary.create_database(LIBRARY)
    primary.sql('CREATE TABLE "SM_Project" (id int PRIMARY KEY, name text)', database=LIBRARY)
    env_file = host_dirs / ".env"
    env_file.write_text(legacy_env(primary))
    env_file.chmod(0o644)  # read by uid 999 through the bind mount
    # /var/lib/postgresql and its data/ both bind mounts of one host file system: the
    # standby's data dir is a mount point os.path.ismount cannot see, where the bootstrap
    # used to re-clone for ever (EBUSY, issue 14 item 9).
    home = owned_dir(host_dirs / "postgresql", 0o755)
    data = owned_dir(host_dirs / "standby-data")
    state = owned_dir(host_dirs / "state")
    backups = owned_dir(host_dirs / "backups")
    http_port, standby_port = free_port(), free_port()
    name = f"laterbased-test-{uuid.uuid4().hex[:8]}"
    names = {"laterbased": name}

    def logs() -> str:
        return container_story(docker_env, name)

    run(
        [
            docker, "run", "-d", "--name", name, "--network", "host", "--init",
            # The image's own health command; only its interval is shortened.
            "--health-interval", "2s",
            "-v", f"{env_file}:/run/secrets/env:ro",
            "-v", f"{home}:/var/lib/postgresql",
            "-v", f"{data}:/var/lib/postgresql/data",
            "-v", f"{state}:/var/lib/laterbased",
            "-v", f"{backups}:/backups",
            # What compose.yaml sets: the .env as a file, container paths over its host paths.
            "-e", "LATERBASED_ENV_FILE=/run/secrets/env",
            "-e", "PGDATA=/var/lib/postgresql/data",
            "-e", "LOCAL_BACKUP_PATH=/backups",
            "-e", "LATERBASED_STATE_DIR=/var/lib/laterbased",
            "-e", "LATERBASED_HTTP_HOST=127.0.0.1",
            "-e", f"LATERBASED_HTTP_PORT={http_port}",
            "-e", f"LATERBASED_STANDBY_PORT={standby_port}",
            laterbased_image,
        ],
        docker_env,
    )
    try:
        await wait_for(lambda: fail_if_stopped(docker_env, names) or _is_200(http_port),
                       "/healthz 200", timeout=300, interval=1, log=logs)
        await wait_for(lambda: fail_if_stopped(docker_env, names) or streaming_on(primary),
                       "streaming in pg_stat_replication", timeout=120, log=logs)
        made = await wait_for(
            lambda: sorted(p.name for p in backups.rglob("*") if p.suffix == ".json"),
            "a backup manifest in the mounted volume", timeout=120, log=logs,
        )
        assert any(p.suffix in {".backup", ".dump"} for p in backups.rglob("*")), made

        def health() -> str:
            return run([docker, "inspect", "--format", "{{.State.Health.Status}}", name],
                       docker_env).stdout.strip()

        await wait_for(lambda: health() == "healthy", "HEALTHCHECK healthy", timeout=120,
                       log=logs)
        processes = {pid: uids_and_environ(pid) for pid in container_pids(docker_env, name)}
        seen = {pid: facts for pid, facts in processes.items() if facts is not None}
        assert len(seen) >= 3, processes  # init, laterbased, postgres and its children
        secrets = (primary.superuser_password.encode(), b"pgadmin-secret-1234")
        for pid, (uids, environ) in seen.items():
            assert 0 not in uids, (pid, uids)
            assert not any(secret in environ for secret in secrets), f"password in {pid}'s env"
        inspect = json.loads(run([docker, "inspect", name], docker_env).stdout)[0]
        environment = "\n".join(inspect["Config"]["Env"])
        assert primary.superuser_password not in environment
        assert "pgadmin-secret-1234" not in environment

        clone = (data / "PG_VERSION").stat().st_ino
        stop = run([docker, "stop", "-t", "120", name], docker_env, timeout=180)
        assert stop.returncode == 0
        exit_code = run([docker, "inspect", "--format", "{{.State.ExitCode}}", name],
                        docker_env).stdout.strip()
        assert exit_code == "0", logs()  # 137 would be SIGKILL after the timeout
        assert not (data / "postmaster.pid").exists(), "postgres was not stopped cleanly"

        before = len(run([docker, "logs", name], docker_env).stderr)
        run([docker, "start", name], docker_env)
        await wait_for(lambda: fail_if_stopped(docker_env, names) or _is_200(http_port),
                       "/healthz 200 after docker start", timeout=300, interval=1, log=logs)
        await wait_for(lambda: fail_if_stopped(docker_env, names) or streaming_on(primary),
                       "streaming again", timeout=120, log=logs)
        resumed = run([docker, "logs", name], docker_env).stderr[before:]
        assert "pg_basebackup" not in resumed, resumed[-3000:]
        assert (data / "PG_VERSION").stat().st_ino == clone, "the standby was re-cloned"
        assert run([docker, "stop", "-t", "120", name], docker_env, timeout=180).returncode == 0
    except BaseException:
        print(logs())  # shown by pytest with the failure: why the container did what it did
        raise
    finally:
        run([docker, "rm", "-f", name], docker_env, check=False)


async def login_page(port: int) -> bool:
    try:
        async with aiohttp.ClientSession() as session, session.get(
            f"http://127.0.0.1:{port}/login", timeout=aiohttp.ClientTimeout(total=10)
        ) as response:
            return response.status == 200 and "pgAdmin" in await response.text()
    except (TimeoutError, aiohttp.ClientError):
        return False


class PgAdmin:
    """pgAdmin 4's web API as its browser UI uses it: a session cookie from the login form
    and the CSRF token from the login page on every request."""

    def __init__(self, session: aiohttp.ClientSession, base: str, token: str) -> None:
        self.session, self.base, self.token = session, base, token

    async def get(self, path: str) -> Any:
        async with self.session.get(f"{self.base}{path}",
                                    headers={"X-pgA-CSRFToken": self.token}) as response:
            assert response.status == 200, (path, response.status, await response.text())
            return await response.json()

    async def nodes(self, path: str) -> list[dict[str, Any]]:
        body = await self.get(path)
        # pgAdmin answers some listings under "data", others under "result".
        nodes: list[dict[str, Any]] = body.get("data") or body.get("result") or []
        return nodes

    async def servers(self, group: str) -> dict[str, dict[str, Any]]:
        """Name -> properties (host, port, username, ...) of the servers in a group."""
        groups = {node["label"]: node["_id"]
                  for node in await self.nodes("/browser/server_group/nodes/")}
        assert group in groups, groups
        gid = groups[group]
        found = {}
        for node in await self.nodes(f"/browser/server/nodes/{gid}"):
            properties = await self.get(f"/browser/server/obj/{gid}/{node['_id']}")
            found[node["label"]] = properties | {"gid": gid, "sid": node["_id"]}
        return found

    async def connect(self, server: dict[str, Any], password: str) -> bool:
        """Connect pgAdmin to a server; whether that server is in recovery."""
        async with self.session.post(
            f"{self.base}/browser/server/connect/{server['gid']}/{server['sid']}",
            json={"password": password, "save_password": False},
            headers={"X-pgA-CSRFToken": self.token},
        ) as response:
            body = await response.json(content_type=None)
        assert response.status == 200 and body["data"]["connected"], body
        return bool(body["data"]["in_recovery"])


@contextlib.asynccontextmanager
async def pgadmin_session(port: int, email: str, password: str) -> AsyncIterator[PgAdmin]:
    base = f"http://127.0.0.1:{port}"
    # unsafe: pgAdmin's cookies come from an IP address (127.0.0.1).
    async with aiohttp.ClientSession(
        cookie_jar=aiohttp.CookieJar(unsafe=True), timeout=aiohttp.ClientTimeout(total=60)
    ) as session:
        async with session.get(f"{base}/login") as response:
            page = await response.text()
        found = re.search(r'"csrfToken":\s*"([^"]+)"', page)
        assert found, page[-2000:]
        token = found.group(1)
        async with session.post(
            f"{base}/authenticate/login", allow_redirects=False,
            data={"csrf_token": token, "email": email, "password": password,
                  "language": "en", "internal_button": "Login"},
        ) as response:
            # A wrong login sends the browser back to /login.
            assert response.status == 302, response.status
            assert "/login" not in response.headers.get("Location", ""), response.headers
        yield PgAdmin(session, base, token)


def compose_tool(env: dict[str, str]) -> list[str]:
    """Compose v2 (``docker compose``) where installed, else Debian's v1 ``docker-compose``
    (the only compose in Debian's archive; scripts/setup installs it)."""
    if run([docker_cli(), "compose", "version"], env, check=False).returncode == 0:
        return [docker_cli(), "compose"]
    v1 = shutil.which("docker-compose")
    if v1 is None:
        pytest.fail("no compose tool: run 'sudo bash scripts/setup' (installs docker-compose)")
    return [v1]


@pytest.mark.pg_majors(13)
async def test_compose_takes_the_old_env_unchanged_prepares_the_primary_and_runs_healthy(
    make_primary: Callable[..., PgServer], docker_env: dict[str, str],
    laterbased_image: str, pgadmin_image: str, host_dirs: Path,
) -> None:
    compose = compose_tool(docker_env)
    primary = make_primary()
    primary.create_database(LIBRARY)
    primary.sql('CREATE TABLE "SM_Project" (id int PRIMARY KEY, name text)', database=LIBRARY)
    project = host_dirs / "docker"
    project.mkdir()
    shutil.copy(ROOT / "docker" / "compose.yaml", project / "compose.yaml")
    (project / ".env").write_text(legacy_env(primary))
    (project / ".env").chmod(0o644)
    (project / "servers.json").write_text('{"Servers": {}}')
    env = docker_env | {"COMPOSE_PROJECT_NAME": f"laterbased-test-{uuid.uuid4().hex[:8]}"}

    try:
        await check_compose_project(compose, env, project, primary, laterbased_image,
                                    pgadmin_image)
    except BaseException:
        if (project / "compose.host.yaml").exists():  # shown by pytest with the failure
            told = run([*compose, "-f", "compose.host.yaml", "-f", "compose.test.yaml",
                        "logs", "--timestamps", "--tail", "150"], env, cwd=project,
                       check=False)
            print(told.stdout + told.stderr)
        raise
    finally:
        for first in ("compose.host.yaml", "compose.yaml"):
            if (project / first).exists():
                run([*compose, "-f", first, "-f", "compose.test.yaml", "down", "--volumes",
                     "--timeout", "120"], env, cwd=project, check=False, timeout=240)
                break


async def check_compose_project(compose: list[str], env: dict[str, str], project: Path,
                                primary: PgServer, laterbased_image: str,
                                pgadmin_image: str) -> None:
    rendered = yaml.safe_load(run([*compose, "config"], env, cwd=project).stdout)
    services = rendered["services"]
    for service in services.values():
        values = " ".join(str(value) for value in (service.get("environment") or {}).values())
        assert primary.superuser_password not in values
        assert "pgadmin-secret-1234" not in values
        assert "env_file" not in service
    laterbased = services["laterbased"]
    assert laterbased["environment"]["LOCAL_BACKUP_PATH"] == "/backups"
    assert "healthcheck" not in laterbased, "the image's port-aware HEALTHCHECK applies"
    assert services["prepare-primary"]["environment"]["LOCAL_BACKUP_PATH"] == "/backups"
    assert services["pgadmin"]["image"] == pgadmin_image

    # This machine has no bridge networking: the services join the host's network (so
    # their ports are ones free here, on loopback) and use the image built above; the
    # health check is the image's, asked every 2 s. pgAdmin listens where the host's
    # network has room (compose.yaml maps its port 80) and does not look for a newer
    # version on the internet. Neither restarts by itself: a test session killed halfway
    # must not leave services that come back with the engine's next start. Everything else
    # is compose.yaml as it is.
    http_port, standby_port, pgadmin_port = free_port(), free_port(), free_port()
    (project / "compose.test.yaml").write_text(yaml.safe_dump({
        "services": {
            "prepare-primary": {"image": laterbased_image, "network_mode": "host"},
            "laterbased": {
                "image": laterbased_image, "network_mode": "host", "restart": "no",
                "healthcheck": {"interval": "2s"},
                "environment": {
                    "LATERBASED_HTTP_HOST": "127.0.0.1",
                    "LATERBASED_HTTP_PORT": str(http_port),
                    "LATERBASED_STANDBY_LISTEN_ADDRESSES": "127.0.0.1",
                    "LATERBASED_STANDBY_PORT": str(standby_port),
                },
            },
            "pgadmin": {
                "network_mode": "host", "restart": "no",
                "environment": {
                    "PGADMIN_LISTEN_ADDRESS": "127.0.0.1",
                    "PGADMIN_LISTEN_PORT": str(pgadmin_port),
                    "PGADMIN_CONFIG_UPGRADE_CHECK_ENABLED": "False",
                },
            },
        },
    }))
    files = ["-f", "compose.yaml", "-f", "compose.test.yaml"]
    result = run(
        [*compose, "-f", "compose.yaml", "-f", "compose.test.yaml", "--profile", "prepare",
         "run", "--rm", "-T", "prepare-primary", "--dry-run"],
        env, cwd=project, timeout=300, check=False,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    assert "dry run: nothing changed" in output, output[-3000:]
    assert primary.superuser_password not in output

    # The servers.json pgAdmin gets, made as docs/deployment.md says: by laterbased in its
    # own image, from the old .env (there with --standby-host laterbased, the service's name
    # on the compose network; here the host's network, where the standby listens on
    # 127.0.0.1 at the port chosen above).
    made = run(
        [*compose, "-f", "compose.yaml", "-f", "compose.test.yaml", "--profile", "prepare",
         "run", "--rm", "-T", "-e", f"LATERBASED_STANDBY_PORT={standby_port}",
         "--entrypoint", "laterbased", "prepare-primary", "pgadmin-servers",
         "--standby-host", "127.0.0.1"],
        env, cwd=project, timeout=300,
    )
    assert primary.superuser_password not in made.stdout + made.stderr
    assert len(json.loads(made.stdout)["Servers"]) == 2, made.stdout
    (project / "servers.json").write_text(made.stdout)

    # Both services, from the old .env through the compose secret. Their published ports
    # are the one thing taken out: they cannot go with the host's network.
    hosted = yaml.safe_load((project / "compose.yaml").read_text())
    for service in ("laterbased", "pgadmin"):
        del hosted["services"][service]["ports"]
    (project / "compose.host.yaml").write_text(yaml.safe_dump(hosted))
    files = ["-f", "compose.host.yaml", "-f", "compose.test.yaml"]
    run([*compose, *files, "up", "-d", "--no-build", "laterbased", "pgadmin"], env,
        cwd=project, timeout=300)
    names = {}
    for service in ("laterbased", "pgadmin"):
        container = run([*compose, *files, "ps", "-q", service], env, cwd=project)
        names[service] = container.stdout.strip()
        assert names[service], container.stdout + container.stderr
    name = names["laterbased"]
    docker = docker_cli()

    def logs() -> str:
        return "\n".join(container_story(env, names[service]) for service in names)

    def health() -> str:
        return run([docker, "inspect", "--format", "{{.State.Health.Status}}", name],
                   env).stdout.strip()

    await wait_for(lambda: fail_if_stopped(env, names) or _is_200(http_port),
                   "/healthz 200 (compose)", timeout=300, interval=1, log=logs)
    await wait_for(lambda: fail_if_stopped(env, names) or health() == "healthy",
                   "compose service healthy", timeout=120, log=logs)
    await wait_for(lambda: fail_if_stopped(env, names) or login_page(pgadmin_port),
                   "pgAdmin's login page", timeout=300, interval=1, log=logs)
    for service in names.values():
        inspect = json.loads(run([docker, "inspect", service], env).stdout)[0]
        environment = "\n".join(inspect["Config"]["Env"])
        assert primary.superuser_password not in environment
        assert "pgadmin-secret-1234" not in environment

    # Logged in with the old .env's PGADMIN_EMAIL / PGADMIN_PASSWORD, pgAdmin lists the
    # Resolve primary and the standby from servers.json, and reaches both through them:
    # the standby answers as one in recovery.
    async with pgadmin_session(pgadmin_port, "admin@example.com",
                               "pgadmin-secret-1234") as pgadmin:
        servers = await pgadmin.servers("Laterbase")
        assert sorted(servers) == [
            f"Resolve primary ({primary.host})", "laterbased standby (read-only)",
        ], servers
        primary_entry = servers[f"Resolve primary ({primary.host})"]
        standby_entry = servers["laterbased standby (read-only)"]
        assert (primary_entry["host"], primary_entry["port"]) == (primary.host, primary.port)
        assert (standby_entry["host"], standby_entry["port"]) == ("127.0.0.1", standby_port)
        assert primary_entry["username"] == standby_entry["username"] == primary.superuser
        assert await pgadmin.connect(primary_entry, primary.superuser_password) is False
        assert await pgadmin.connect(standby_entry, primary.superuser_password) is True

    run([*compose, *files, "stop", "laterbased", "pgadmin"], env, cwd=project, timeout=240)
    exit_code = run([docker, "inspect", "--format", "{{.State.ExitCode}}", name],
                    env).stdout.strip()
    assert exit_code == "0", logs()
