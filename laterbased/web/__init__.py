"""HTTP routes beyond the skeleton: Patroni-style role checks and the status page."""

from __future__ import annotations

from aiohttp import web

from laterbased.web.roles import primary_endpoint, read_only_endpoint, replica_endpoint
from laterbased.web.status import status_json_endpoint, status_page_endpoint


def add_monitoring_routes(app: web.Application) -> None:
    """Register ``/primary``, ``/replica``, ``/read-only``, ``/status``, ``/status.json``
    (GET, and HEAD through aiohttp's ``allow_head``)."""
    app.router.add_get("/primary", primary_endpoint)
    app.router.add_get("/replica", replica_endpoint)
    app.router.add_get("/read-only", read_only_endpoint)
    app.router.add_get("/status", status_page_endpoint)
    app.router.add_get("/status.json", status_json_endpoint)
