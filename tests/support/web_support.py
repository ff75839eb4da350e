"""The daemon's HTTP server for a state built in the test, on a free loopback port."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from laterbased.core.state import State
from laterbased.daemon import configured_routes
from laterbased.web.server import HttpServer, build_app


@contextlib.asynccontextmanager
async def serving(state: State) -> AsyncIterator[str]:
    """Every route the daemon serves for ``state.config``, answering from ``state``: the
    base URL (``http://127.0.0.1:PORT``) while the block runs."""
    http = HttpServer(build_app(state, configured_routes(state.config)), "127.0.0.1", 0)
    await http.start()
    try:
        yield f"http://127.0.0.1:{http.port}"
    finally:
        await http.stop()
