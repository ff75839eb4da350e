"""Operator actions a running worker offers (promote the standby, back up now).

A worker registers its actions in :attr:`laterbased.core.state.State.actions` when it starts;
the web part answers ``POST /api/<name>`` by calling the action registered under that name.
So no worker imports the web part and the web part imports no worker: they meet in state.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class ActionOutcome:
    """What an action answers: an HTTP-style status (200 done, 409 refused, 503 failed) and
    a JSON object that says what happened."""

    status: int
    body: dict[str, Any]


class ActionInvalid(ValueError):
    """The parameters of an action are wrong (answered 400 with the message)."""


# Called with the JSON object of the request body ({} when there is none).
Action = Callable[[dict[str, Any]], Awaitable[ActionOutcome]]
