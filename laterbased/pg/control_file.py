"""What a data directory's ``global/pg_control`` says without a server running.

Blocking file I/O: call it through ``asyncio.to_thread`` from the event loop.
"""

from __future__ import annotations

import struct
from pathlib import Path

CONTROL_FILE = Path("global") / "pg_control"


def system_identifier(data_dir: Path) -> str | None:
    """The cluster's system identifier, as ``pg_control_system()`` shows it (a decimal
    string): the first field of ``global/pg_control``, a uint64 in the machine's byte order
    (every major since 9.x keeps it first). None when there is no readable control file or
    it is shorter than that field (a damaged data directory)."""
    try:
        with open(data_dir / CONTROL_FILE, "rb") as handle:
            head = handle.read(8)
    except OSError:
        return None
    if len(head) != 8:
        return None
    (value,) = struct.unpack("=Q", head)
    return str(value)
