"""Sub-commands beyond ``run`` and ``config``: each module registers its own parser.

A command module provides ``register(subparsers, common) -> None``; its parser sets
``handler`` to a function ``(args) -> int`` (the exit code). Add new modules to
``COMMAND_MODULES``.
"""

from __future__ import annotations

COMMAND_MODULES: list[str] = [
    "demo",
    "prepare_primary",
    "check",
    "backups",
    "restore",
    "promote",
    "accept_primary",
    "pgadmin",
]
