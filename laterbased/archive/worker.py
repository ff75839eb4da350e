"""The archive worker: pg_receivewal supervised beside the scheduled base backups."""

from __future__ import annotations

import asyncio

from laterbased.archive.basebackup import run_base_backups
from laterbased.archive.receiver import WalReceiver, watch_slot
from laterbased.core.context import WorkerContext


async def run_archive(ctx: WorkerContext) -> None:
    ctx.state.archive.enabled = True
    async with asyncio.TaskGroup() as group:
        group.create_task(WalReceiver(ctx).run())
        group.create_task(run_base_backups(ctx))
        group.create_task(watch_slot(ctx))
