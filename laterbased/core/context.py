"""What every worker is given: the shared state and the daemon's stop and reload signals.

Workers (standby, monitor, backups, notify) import this, never the daemon: the daemon starts
them, they meet only in :mod:`laterbased.core.state`.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

from laterbased.config import Config
from laterbased.core.state import State


@dataclass
class WorkerContext:
    """What a worker gets: the shared state, and the daemon's stop/reload signals."""

    state: State
    stopping: asyncio.Event
    _reloaded: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def config(self) -> Config:
        return self.state.config

    def wait_reload(self) -> Coroutine[Any, Any, Config]:
        """Wait for the next successful SIGHUP reload after this call and return the new
        config. The reload to wait for is fixed when called, not when first awaited: a
        task made of it may first run after a reload came, which must still wake it."""
        reloaded = self._reloaded

        async def wait() -> Config:
            await reloaded.wait()
            return self.state.config

        return wait()

    def _announce_reload(self) -> None:
        event, self._reloaded = self._reloaded, asyncio.Event()
        event.set()

    async def sleep(self, seconds: float) -> bool:
        """Sleep unless the daemon is stopping; True when woken by the stop."""
        # Not asyncio.wait_for: on Python 3.11 it swallows a cancellation that lands just as
        # the stop event is set (which is exactly how the daemon stops its workers).
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await self.stopping.wait()
        return self.stopping.is_set()


WorkerFunction = Callable[[WorkerContext], Awaitable[None]]
