"""pgAdmin 4 ``servers.json``: the primary and the standby in a "Laterbase" group.

The format is pgAdmin's "Import/Export Servers" file (``setup.py load-servers``, or
``PGADMIN_SERVER_JSON_FILE`` in the pgAdmin container). It never contains a password:
with a passfile, pgAdmin reads the password from that libpq passfile instead.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from laterbased.config import Config
from laterbased.pg.passfile import passfile_line

GROUP = "Laterbase"


def standby_address(config: Config) -> str:
    """Where a client on this machine reaches the standby: its first listen address,
    or localhost when it listens on every interface."""
    first = config.standby.listen_addresses.split(",")[0].strip()
    return "localhost" if first in ("", "*", "0.0.0.0", "::") else first  # noqa: S104


def servers_document(
    config: Config,
    *,
    passfile: Path | str | None = None,
    standby_host: str | None = None,
    group: str = GROUP,
) -> dict[str, Any]:
    """The servers.json document (a mapping) for pgAdmin."""
    primary = config.primary
    host = primary.host or "localhost"

    def params(sslmode: str) -> dict[str, Any]:
        values: dict[str, Any] = {
            "sslmode": sslmode,
            "connect_timeout": max(1, int(primary.connect_timeout)),
        }
        if passfile is not None:
            values["passfile"] = str(passfile)
        return values

    servers: dict[str, Any] = {
        "1": {
            "Name": f"Resolve primary ({host})",
            "Group": group,
            "Host": host,
            "Port": primary.port,
            "MaintenanceDB": primary.database,
            "Username": primary.user,
            "ConnectionParameters": params(primary.sslmode),
            "Comment": "DaVinci Resolve project library (primary); written by laterbased",
        }
    }
    if config.standby.enabled:
        servers["2"] = {
            "Name": "laterbased standby (read-only)",
            "Group": group,
            "Host": standby_host or standby_address(config),
            "Port": config.standby.port,
            "MaintenanceDB": primary.database,
            "Username": primary.user,
            # The standby is a clone: same roles and passwords. It may run without SSL.
            "ConnectionParameters": params("prefer"),
            "Comment": "hot standby kept by laterbased: read-only until promoted",
        }
    return {"Servers": servers}


def passfile_lines(config: Config, standby_host: str | None = None) -> list[str]:
    """Passfile lines for both servers (empty when no password is configured)."""
    primary = config.primary
    if not primary.password:
        return []
    password = primary.password.reveal()
    lines = [passfile_line(primary.host or "localhost", primary.port, "*", primary.user, password)]
    if config.standby.enabled:
        lines.append(
            passfile_line(
                standby_host or standby_address(config),
                config.standby.port,
                "*",
                primary.user,
                password,
            )
        )
    return lines
