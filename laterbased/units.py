"""Human units in configuration and query strings: durations and byte sizes."""

from __future__ import annotations

import re

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|sec|m|min|h|d|w)?\s*$", re.IGNORECASE)
_DURATION_UNITS = {
    None: 1.0,
    "ms": 0.001,
    "s": 1.0,
    "sec": 1.0,
    "m": 60.0,
    "min": 60.0,
    "h": 3600.0,
    "d": 86400.0,
    "w": 604800.0,
}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgtp]?i?b?)?\s*$", re.IGNORECASE)
_SIZE_POWERS = {"": 0, "k": 1, "m": 2, "g": 3, "t": 4, "p": 5}


def parse_duration(value: object) -> float:
    """Seconds from ``30``, ``"30s"``, ``"5m"``, ``"2h"``, ``"7d"``, ``"250ms"``."""
    if isinstance(value, bool):
        raise ValueError(f"must be a duration like 30s, 5m, 2h, not {value!r}")
    if isinstance(value, int | float):
        seconds = float(value)
    else:
        match = _DURATION.match(str(value))
        if not match:
            raise ValueError(f"must be a duration like 30s, 5m, 2h, not {value!r}")
        unit = match.group(2).lower() if match.group(2) else None
        seconds = float(match.group(1)) * _DURATION_UNITS[unit]
    if seconds == float("inf"):
        raise ValueError(f"is too large: {value!r}")
    if seconds < 0:
        raise ValueError(f"must not be negative, not {value!r}")
    return seconds


def parse_size(value: object) -> int:
    """Bytes from ``1024``, ``"16MB"``, ``"16MiB"``, ``"1GB"``, ``"512kB"``.

    Like PostgreSQL's own settings, kB/MB/GB are powers of 1024; the IEC spellings
    (KiB, MiB, GiB) mean the same.
    """
    if isinstance(value, bool):
        raise ValueError(f"must be a size like 16MB or 1GB, not {value!r}")
    if isinstance(value, int):
        size = value
    elif isinstance(value, float):
        size = int(value)
    else:
        match = _SIZE.match(str(value))
        if not match:
            raise ValueError(f"must be a size like 16MB or 1GB, not {value!r}")
        suffix = (match.group(2) or "").lower().rstrip("b").rstrip("i")
        if suffix not in _SIZE_POWERS:
            raise ValueError(f"must be a size like 16MB or 1GB, not {value!r}")
        try:
            size = int(float(match.group(1)) * 1024 ** _SIZE_POWERS[suffix])
        except OverflowError:  # "9" * 400: float('inf') cannot become an int
            raise ValueError(f"is too large: {value!r}") from None
    if size < 0:
        raise ValueError(f"must not be negative, not {value!r}")
    return size


def format_size(size: float) -> str:
    """``1536`` → ``"1.5 KiB"``: for logs and the status page."""
    units = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"]
    value = float(size)
    for unit in units:
        if abs(value) < 1024 or unit == units[-1]:
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} PiB"  # pragma: no cover


def format_duration(seconds: float) -> str:
    """``3725`` → ``"1h 2m"``: for logs and the status page."""
    seconds = max(0.0, seconds)
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, _ = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    days, hours = divmod(hours, 24)
    if days:
        return f"{days}d {hours}h"
    if hours:
        return f"{hours}h {minutes}m"
    return f"{minutes}m {int(seconds) % 60}s"
