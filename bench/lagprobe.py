"""Run the real ``laterbased`` CLI with an event-loop lag probe inside its loop.

    python bench/lagprobe.py LAG_FILE run --config laterbased.yaml
    python bench/lagprobe.py LAG_FILE --idle     # control: an empty loop, same probe

Nothing in the daemon changes: an event-loop policy adds one timer to the loop that
``asyncio.run`` creates. Every INTERVAL seconds the timer notes how late it woke up (the time
any callback had to wait for the loop: the event-loop lag) and appends
``<unix time> <lag ms>`` to LAG_FILE, flushed about once a second. The benchmark reads the
lines that fall inside the window it measures. ``--idle`` runs the probe in an otherwise
empty loop until killed: the lag this machine's scheduler alone causes (other processes on
the 2 shared cores), to tell apart from lag the daemon causes.

With ``BENCH_STALL_TRACE_MS=<ms>`` in the environment, a watchdog thread also writes the
loop thread's stack to ``LAG_FILE.stalls`` whenever the loop has not ticked for that long:
what the daemon was doing while it blocked its loop, and every garbage collection that took
longer than that (the collector stops the loop too, wherever it strikes).

``BENCH_GC_FREEZE_AFTER=<seconds>`` calls ``gc.freeze()`` that long after the loop starts (an
experiment: startup objects leave the collector's view, so full collections get short).
"""

from __future__ import annotations

import asyncio
import gc
import os
import sys
import threading
import time
import traceback
from typing import IO

INTERVAL = 0.01
FLUSH_EVERY = 100


_last_tick = time.monotonic()


def _watch_stalls(path: str, threshold: float, loop_thread: int) -> None:
    """Dump the loop thread's stack once per stall longer than ``threshold`` seconds."""
    reported = 0.0
    with open(path, "a", encoding="utf-8") as out:
        while True:
            time.sleep(threshold / 4)
            last = _last_tick
            # The next tick is due INTERVAL after the last one: late beyond that is a stall.
            if time.monotonic() - last > INTERVAL + threshold and last != reported:
                frame = sys._current_frames().get(loop_thread)
                stack = traceback.format_stack(frame) if frame else ["(no frame)\n"]
                if "in select" in stack[-1]:
                    continue  # waiting in the selector: starved of CPU, not blocked by code
                reported = last
                out.write(f"--- stall at {time.time():.4f} ---\n{''.join(stack)}")
                out.flush()


def _watch_collections(path: str, threshold: float) -> None:
    started: dict[int, float] = {}

    def callback(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            started[info["generation"]] = time.perf_counter()
            return
        seconds = time.perf_counter() - started.pop(info["generation"], time.perf_counter())
        if seconds > threshold:
            with open(path, "a", encoding="utf-8") as out:
                out.write(f"--- gc at {time.time():.4f} ---\ngeneration {info['generation']} "
                          f"took {seconds * 1000:.1f} ms, collected {info['collected']}, "
                          f"objects tracked {len(gc.get_objects())}\n")

    gc.callbacks.append(callback)


def _start_probe(loop: asyncio.AbstractEventLoop, out: IO[str]) -> None:
    due = loop.time() + INTERVAL
    count = 0
    trace_ms = os.environ.get("BENCH_STALL_TRACE_MS")
    if trace_ms:
        threading.Thread(
            target=_watch_stalls,
            args=(out.name + ".stalls", float(trace_ms) / 1000, threading.get_ident()),
            daemon=True,
        ).start()

        _watch_collections(out.name + ".stalls", float(trace_ms) / 1000)

    freeze_after = os.environ.get("BENCH_GC_FREEZE_AFTER")
    if freeze_after:
        loop.call_later(float(freeze_after), gc.freeze)

    def tick() -> None:
        nonlocal due, count
        global _last_tick
        _last_tick = time.monotonic()
        now = loop.time()
        out.write(f"{time.time():.4f} {(now - due) * 1000:.3f}\n")
        count += 1
        if count % FLUSH_EVERY == 0:
            out.flush()
        due = now + INTERVAL
        loop.call_at(due, tick)

    loop.call_at(due, tick)


class _ProbedPolicy(asyncio.DefaultEventLoopPolicy):
    def __init__(self, out: IO[str]) -> None:
        super().__init__()
        self._out = out

    def new_event_loop(self) -> asyncio.AbstractEventLoop:
        loop = super().new_event_loop()
        _start_probe(loop, self._out)
        return loop


async def _forever() -> None:
    await asyncio.Event().wait()


def main() -> int:
    if len(sys.argv) < 3:
        print(__doc__, file=sys.stderr)
        return 2
    from laterbased.cli import main as laterbased_main

    with open(sys.argv[1], "a", encoding="ascii") as out:
        asyncio.set_event_loop_policy(_ProbedPolicy(out))
        if sys.argv[2] == "--idle":
            asyncio.run(_forever())
            return 0
        return laterbased_main(sys.argv[2:])


if __name__ == "__main__":
    sys.exit(main())
