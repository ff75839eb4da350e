"""``POST /api/<action>``: the operator actions the running workers registered in state.

One place for what every write request needs: the bearer token (constant-time; the
configured ``http.token`` or the daemon's local token, core/local_token.py), a JSON object
body (a deeply nested one is a 400, not a crash), and the action's answer as JSON. An action no
running worker offers is a 409 saying so.
"""

from __future__ import annotations

import hmac
import logging
from typing import Any

from aiohttp import web

from laterbased.core.actions import ActionInvalid
from laterbased.web.server import STATE_KEY, json_response

logger = logging.getLogger(__name__)

# name -> (what it does, the command that does it on this host without a token)
ACTIONS = {
    "backup": ("backups on demand", "laterbased backup-now"),
    "promote": ("promotion", "laterbased promote"),
}


def authorized(request: web.Request, *tokens: str | None) -> bool:
    """Whether the request carries ``Authorization: Bearer <token>`` for one of ``tokens``."""
    scheme, _, presented = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer":
        return False
    # aiohttp decodes header bytes that are not UTF-8 as surrogates: encode them back the
    # same way, or such a header would crash the comparison instead of being refused.
    given = presented.strip().encode("utf-8", "surrogateescape")
    # Every token is compared (no early exit), so the time taken tells nothing either.
    matches = [hmac.compare_digest(given, token.encode("utf-8")) for token in tokens if token]
    return any(matches)


async def _json_object(request: web.Request) -> dict[str, Any]:
    if not request.can_read_body:
        return {}
    try:
        body = await request.json()
    except (ValueError, RecursionError):
        # RecursionError: a deeply nested body (30 000 ``[``) is refused, not a 503.
        raise ActionInvalid("body must be JSON") from None
    if body is None:
        return {}
    if not isinstance(body, dict):
        raise ActionInvalid("body must be a JSON object")
    return body


async def post_action(request: web.Request) -> web.Response:
    name = request.match_info["action"]
    if name not in ACTIONS:
        raise web.HTTPNotFound()
    what, command = ACTIONS[name]
    state = request.app[STATE_KEY]
    token = state.config.http.token
    if not token and not state.local_token:
        return json_response(
            {
                "error": f"{what} over HTTP is disabled: set http.token (or "
                f"LATERBASED_HTTP_TOKEN_FILE) and reload laterbased, or run '{command}' "
                "on this host"
            },
            status=403,
        )
    # The configured token (for other hosts), or the local one the daemon wrote into its
    # state directory (for the commands on this host: core/local_token.py).
    if not authorized(request, token.reveal() if token else None, state.local_token):
        response = json_response({"error": "missing or wrong bearer token"}, status=401)
        response.headers["WWW-Authenticate"] = 'Bearer realm="laterbased"'
        return response
    # A malformed request is a 400 whatever the daemon's state: parse before anything else.
    try:
        params = await _json_object(request)
    except ActionInvalid as exc:
        return json_response({"error": str(exc)}, status=400)
    action = state.actions.get(name)
    if action is None:
        return json_response(
            {
                "error": f"{what} is not available here: the part of laterbased that offers "
                "it is not running (disabled in the configuration, or still starting)"
            },
            status=409,
        )
    try:
        outcome = await action(params)
    except ActionInvalid as exc:
        return json_response({"error": str(exc)}, status=400)
    return json_response(outcome.body, status=outcome.status)


def add_action_routes(app: web.Application) -> None:
    app.router.add_post("/api/{action}", post_action)
