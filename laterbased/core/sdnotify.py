"""The systemd notify protocol: one datagram per state change to ``$NOTIFY_SOCKET``."""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Mapping

logger = logging.getLogger(__name__)


class Notifier:
    """Sends READY/STOPPING/RELOADING/WATCHDOG messages when systemd asked for them.

    Without ``NOTIFY_SOCKET`` every call is a no-op, so the daemon runs the same in a
    terminal, a container or under systemd.
    """

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        self.address = env.get("NOTIFY_SOCKET") or None
        self.watchdog_interval: float | None = None
        usec = env.get("WATCHDOG_USEC")
        watchdog_pid = env.get("WATCHDOG_PID")
        if usec and usec.isdigit() and (not watchdog_pid or watchdog_pid == str(os.getpid())):
            # Ping at half the timeout, as sd_watchdog_enabled(3) recommends.
            self.watchdog_interval = int(usec) / 1_000_000 / 2

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def send(self, *lines: str) -> bool:
        if self.address is None:
            return False
        target = self.address
        if target.startswith("@"):
            target = "\0" + target[1:]  # abstract namespace socket
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.connect(target)
                sock.sendall("\n".join(lines).encode())
        except OSError as exc:
            logger.warning("systemd notify failed socket=%s error=%s", self.address, exc)
            return False
        return True

    def ready(self, status: str = "running") -> bool:
        return self.send("READY=1", f"STATUS={status}")

    def reloading(self) -> bool:
        # systemd >= 253 wants a monotonic timestamp with RELOADING=1 (Type=notify-reload).
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        return self.send("RELOADING=1", f"MONOTONIC_USEC={usec}")

    def stopping(self) -> bool:
        return self.send("STOPPING=1", "STATUS=stopping")

    def watchdog(self) -> bool:
        return self.send("WATCHDOG=1")

    def status(self, text: str) -> bool:
        return self.send(f"STATUS={text}")
