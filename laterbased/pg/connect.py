"""Connecting to PostgreSQL with asyncpg, failures turned into one clear error."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import asyncpg

from laterbased.config import PrimaryConfig
from laterbased.errors import EXIT_UNAVAILABLE, LaterbasedError

logger = logging.getLogger(__name__)

# asyncpg exceptions that mean "the password or role was rejected".
_AUTH_SQLSTATES = frozenset({"28000", "28P01"})


class PgUnavailable(LaterbasedError):
    """A PostgreSQL server could not be reached or refused us. Never contains a password.

    ``reason`` is one of ``"auth"`` (credentials or pg_hba rejected), ``"timeout"``,
    ``"unreachable"`` (network / socket error), ``"ssl"`` (the sslmode cannot be met),
    ``"server"`` (other server error).
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
    sslmode: str = "prefer",
) -> Any:
    """Open an asyncpg connection (returned as ``asyncpg.Connection``).

    The password is passed as a keyword, never inside a DSN, so any character works.
    ``sslmode`` takes libpq's names (disable, allow, prefer, require, verify-ca,
    verify-full). Raises :class:`PgUnavailable` on every connection failure.
    """
    settings = {"application_name": application_name}
    if server_settings:
        settings.update(server_settings)
    where = f"host={host} port={port} user={user} database={database}"
    if sslmode != "prefer":
        where += f" sslmode={sslmode}"
    try:
        return await asyncpg.connect(
            host=host,
            port=port,
            user=user,
            password=password,
            database=database,
            timeout=timeout,
            server_settings=settings,
            ssl=sslmode,
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
    except asyncpg.ClientConfigurationError as exc:
        # verify-ca/verify-full without a root certificate, an unknown sslmode…
        raise PgUnavailable(
            f"cannot connect to PostgreSQL ({where}): {_scrub(str(exc), password)}",
            reason="ssl",
        ) from None
    except (OSError, asyncpg.InterfaceError) as exc:
        message = _scrub(str(exc), password)
        if "rejected SSL upgrade" in message:
            raise PgUnavailable(
                f"cannot connect to PostgreSQL ({where}): the server does not offer SSL, "
                f"but sslmode={sslmode} requires it; enable ssl on the server or lower "
                "primary.sslmode (prefer uses SSL when offered)",
                reason="ssl",
            ) from None
        raise PgUnavailable(
            f"cannot connect to PostgreSQL ({where}): {message}",
            reason="unreachable",
        ) from None


async def connect_primary(
    primary: PrimaryConfig,
    *,
    application_name: str,
    user: str | None = None,
    password: str | None = None,
    database: str | None = None,
) -> Any:
    """:func:`connect` to the configured primary with its address, ``sslmode`` and
    timeout; ``user``/``password`` default to ``primary.user``/``primary.password``
    (pass both to log in as someone else), ``database`` to ``primary.database``."""
    if user is None:
        user = primary.user
        password = primary.password.reveal() if primary.password else None
    return await connect(
        host=primary.host or "localhost",
        port=primary.port,
        user=user,
        password=password,
        database=database or primary.database,
        timeout=primary.connect_timeout,
        application_name=application_name,
        sslmode=primary.sslmode,
    )


def _scrub(message: str, password: str | None) -> str:
    """Defensive: no driver should echo the password, but never let one through."""
    if password:
        message = message.replace(password, "***")
    return message
