"""Someone else's files and processes beside laterbased's: what its clean-ups must never
touch, and the proof that they did not."""

from __future__ import annotations

import contextlib
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def victim_with_an_open_file() -> Iterator[tuple[Path, subprocess.Popen[bytes]]]:
    """Someone else's directory (mode 0755) with a file a running ``sleep`` holds open."""
    victim = Path(tempfile.mkdtemp(prefix="laterbased-victim-"))
    victim.chmod(0o755)
    with open(victim / "precious.log", "wb") as out:
        sleeper = subprocess.Popen(["sleep", "300"], stdout=out)
    try:
        yield victim, sleeper
    finally:
        sleeper.kill()
        sleeper.wait()
        shutil.rmtree(victim, ignore_errors=True)


def survived(process: subprocess.Popen[bytes]) -> bool:
    """True when ``process`` was still alive: our SIGTERM, not an earlier SIGKILL, ends it
    (a pending SIGKILL wins, so this does not depend on timing)."""
    process.terminate()
    return process.wait(10) == -signal.SIGTERM
