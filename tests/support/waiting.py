"""Waiting in tests: poll a condition until it holds, with a deadline and a message that
says what never happened (no bare sleeps)."""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import Any

DEFAULT_TIMEOUT = 60.0


async def wait_for(
    condition: Callable[[], Awaitable[Any] | Any],
    what: str,
    timeout: float = DEFAULT_TIMEOUT,  # noqa: ASYNC109 - the deadline is the point
    *,
    interval: float = 0.1,
    log: Callable[[], str] | None = None,
) -> Any:
    """Poll ``condition`` (sync or async) every ``interval`` seconds until it returns
    something truthy, and return that; fail naming ``what`` (and ``log()``) after
    ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return result
        if time.monotonic() > deadline:
            detail = f"\n{log()}" if log is not None else ""
            raise AssertionError(f"timed out after {timeout}s waiting for: {what}{detail}")
        await asyncio.sleep(interval)
