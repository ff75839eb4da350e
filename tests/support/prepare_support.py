"""``prepare-primary`` against a test server: the separate replication role it creates, the
config that names it, and the options a run is given."""

from __future__ import annotations

from pgserver import NASTY_PASSWORD, PgServer

from laterbased.config import Config, load_config
from laterbased.ops.prepare_primary.steps import SetupOptions

ROLE = "laterbase_repl"
SLOT = "laterbase_standby_slot"


def config_for(server: PgServer, user: str = ROLE, **env: str) -> Config:
    """laterbased's config for ``server`` as ``user`` (the role prepare-primary makes), with
    a password quoting and escaping must survive; ``env`` adds variables."""
    return load_config(
        None,
        {
            "PRIMARY_HOST": server.host,
            "PRIMARY_PORT": str(server.port),
            "PRIMARY_USER": user,
            "REPL_PASSWORD": NASTY_PASSWORD,
            **env,
        },
    )


def options_for(server: PgServer, **overrides: object) -> SetupOptions:
    """A run as the server's superuser that creates :data:`ROLE` as a separate role."""
    values: dict[str, object] = {
        "admin_user": server.superuser,
        "admin_password": server.superuser_password,
        "role": ROLE,
        "role_password": NASTY_PASSWORD,
        "separate_role": True,
    }
    values.update(overrides)
    return SetupOptions(**values)  # type: ignore[arg-type]
