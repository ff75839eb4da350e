"""What a person does after a failover: pure text from the configuration and a few facts.

``laterbased promote`` prints it and the status page shows it, from the same function, so
the two never disagree about the address a workstation enters in Resolve.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from laterbased.config import Config

# Resolve's "Add Project Library" dialog takes an address but no port: it connects on 5432.
RESOLVE_PORT = 5432


def workstation_address(config: Config) -> str | None:
    """The address workstations enter: the first planned failover address, else a
    ``standby.listen_addresses`` entry that is not loopback, else None (nobody reaches it)."""
    if config.standby.failover_address:
        return config.standby.failover_address[0]
    for address in config.standby.listen_addresses.split(","):
        address = address.strip()
        if address and not address.startswith("127.") and address not in {"localhost", "::1"}:
            return address
    return None


def workstation_user(config: Config, owners: Mapping[str, str] | None) -> str:
    """The login the workstations enter: the libraries' owners where known (Resolve made
    each library with the workstations' login), else laterbased's own login, said as such
    when it is not Resolve's default."""
    users = sorted(set((owners or {}).values()))
    if len(users) == 1:
        return users[0]
    if users:
        pairs = ", ".join(f"{owner} for {name}" for name, owner in sorted((owners or {}).items()))
        return f"the login owning each library ({pairs})"
    if config.primary.user == "postgres":
        return "postgres"
    return (
        "the login the workstations used on the old server (Resolve's default: postgres; "
        f"{config.primary.user} is laterbased's own)"
    )


def workstation_steps(
    config: Config,
    libraries: Sequence[str],
    port: int,
    owners: Mapping[str, str] | None = None,
) -> list[str]:
    """What each Resolve workstation enters, one line each, for the promoted server
    listening on ``port``; ``owners``: library -> the login owning it there."""
    address = workstation_address(config)
    names = ", ".join(libraries) if libraries else "the same library names as before"
    steps = [
        "On every Resolve workstation: Project Manager > Project Libraries > Add > Connect "
        "(Network):",
        f"  Location (IP address): {address or 'this host LAN address (see below)'}",
        f"  Database name: {names}",
        f"  User: {workstation_user(config, owners)}, with the same password as on the old "
        "server",
    ]
    if address is None:
        steps.append(
            "  No failover address is planned: the server listens only on "
            f"{config.standby.listen_addresses}, which no workstation reaches. Set "
            "standby.failover_address to this host's LAN address and restart laterbased"
        )
    if port != RESOLVE_PORT:
        steps.append(
            f"  Port: {port}. Resolve's dialog has no port field and connects on "
            f"{RESOLVE_PORT}: set standby.failover_port: {RESOLVE_PORT} (and free that port)"
        )
    return steps


def old_primary_advice(config: Config) -> str:
    """What to do with the old primary when it comes back."""
    where = f"{config.primary.host}:{config.primary.port}"
    return (
        f"When the old primary ({where}) comes back, keep its PostgreSQL stopped and Resolve "
        "away from it: it holds the library as it was at the failure and would accept writes "
        "this server never sees. To make it a standby of this server, move its data "
        "directory aside and clone it from here; drop the slot "
        f"{config.standby.slot_name!r} on it if it ever runs again"
    )
