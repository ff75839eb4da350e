"""Exception tree and the process exit codes that go with it.

Library code raises these; only ``cli.py`` turns them into ``sys.exit``.
"""

from __future__ import annotations

from collections.abc import Iterable

# Exit codes follow sysexits(3) where one fits, so systemd's RestartPreventExitStatus=78
# stops a restart loop on a configuration mistake.
EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 64
EXIT_UNAVAILABLE = 69
EXIT_SOFTWARE = 70
EXIT_CONFIG = 78
# "Refuse to run" is distinct from a config error: the config parsed, but starting would
# be unsafe (foreign data directory, missing binaries, running as root without a run-as user).
EXIT_REFUSE = 3


class LaterbasedError(Exception):
    """Base of every error laterbased raises on purpose."""

    exit_code = EXIT_FAILURE


class ConfigError(LaterbasedError):
    """The configuration is invalid. Carries every problem found, one per line."""

    exit_code = EXIT_CONFIG

    def __init__(self, problems: Iterable[str]) -> None:
        self.problems = list(problems)
        super().__init__("\n".join(self.problems))


class RefuseToRun(LaterbasedError):
    """Starting (or continuing) would be unsafe; the message says why and what to do."""

    exit_code = EXIT_REFUSE


class UnsafePath(RefuseToRun):
    """A path laterbased would write into, delete in or chmod (``<backup_dir>/.partial``,
    a database's backup directory, ``<state_dir>/standby-run``) is a symbolic link or not a
    directory: following it would act on someone else's files. Never followed."""


class ToolMissing(RefuseToRun):
    """A required external program (pg_basebackup, pg_dump, rclone…) was not found."""


class JobFailed(LaterbasedError):
    """A scheduled or manual job did not succeed."""


class PortInUse(LaterbasedError):
    """The HTTP listen address is already taken."""

    exit_code = EXIT_UNAVAILABLE
