"""libpq connection strings (``key=value`` conninfo), quoted so any value is safe."""

from __future__ import annotations

import re

_KEY = re.compile(r"^[a-z_]+$")
_PLAIN_VALUE = re.compile(r"^[A-Za-z0-9_./@+,-]+$")


def quote_conninfo_value(value: str) -> str:
    """Quote a conninfo value per libpq: single quotes, with ``\\`` and ``'`` escaped.

    Values made only of harmless characters are returned as they are, for readability.
    """
    if _PLAIN_VALUE.match(value):
        return value
    escaped = value.replace("\\", "\\\\").replace("'", "\\'")
    return f"'{escaped}'"


def build_conninfo(**params: str | int | None) -> str:
    """Build a conninfo string from keyword arguments, skipping those that are None.

    ``build_conninfo(host="db", port=5432, passfile="/x y")`` →
    ``"host=db port=5432 passfile='/x y'"``. Never put a password here: use a passfile.
    """
    parts: list[str] = []
    for key, value in params.items():
        if value is None:
            continue
        if not _KEY.match(key):
            raise ValueError(f"invalid conninfo keyword: {key!r}")
        parts.append(f"{key}={quote_conninfo_value(str(value))}")
    return " ".join(parts)
