"""Which argv every child process laterbased starts in this test process really got.

Observation, not a mock: the real ``asyncio.create_subprocess_exec`` still starts the real
pg_dump / pg_restore / psql; the wrapper only writes down each argv first. A password that
reaches a child's argv is readable by every local user in /proc/<pid>/cmdline, however short
the child lives, so scanning /proc while it runs would miss a quick one: this sees them all.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest


class ChildArgvRecorder:
    def __init__(self) -> None:
        self.argvs: list[list[str]] = []

    def programs(self) -> list[str]:
        return [argv[0].rsplit("/", 1)[-1] for argv in self.argvs]

    def containing(self, text: str) -> list[list[str]]:
        return [argv for argv in self.argvs if any(text in part for part in argv)]


def record_child_argv(monkeypatch: pytest.MonkeyPatch) -> ChildArgvRecorder:
    recorder = ChildArgvRecorder()
    real = asyncio.create_subprocess_exec

    async def recording(program: Any, *args: Any, **kwargs: Any) -> Any:
        recorder.argvs.append([str(program), *(str(arg) for arg in args)])
        return await real(program, *args, **kwargs)

    monkeypatch.setattr(asyncio, "create_subprocess_exec", recording)
    return recorder
