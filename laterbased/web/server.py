"""The embedded HTTP server: health, Patroni-style role checks, status and metrics.

Built on aiohttp's ``AppRunner`` + ``TCPSite`` so it lives inside the daemon's event loop.
Handlers only read :mod:`state`; nothing here may block, so ``/healthz`` stays fast while
a dump or a base backup runs.
"""

from __future__ import annotations

import errno
import json
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry

from laterbased.core.state import State
from laterbased.errors import PortInUse
from laterbased.health import verdicts as health
from laterbased.health.metrics import build_registry, render

logger = logging.getLogger(__name__)

STATE_KEY = web.AppKey("state", State)
REGISTRY_KEY = web.AppKey("registry", CollectorRegistry)
# Seconds a connection may stay without a complete request: from the moment it opens (aiohttp
# starts this timer at connection_made, partial request lines do not reset it) and between
# keep-alive requests. Slowloris-style clients are dropped after this; tests shorten it.
IDLE_TIMEOUT = 15.0
HTTP_BACKLOG = 1024

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
# Routes contributed by other modules (status pages, API): (method, path, handler).
RouteAdder = Callable[[web.Application], None]


def json_response(body: Any, status: int = 200) -> web.Response:
    return web.Response(
        text=json.dumps(body, indent=2, default=str) + "\n",
        status=status,
        content_type="application/json",
    )


@web.middleware
async def never_500(request: web.Request, handler: Handler) -> web.StreamResponse:
    """A bug in a handler answers 503 (unavailable) with a log line, never a bare 500.

    Load balancers and Patroni-style clients treat 503 as "do not route here", which is the
    truthful answer when we cannot compute health.
    """
    try:
        return await handler(request)
    except web.HTTPException:
        raise
    except Exception:
        logger.exception("http handler failed path=%s", request.path)
        return json_response({"error": "internal error, see the daemon log"}, status=503)


@web.middleware
async def no_store(request: web.Request, handler: Handler) -> web.StreamResponse:
    response = await handler(request)
    response.headers.setdefault("Cache-Control", "no-store")
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    return response


async def healthz(request: web.Request) -> web.Response:
    state = request.app[STATE_KEY]
    checks = health.evaluate(state, time.time())
    status = 200 if health.is_healthy(checks) else 503
    return json_response(health.report(checks), status=status)


async def liveness(request: web.Request) -> web.Response:
    # Answering at all proves the event loop is alive; that is the whole check.
    state = request.app[STATE_KEY]
    return json_response({"status": "alive", "uptime_seconds": time.time() - state.started_at})


async def metrics(request: web.Request) -> web.Response:
    body = render(request.app[REGISTRY_KEY])
    response = web.Response(body=body)
    response.headers["Content-Type"] = CONTENT_TYPE_LATEST
    return response


def build_app(state: State, extra_routes: list[RouteAdder] | None = None) -> web.Application:
    # client_max_size bounds request bodies; our only POST bodies are tiny JSON.
    app = web.Application(middlewares=[never_500, no_store], client_max_size=64 * 1024)
    app[STATE_KEY] = state
    app[REGISTRY_KEY] = build_registry(state)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/liveness", liveness)
    app.router.add_get("/metrics", metrics)
    for add in extra_routes or []:
        add(app)
    return app


class HttpServer:
    """Owns the runner and site; ``start`` binds (or raises PortInUse), ``stop`` cleans up."""

    def __init__(self, app: web.Application, host: str, port: int) -> None:
        self.app = app
        self.host = host
        self.port = port
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        runner = web.AppRunner(
            self.app,
            access_log=None,
            handle_signals=False,
            # Idle keep-alive connections are closed quickly: a stuck client must not pin
            # a connection slot forever.
            keepalive_timeout=IDLE_TIMEOUT,
            shutdown_timeout=2.0,
        )
        await runner.setup()
        # A deep accept queue: a burst of connections (a scrape storm, a flood) must not make
        # the kernel drop handshakes, which costs a new /healthz client a 1 s SYN retry.
        site = web.TCPSite(
            runner, self.host, self.port, reuse_address=True, backlog=HTTP_BACKLOG
        )
        try:
            await site.start()
        except OSError as exc:
            await runner.cleanup()
            if exc.errno in (errno.EADDRINUSE, errno.EACCES, errno.EADDRNOTAVAIL):
                raise PortInUse(
                    f"cannot listen on http://{self.host}:{self.port}: {exc.strerror}; "
                    "is another laterbased running? set http.port (LATERBASED_HTTP_PORT)"
                ) from exc
            raise
        self._runner = runner
        # Port 0 (tests) → report the port the kernel chose.
        server = getattr(site, "_server", None)
        sockets = getattr(server, "sockets", None) or []
        if sockets:
            self.port = sockets[0].getsockname()[1]
        logger.info("http listening url=http://%s:%s", self.host, self.port)

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
