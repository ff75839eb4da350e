"""Our alert rules in a real Prometheus (Debian's) scraping a real daemon: the rules load
without errors, and with short ``for:`` durations LaterbasedPrimaryUnreachable fires when
the primary stops and clears when it returns; LaterbasedDown fires for the one host that
cannot be scraped."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import signal
import tempfile
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from daemon_process import DaemonProcess, minimal_config, write_config
from pgserver import PgServer, free_port
from waiting import wait_for

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("prometheus") is None, reason="apt-get install prometheus"),
]

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "deploy" / "prometheus" / "alerts.yaml"
INTERVAL = 0.5  # the daemon's monitor.interval


def short_rules(source: Path) -> dict[str, Any]:
    """A copy of the rules whose ``for:`` durations are all 2 s (group renamed)."""
    doc = yaml.safe_load(source.read_text())
    for group in doc["groups"]:
        group["name"] += "-short"
        group["interval"] = "1s"
        for rule in group["rules"]:
            rule["for"] = "2s"
    return doc


@pytest.fixture
def workdir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="laterbased-prometheus-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


class Prometheus:
    def __init__(self, url: str, proc: asyncio.subprocess.Process, log: Path) -> None:
        self.url = url
        self.proc = proc
        self.log = log

    async def api(self, path: str, **params: str) -> Any:
        async with aiohttp.ClientSession() as session:
            async with session.get(f"{self.url}/api/v1/{path}", params=params) as answer:
                body = await answer.json()
        assert body["status"] == "success", body
        return body["data"]

    async def firing(self, name: str) -> list[dict[str, Any]]:
        alerts = (await self.api("alerts"))["alerts"]
        return [
            a for a in alerts if a["labels"]["alertname"] == name and a["state"] == "firing"
        ]

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]


@contextlib.asynccontextmanager
async def running_prometheus(workdir: Path, target: str) -> AsyncIterator[Prometheus]:
    (workdir / "short.yaml").write_text(yaml.safe_dump(short_rules(RULES)))
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(RULES), str(workdir / "short.yaml")],
        "scrape_configs": [
            {"job_name": "laterbased", "static_configs": [{"targets": [target]}]}
        ],
    }
    (workdir / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = free_port()
    log = workdir / "prometheus.log"
    with log.open("wb") as output:
        proc = await asyncio.create_subprocess_exec(
            "prometheus",
            f"--config.file={workdir / 'prometheus.yml'}",
            f"--storage.tsdb.path={workdir / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
            stdin=asyncio.subprocess.DEVNULL,
            stdout=output,
            stderr=output,
        )
    server = Prometheus(f"http://127.0.0.1:{port}", proc, log)
    try:

        async def ready() -> bool:
            assert proc.returncode is None, server.log_text()
            try:
                async with aiohttp.ClientSession() as session:
                    async with session.get(f"{server.url}/-/ready") as answer:
                        return answer.status == 200
            except aiohttp.ClientError:
                return False

        await wait_for(ready, "prometheus ready", 60, log=server.log_text)
        yield server
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), 30)
            except TimeoutError:
                proc.kill()
                await proc.wait()


async def test_real_prometheus_loads_the_rules_and_primary_unreachable_fires_and_clears(
    make_primary: Callable[..., PgServer], workdir: Path
) -> None:
    primary = make_primary()
    http_port = free_port()
    config = minimal_config(
        workdir,
        primary={
            "host": primary.host,
            "port": primary.port,
            "user": primary.replication_user,
            "password": primary.replication_password,
            "connect_timeout": "2s",
        },
        monitor={"interval": INTERVAL, "query_timeout": "2s"},
        http={"host": "127.0.0.1", "port": http_port},
    )
    config_path = write_config(workdir / "laterbased.yaml", config)
    os.chmod(config_path, 0o600)
    daemon = await DaemonProcess.start(config_path, http_port)
    target = f"127.0.0.1:{http_port}"
    try:
        await daemon.wait_http()
        async with running_prometheus(workdir, target) as prometheus:
            # Both files load, every rule evaluates without an error.
            async def evaluated() -> list[dict[str, Any]] | None:
                groups = (await prometheus.api("rules"))["groups"]
                rules = [rule for group in groups for rule in group["rules"]]
                done = all(rule.get("lastEvaluation", "").startswith("20") for rule in rules)
                return rules if groups and done else None

            rules = await wait_for(evaluated, "every rule evaluated", 60)
            broken = [(r["name"], r.get("lastError")) for r in rules if r["health"] != "ok"]
            assert broken == [], broken
            loaded = {r["name"] for r in rules}
            assert {"LaterbasedPrimaryUnreachable", "LaterbasedDown"} <= loaded

            async def scraped() -> bool:
                result = (await prometheus.api("query", query="laterbased_primary_up"))
                values = [sample["value"][1] for sample in result["result"]]
                return values == ["1"]

            await wait_for(scraped, "laterbased_primary_up 1 in prometheus", 60,
                           log=prometheus.log_text)
            assert await prometheus.firing("LaterbasedPrimaryUnreachable") == []

            await asyncio.to_thread(primary.stop, "fast")
            fired = await wait_for(
                lambda: prometheus.firing("LaterbasedPrimaryUnreachable"),
                "LaterbasedPrimaryUnreachable firing",
                60,
                log=lambda: daemon.log[-3000:],
            )
            assert fired[0]["labels"]["instance"] == target
            assert fired[0]["labels"]["severity"] == "critical"

            await asyncio.to_thread(primary.start)

            async def cleared() -> bool:
                return await prometheus.firing("LaterbasedPrimaryUnreachable") == []

            # The primary is seen within two polls + 5 s; one scrape and one evaluation on
            # top (1 s each), and some slack for a loaded machine.
            await wait_for(cleared, "LaterbasedPrimaryUnreachable cleared", 20,
                           log=lambda: daemon.log[-3000:])

            # The daemon dies: the per-host rule names this very instance.
            await daemon.stop()
            down = await wait_for(
                lambda: prometheus.firing("LaterbasedDown"), "LaterbasedDown firing", 60
            )
            assert [a["labels"]["instance"] for a in down] == [target]
    finally:
        await daemon.stop()
    assert not re.search(r"Traceback", daemon.log), daemon.log[-3000:]
