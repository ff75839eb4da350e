"""Patroni-style role endpoints for load balancers and scripts: answer 200 or 503.

``/primary`` 200 only when our own postgres is a primary (after a promotion);
``/replica`` 200 when it is a standby in recovery and streaming, and with ``?lag=16MB``
(bytes or a size with a unit) only within that replay lag; ``/read-only`` 200 when it
answers queries at all. A malformed ``lag`` is the client's mistake: 400.
"""

from __future__ import annotations

from typing import Any, Literal

from aiohttp import web

from laterbased.core.state import State
from laterbased.health.verdicts import is_streaming
from laterbased.units import parse_size
from laterbased.web.server import STATE_KEY, json_response

LocalRole = Literal["primary", "replica", "down"]


def local_role(state: State) -> LocalRole:
    """What our own postgres is right now, from the monitor's last poll."""
    local = state.local
    if not (state.standby.running and local.reachable):
        return "down"
    return "replica" if local.in_recovery else "primary"


def _body(state: State) -> dict[str, Any]:
    local = state.local
    return {
        "role": local_role(state),
        "standby_phase": state.standby.phase,
        "streaming": is_streaming(state),
        "receiver_status": local.receiver_status,
        "lag_bytes": local.lag_bytes,
        "lag_seconds": local.lag_seconds,
        "replay_lsn": local.replay_lsn,
    }


async def primary_endpoint(request: web.Request) -> web.Response:
    state = request.app[STATE_KEY]
    body = _body(state)
    return json_response(body, status=200 if body["role"] == "primary" else 503)


async def read_only_endpoint(request: web.Request) -> web.Response:
    state = request.app[STATE_KEY]
    body = _body(state)
    return json_response(body, status=200 if body["role"] != "down" else 503)


async def replica_endpoint(request: web.Request) -> web.Response:
    state = request.app[STATE_KEY]
    max_lag: int | None = None
    if "lag" in request.query:
        raw = request.query["lag"]
        try:
            # units.parse_size overflows on absurdly long numbers: bound the input first.
            if len(raw) > 32:
                raise ValueError(raw)
            max_lag = parse_size(raw)
        except (ValueError, OverflowError):
            return json_response(
                {"error": f"lag must be bytes or a size like 16MB or 1kB, not {raw[:100]!r}"},
                status=400,
            )
    body = _body(state)
    body["max_lag_bytes"] = max_lag
    ok = body["role"] == "replica" and body["streaming"]
    if ok and max_lag is not None:
        lag = state.local.lag_bytes
        ok = lag is not None and lag <= max_lag
    return json_response(body, status=200 if ok else 503)
