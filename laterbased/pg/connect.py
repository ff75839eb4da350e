"""Connecting to PostgreSQL with asyncpg, failures turned into one clear error."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import asyncpg

from laterbased.errors import EXIT_UNAVAILABLE, LaterbasedError

logger = logging.getLogger(__name__)

# asyncpg exceptions that mean "the password or role was rejected".
_AUTH_SQLSTATES = frozenset({"28000", "28P01"})


class PgUnavailable(LaterbasedError):
    """A PostgreSQL server could not be reached or refused us. Never contains a password.

    ``reason`` is one of ``"auth"`` (credentials or pg_hba rejected), ``"timeout"``,
    ``"unreachable"`` (network / socket error), ``"server"`` (other server error).
    """

    exit_code = EXIT_UNAVAILABLE

    def __init__(self, message: str, *, reason: str, sqlstate: str | None = None) -> None:
        super().__init__(message)
        self.reason = reason
        self.sqlstate = sqlstate


async def connect(
    *,
    host: str,
    port: int,
    user: str,
    password: str | None,
    database: str,
    timeout: float,  # noqa: ASYNC109 - asyncpg's own connect timeout
    application_name: str = "laterbased",
    server_settings: Mapping[str, str] | None = None,
) -> Any:
    """Open an asyncpg connection (returned as ``asyncpg.Connection``).

    The password is passed as a keyword, never inside a DSN, so any character works.
    Raises :class:`PgUnavailable` on every connection failure.
    """
    settings = {"application_name": application_name}
    if server_settings:
        settings.update(server_settings)
    where = f"host={host} port={port} user={user} database={database}"
    try:
        return await asyncpg.connect(
            host=host,
            port=port,
            user=user,
            password=password,
            database=database,
            timeout=timeout,
            server_settings=settings,
        )
    except TimeoutError:
        raise PgUnavailable(
            f"cannot connect to PostgreSQL ({where}): no answer within {timeout}s",
            reason="timeout",
        ) from None
    except asyncpg.PostgresError as exc:
        sqlstate = getattr(exc, "sqlstate", None)
        reason = "auth" if sqlstate in _AUTH_SQLSTATES else "server"
        raise PgUnavailable(
            f"cannot connect to PostgreSQL ({where}): {_scrub(str(exc), password)}",
            reason=reason,
            sqlstate=sqlstate,
        ) from None
    except (OSError, asyncpg.InterfaceError) as exc:
        raise PgUnavailable(
            f"cannot connect to PostgreSQL ({where}): {_scrub(str(exc), password)}",
            reason="unreachable",
        ) from None


def _scrub(message: str, password: str | None) -> str:
    """Defensive: no driver should echo the password, but never let one through."""
    if password:
        message = message.replace(password, "***")
    return message
