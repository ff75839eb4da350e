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
import hashlib
import json
import os
import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

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
IMAGE = f"laterbased-test:pg{MAJOR}"
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


@pytest.fixture(scope="session")
def docker_env() -> Iterator[dict[str, str]]:
    """The environment for docker commands that reach an engine: the machine's own, or a
    private dockerd started here (bridges cannot work on these machines: no iptables)."""
    env = dict(os.environ)
    if engine_answers(env):
        yield env
        return
    env["DOCKER_HOST"] = PRIVATE_HOST
    if engine_answers(env):  # a private engine someone left running: use it, leave it
        yield env
        return
    dockerd = shutil.which("dockerd")
    if dockerd is None:
        pytest.fail("no dockerd: run 'sudo bash scripts/setup' (installs docker.io)")
    RUN_DIR.mkdir(parents=True, exist_ok=True)
    (CACHE / "data").mkdir(parents=True, exist_ok=True)
    driver = os.environ.get("LATERBASED_TEST_DOCKER_STORAGE_DRIVER", "overlay2")
    log_path = CACHE / "dockerd.log"
    with open(log_path, "ab") as log:
        process = subprocess.Popen(
            [
                dockerd, f"--storage-driver={driver}", "--iptables=false", "--bridge=none",
                f"--data-root={CACHE / 'data'}", f"--exec-root={RUN_DIR / 'exec'}",
                f"--pidfile={RUN_DIR / 'dockerd.pid'}", f"--host={PRIVATE_HOST}",
            ],
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 90
        while not engine_answers(env):
            if process.poll() is not None or time.monotonic() > deadline:
                tail = log_path.read_text(errors="replace")[-3000:]
                pytest.fail(f"private dockerd did not come up:\n{tail}")
            time.sleep(0.5)
        yield env
    finally:
        process.terminate()
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=30)


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
    postgres:13 that scripts/docker-base provides (cached too)."""
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
    logs: Callable[[], str] = lambda: run(  # noqa: E731
        [docker, "logs", "--tail", "60", name], docker_env, check=False
    ).stderr
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
        await wait_for(lambda: _is_200(http_port), "/healthz 200", timeout=300, interval=1,
                       log=logs)
        await wait_for(lambda: streaming_on(primary), "streaming in pg_stat_replication",
                       timeout=120, log=logs)
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
        await wait_for(lambda: _is_200(http_port), "/healthz 200 after docker start",
                       timeout=300, interval=1, log=logs)
        await wait_for(lambda: streaming_on(primary), "streaming again", timeout=120,
                       log=logs)
        resumed = run([docker, "logs", name], docker_env).stderr[before:]
        assert "pg_basebackup" not in resumed, resumed[-3000:]
        assert (data / "PG_VERSION").stat().st_ino == clone, "the standby was re-cloned"
        assert run([docker, "stop", "-t", "120", name], docker_env, timeout=180).returncode == 0
    finally:
        run([docker, "rm", "-f", name], docker_env, check=False)


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
    laterbased_image: str, host_dirs: Path,
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
        await check_compose_project(compose, env, project, primary, laterbased_image)
    finally:
        for first in ("compose.host.yaml", "compose.yaml"):
            if (project / first).exists():
                run([*compose, "-f", first, "-f", "compose.test.yaml", "down", "--volumes",
                     "--timeout", "120"], env, cwd=project, check=False, timeout=240)
                break


async def check_compose_project(compose: list[str], env: dict[str, str], project: Path,
                                primary: PgServer, laterbased_image: str) -> None:
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

    # This machine has no bridge networking: the services join the host's network (so
    # their ports are ones free here, on loopback) and use the image built above; the
    # health check is the image's, asked every 2 s. Everything else is compose.yaml as it is.
    http_port, standby_port = free_port(), free_port()
    (project / "compose.test.yaml").write_text(yaml.safe_dump({
        "services": {
            "prepare-primary": {"image": laterbased_image, "network_mode": "host"},
            "laterbased": {
                "image": laterbased_image, "network_mode": "host",
                "healthcheck": {"interval": "2s"},
                "environment": {
                    "LATERBASED_HTTP_HOST": "127.0.0.1",
                    "LATERBASED_HTTP_PORT": str(http_port),
                    "LATERBASED_STANDBY_LISTEN_ADDRESSES": "127.0.0.1",
                    "LATERBASED_STANDBY_PORT": str(standby_port),
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

    # The laterbased service itself, from the old .env through the compose secret. Its
    # published ports are the one thing taken out: they cannot go with the host's network.
    hosted = yaml.safe_load((project / "compose.yaml").read_text())
    del hosted["services"]["laterbased"]["ports"]
    (project / "compose.host.yaml").write_text(yaml.safe_dump(hosted))
    files = ["-f", "compose.host.yaml", "-f", "compose.test.yaml"]
    run([*compose, *files, "up", "-d", "--no-build", "laterbased"], env, cwd=project,
        timeout=300)
    container = run([*compose, *files, "ps", "-q", "laterbased"], env, cwd=project)
    name = container.stdout.strip()
    assert name, container.stdout + container.stderr
    docker = docker_cli()

    def logs() -> str:
        return run([docker, "logs", "--tail", "60", name], env, check=False).stderr

    def health() -> str:
        return run([docker, "inspect", "--format", "{{.State.Health.Status}}", name],
                   env).stdout.strip()

    await wait_for(lambda: _is_200(http_port), "/healthz 200 (compose)", timeout=300,
                   interval=1, log=logs)
    await wait_for(lambda: health() == "healthy", "compose service healthy", timeout=120,
                   log=logs)
    inspect = json.loads(run([docker, "inspect", name], env).stdout)[0]
    assert primary.superuser_password not in "\n".join(inspect["Config"]["Env"])
    run([*compose, *files, "stop", "laterbased"], env, cwd=project, timeout=240)
    exit_code = run([docker, "inspect", "--format", "{{.State.ExitCode}}", name],
                    env).stdout.strip()
    assert exit_code == "0", logs()
