"""What makes a cloned data directory a standby of *our* making: pure text builders.

* ``primary_conninfo`` / ``primary_slot_name`` live in ``postgresql.auto.conf`` (PG >= 12,
  with ``standby.signal``) or ``recovery.conf`` (older), so a SIGHUP reload can change them
  without a re-clone (PostgreSQL 13+ applies them on reload).
* Everything that must hold whatever the primary's own files say (port, listen address,
  socket directory, settings a macOS/Windows primary carries that do not start on Linux) is
  passed on the postgres command line, which outranks every configuration file, including
  ``ALTER SYSTEM`` settings copied from the primary.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from laterbased.pg.binaries import major_key
from laterbased.pg.conninfo import build_conninfo

AUTO_CONF = "postgresql.auto.conf"
MAIN_CONF = "postgresql.conf"
RECOVERY_CONF = "recovery.conf"
STANDBY_SIGNAL = "standby.signal"
MANAGED_MARK = "# managed by laterbased: primary connection of this standby"
RECOVERY_KEYS = ("primary_conninfo", "primary_slot_name")

_SETTING = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_.]*)\s*=?\s*(.*?)\s*$")


@dataclass(frozen=True)
class PrimaryLink:
    """How the standby reaches the primary; the password lives only in ``passfile``."""

    host: str
    port: int
    user: str
    passfile: Path
    slot_name: str
    application_name: str
    sslmode: str = "prefer"
    connect_timeout: int = 10

    def conninfo(self) -> str:
        return build_conninfo(
            host=self.host,
            port=self.port,
            user=self.user,
            passfile=str(self.passfile),
            application_name=self.application_name,
            sslmode=self.sslmode,
            connect_timeout=self.connect_timeout,
            # A dead primary behind a silent network must be noticed, not waited on.
            keepalives=1,
            keepalives_idle=30,
            keepalives_interval=10,
            keepalives_count=3,
        )


def quote_setting(value: str) -> str:
    """A postgresql.conf string literal: ``'`` doubled, ``\\`` doubled (the config file
    parser reads backslash escapes inside quotes)."""
    return "'" + value.replace("\\", "\\\\").replace("'", "''") + "'"


def unquote_setting(raw: str) -> str:
    """Value of a postgresql.conf setting as written (comments dropped, quotes undone)."""
    raw = raw.strip()
    if raw.startswith("'"):
        out: list[str] = []
        index = 1
        while index < len(raw):
            char = raw[index]
            if char == "'":
                if raw[index + 1 : index + 2] == "'":
                    out.append("'")
                    index += 2
                    continue
                break
            if char == "\\" and index + 1 < len(raw):
                out.append(raw[index + 1])
                index += 2
                continue
            out.append(char)
            index += 1
        return "".join(out)
    return raw.split("#", 1)[0].strip()


def parse_settings(text: str) -> dict[str, str]:
    """Settings of one postgresql.conf-style file (last one wins, names lower-cased).

    ``include`` directives are not followed: we only need what the primary's own two
    files say, to override what cannot work here.
    """
    settings: dict[str, str] = {}
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        match = _SETTING.match(stripped)
        if match is None:
            continue
        name = match.group(1).lower()
        if name in {"include", "include_if_exists", "include_dir"}:
            continue
        settings[name] = unquote_setting(match.group(2))
    return settings


def uses_standby_signal(major: str) -> bool:
    """PostgreSQL 12 moved recovery settings into postgresql.conf + ``standby.signal``."""
    return major_key(major) >= (12,)


def reloads_primary_conninfo(major: str) -> bool:
    """From PostgreSQL 13 a reload applies a changed primary_conninfo/primary_slot_name."""
    return major_key(major) >= (13,)


def render_auto_conf(existing: str, link: PrimaryLink) -> str:
    """``postgresql.auto.conf`` with our primary_conninfo/primary_slot_name replacing any
    earlier ones (pg_basebackup -R, or an old clone), every other line kept as it was."""
    kept = []
    for line in existing.splitlines():
        match = _SETTING.match(line.strip())
        if line.strip() == MANAGED_MARK:
            continue
        if match is not None and match.group(1).lower() in RECOVERY_KEYS:
            continue
        kept.append(line)
    while kept and not kept[-1].strip():
        kept.pop()
    block = [
        MANAGED_MARK,
        f"primary_conninfo = {quote_setting(link.conninfo())}",
        f"primary_slot_name = {quote_setting(link.slot_name)}",
    ]
    return "\n".join([*kept, *block]) + "\n"


def render_recovery_conf(link: PrimaryLink) -> str:
    """``recovery.conf`` for PostgreSQL before 12 (9.5 for older Resolve versions)."""
    return "\n".join(
        [
            MANAGED_MARK,
            "standby_mode = 'on'",
            f"primary_conninfo = {quote_setting(link.conninfo())}",
            f"primary_slot_name = {quote_setting(link.slot_name)}",
            "recovery_target_timeline = 'latest'",
        ]
    ) + "\n"


HBA_FILE = "pg_hba.conf"
LOCAL_RULE_MARK = (
    "# added by laterbased: its liveness check (pg_isready) reaches this server over its "
    "private socket\n# directory (reachable by root and the run-as user only); a password "
    "is still asked"
)
LOCAL_RULE = "local   all   all   md5"


def render_hba_with_local_rule(existing: str) -> str | None:
    """The standby's pg_hba.conf with a ``local`` rule first, or None when it needs none.

    The file comes from the primary, and a Windows primary's (Resolve's installer) has no
    ``local`` line at all, as Windows has no unix sockets: every liveness check over the
    standby's socket then left ``FATAL: no pg_hba.conf entry for host "[local]"`` in its
    log. With a password method, pg_isready sees the server answer (the password request)
    and hangs up, which PostgreSQL does not log; nobody gets in without the password, so
    the rule admits no one a ``host`` line would not. A file that has ``local`` lines of its
    own is left as it is: those are someone's choice.
    """
    for line in existing.splitlines():
        fields = line.split("#", 1)[0].split()
        if fields and fields[0] == "local":
            return None
    return f"{LOCAL_RULE_MARK}\n{LOCAL_RULE}\n\n{existing}"


def server_overrides(
    major: str,
    primary_settings: Mapping[str, str],
    *,
    data_dir: Path,
    port: int,
    listen_addresses: str,
    socket_dir: Path,
) -> dict[str, str]:
    """Settings forced on the standby's command line.

    Ours: port, listen address, socket directory, hot standby. Then whatever the primary's
    files carry that cannot work on this Linux host: Windows/macOS shared memory types,
    file locations outside the data directory, a WAL archive command of the primary's OS.
    """
    overrides: dict[str, str] = {
        "port": str(port),
        "listen_addresses": listen_addresses,
        "unix_socket_directories": str(socket_dir),
        "hot_standby": "on",
        # The primary archives its own WAL; a clone running the primary's archive_command
        # (often a Windows 'copy') after promotion would only fail and pile up WAL.
        "archive_mode": "off",
        "dynamic_shared_memory_type": "posix",
    }
    if major_key(major) >= (12,):
        overrides["shared_memory_type"] = "mmap"
    for name in ("data_directory", "hba_file", "ident_file"):
        value = primary_settings.get(name)
        default = {"data_directory": data_dir, "hba_file": data_dir / "pg_hba.conf",
                   "ident_file": data_dir / "pg_ident.conf"}[name]
        if value and Path(value) != default:
            overrides[name] = str(default)
    if primary_settings.get("external_pid_file"):
        overrides["external_pid_file"] = ""
    for name, fallback in (("log_directory", "log"), ("stats_temp_directory", "pg_stat_tmp")):
        value = primary_settings.get(name)
        if value and _foreign_absolute(value):
            overrides[name] = fallback
    if primary_settings.get("ssl", "off").lower() in {"on", "true", "yes", "1"}:
        files = [primary_settings.get(k, "") for k in ("ssl_cert_file", "ssl_key_file")]
        if any(_foreign_absolute(f) for f in files):
            overrides["ssl"] = "off"
    return overrides


def _foreign_absolute(value: str) -> bool:
    """A path of another operating system (``C:\\...``, ``/Library/...``) or one that does
    not exist here; a relative path is inside the data directory and fine."""
    if re.match(r"^[A-Za-z]:[\\/]", value) or "\\" in value:
        return True
    path = PurePosixPath(value)
    return path.is_absolute() and not Path(value).exists()


def server_argv(postgres: Path, data_dir: Path, overrides: Mapping[str, str]) -> list[str]:
    """``postgres -D <dir> -c name=value ...`` (no secrets: the password is in a passfile)."""
    argv = [str(postgres), "-D", str(data_dir)]
    for name, value in overrides.items():
        argv += ["-c", f"{name}={value}"]
    return argv


def describe_overrides(overrides: Mapping[str, str], ours: Sequence[str]) -> list[str]:
    """The overrides that are not our own fixed settings, for one log line."""
    return [f"{k}={v}" for k, v in overrides.items() if k not in ours]


def is_promoted(data_dir: Path, major: str) -> bool:
    """A cluster without its standby marker runs (or will run) as a primary."""
    if uses_standby_signal(major):
        return not (data_dir / STANDBY_SIGNAL).exists()
    return not (data_dir / RECOVERY_CONF).exists()
