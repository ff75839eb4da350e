"""Configuration: frozen dataclasses built once from defaults, YAML and the environment.

Precedence (lowest first): defaults < YAML file < legacy ``.env`` names (the old Laterbase
setup) < ``LATERBASED_<SECTION>_<KEY>`` variables. A value ``X`` may also come from a file
named by ``X_FILE`` (``REPL_PASSWORD_FILE``, ``LATERBASED_PRIMARY_PASSWORD_FILE``, or
``password_file:`` in YAML), the Docker-secrets convention.

Validation never stops at the first problem: every error found is collected with the key
path it belongs to, and raised together as one :class:`ConfigError`.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import logging
import os
import re
import stat
import types
import typing
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args, get_origin
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml

from laterbased.config.rclone_names import is_secret_option, upload_config_problems
from laterbased.errors import ConfigError
from laterbased.schedule.cron import validate_expression
from laterbased.units import parse_duration, parse_size

logger = logging.getLogger(__name__)

class Secret:
    """A string that does not show itself in ``repr``, logs or ``config show``."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('********')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)

    def __bool__(self) -> bool:
        return bool(self._value)


# Field kinds that plain Python types cannot express are declared in field metadata.
DURATION = {"kind": "duration"}  # "10s", "5m", "2h", "7d" or a number of seconds
SIZE = {"kind": "size"}  # "16MB", "1GiB", "512kB" or a number of bytes
CRON = {"kind": "cron"}
INTERNAL = {"internal": True}  # filled by load_config, not settable from YAML or environment


def _secret_field(*, strip: bool = False) -> Any:
    """A secret; with ``strip`` its outer white space is not part of it (a bearer token:
    clients send it without, and HTTP drops it around a header value), and a value of
    white space only is an error rather than a token nobody can send."""
    return field(default=None, metadata={"secret": True, "strip": strip})


@dataclass(frozen=True)
class PrimaryConfig:
    """The Resolve PostgreSQL server we protect."""

    host: str | None = None
    port: int = 5432
    user: str = "postgres"
    password: Secret | None = _secret_field()
    database: str = "postgres"
    sslmode: Literal["disable", "allow", "prefer", "require", "verify-ca", "verify-full"] = "prefer"
    connect_timeout: float = field(default=10.0, metadata=DURATION)


@dataclass(frozen=True)
class StandbyConfig:
    """The local hot standby that laterbased supervises."""

    enabled: bool = True
    data_dir: Path | None = None
    port: int = 5433
    listen_addresses: str = "127.0.0.1"
    # The failover plan: where the server listens once promoted. Addresses of this host
    # that the Resolve workstations reach (its LAN address), and the port they connect to:
    # Resolve's "Add Project Library" dialog takes no port, it always uses 5432. Empty: a
    # promoted server keeps listen_addresses and port (no workstation reaches it).
    failover_address: tuple[str, ...] = ()
    failover_port: int = 5432
    slot_name: str = "laterbase_standby_slot"
    application_name: str = "laterbased"
    run_as: str | None = None
    bin_dir: Path | None = None
    checkpoint: Literal["fast", "spread"] = "fast"
    reclone_on_mismatch: bool = False
    restart_backoff_max: float = field(default=60.0, metadata=DURATION)
    stop_timeout: float = field(default=60.0, metadata=DURATION)
    bootstrap_retry_max: float = field(default=300.0, metadata=DURATION)

    @property
    def connect_host(self) -> str:
        """Where laterbased reaches its own standby: its first listen address (loopback when
        it listens on every address)."""
        first = self.listen_addresses.split(",")[0].strip()
        return "127.0.0.1" if first in {"", "*", "0.0.0.0", "::"} else first  # noqa: S104

    @property
    def promoted_port(self) -> int:
        """The port of the promoted server: ``failover_port`` once a failover address is
        planned, else ``port`` (nothing to move to)."""
        return self.failover_port if self.failover_address else self.port

    @property
    def promoted_listen_addresses(self) -> str:
        """``listen_addresses`` of the promoted server: the standby's own (laterbased keeps
        reaching it there) plus the failover addresses."""
        addresses = [a.strip() for a in self.listen_addresses.split(",") if a.strip()]
        if "*" in addresses:
            return "*"
        for address in self.failover_address:
            if address not in addresses:
                addresses.append(address)
        return ",".join(addresses)


@dataclass(frozen=True)
class MonitorConfig:
    """Replication polling and the thresholds that turn facts into warnings."""

    interval: float = field(default=10.0, metadata=DURATION)
    query_timeout: float = field(default=5.0, metadata=DURATION)
    max_lag_bytes: int = field(default=16 * 1024 * 1024, metadata=SIZE)
    max_lag_seconds: float = field(default=300.0, metadata=DURATION)
    slot_retained_warn_bytes: int = field(default=1024**3, metadata=SIZE)


@dataclass(frozen=True)
class BackupConfig:
    """Scheduled logical backups with pg_dump, and local retention."""

    enabled: bool = True
    directory: Path | None = None
    schedule: str = field(default="0 * * * *", metadata=CRON)
    databases: tuple[str, ...] = ()
    format: Literal["custom", "plain-gzip"] = "custom"
    # auto: the local standby while it streams within monitor.max_lag_bytes (no pg_dump on
    # the Resolve server), else the primary; each run decides and its manifest says which.
    source: Literal["auto", "primary", "standby"] = "auto"
    # With source standby: how long a run waits for the standby to accept connections (it
    # starts with the daemon, and the catch-up run fires at once) before using the primary.
    standby_wait: float = field(default=300.0, metadata=DURATION)
    bin_dir: Path | None = None
    dump_globals: bool = False
    skip_unchanged: bool = True
    catch_up: bool = True
    retention_days: int = 7
    min_keep: int = 3
    keep_hourly: int = 0
    keep_daily: int = 0
    keep_weekly: int = 0
    keep_monthly: int = 0
    max_local_bytes: int | None = field(default=None, metadata=SIZE)
    stale_after: float | None = field(default=None, metadata=DURATION)
    timeout: float = field(default=6 * 3600.0, metadata=DURATION)
    # A failed scheduled dump run is tried again after retry_delay, doubling up to
    # retry_delay_max, until one succeeds or the next scheduled run is due.
    retry_delay: float = field(default=60.0, metadata=DURATION)
    retry_delay_max: float = field(default=1800.0, metadata=DURATION)
    # A discovered database gone from the primary leaves health this long after its last
    # good backup (a warning until then); its backups stay, listed as "database gone".
    gone_grace: float = field(default=86400.0, metadata=DURATION)
    verify_schedule: str = field(default="30 4 * * *", metadata=CRON)
    restore_drill: bool = False
    optimize_schedule: str | None = field(default=None, metadata=CRON)


@dataclass(frozen=True)
class PitrConfig:
    """Point-in-time restore: a continuous WAL archive plus scheduled base backups."""

    enabled: bool = False
    base_backup_schedule: str = field(default="0 2 * * *", metadata=CRON)
    # How far back a restore to a moment can reach; default backup.retention_days days.
    window: float | None = field(default=None, metadata=DURATION)
    slot_name: str = "laterbase_wal_slot"
    # gzip level 1-9 of the archived WAL segments, or "none".
    compression: str = "5"

    @property
    def compression_level(self) -> int:
        """The gzip level for pg_receivewal --compress; 0 means segments stay plain."""
        text = self.compression.strip().lower()
        return 0 if text in ("none", "0") else int(text)


@dataclass(frozen=True)
class RcloneRemote:
    """A remote defined in our configuration (the legacy ``RCLONE_REMOTE_<N>_*``)."""

    name: str
    type: str
    params: Mapping[str, str | Secret] = field(default_factory=dict)


@dataclass(frozen=True)
class UploadConfig:
    """Off-site copies with rclone; a blank remote disables uploads."""

    remote: str = ""
    path: str = ""
    remotes: tuple[RcloneRemote, ...] = ()
    rclone_binary: str | None = None
    rclone_config: Path | None = None
    retries: int = 3
    retry_backoff: float = field(default=10.0, metadata=DURATION)
    retry_backoff_max: float = field(default=300.0, metadata=DURATION)
    timeout: float = field(default=3600.0, metadata=DURATION)
    retention_days: int | None = None
    pending_max_age: float = field(default=3 * 3600.0, metadata=DURATION)
    # The operator's own rclone variables (RCLONE_CONFIG_<NAME>_*, RCLONE_CONFIG, flags like
    # RCLONE_BWLIMIT) as the configuration saw them, --env-file included, for rclone's
    # children. Not a setting: filled by load_config; remote options are secrets.
    environment: Mapping[str, str | Secret] = field(default_factory=dict, metadata=INTERNAL)

    @property
    def enabled(self) -> bool:
        return bool(self.remote)


@dataclass(frozen=True)
class HttpConfig:
    """The status/health/metrics HTTP server."""

    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = 8434
    token: Secret | None = _secret_field(strip=True)


@dataclass(frozen=True)
class NotifyConfig:
    """Where to tell a human about trouble when nobody runs Prometheus."""

    # A secret: Slack/Discord webhook URLs carry their credential in the path.
    webhook_url: Secret | None = _secret_field()
    command: tuple[str, ...] = ()
    min_interval: float = field(default=900.0, metadata=DURATION)
    timeout: float = field(default=10.0, metadata=DURATION)
    confirm_after: float = field(default=60.0, metadata=DURATION)


@dataclass(frozen=True)
class PgAdminConfig:
    """pgAdmin 4 login, used by the compose deployment (legacy PGADMIN_* names)."""

    email: str | None = None
    password: Secret | None = _secret_field()


@dataclass(frozen=True)
class Config:
    """The whole, validated configuration."""

    primary: PrimaryConfig = field(default_factory=PrimaryConfig)
    standby: StandbyConfig = field(default_factory=StandbyConfig)
    monitor: MonitorConfig = field(default_factory=MonitorConfig)
    backup: BackupConfig = field(default_factory=BackupConfig)
    pitr: PitrConfig = field(default_factory=PitrConfig)
    upload: UploadConfig = field(default_factory=UploadConfig)
    http: HttpConfig = field(default_factory=HttpConfig)
    notify: NotifyConfig = field(default_factory=NotifyConfig)
    pgadmin: PgAdminConfig = field(default_factory=PgAdminConfig)
    state_dir: Path = Path("/var/lib/laterbased")
    timezone: str | None = None
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_format: Literal["text", "json"] = "text"

    @property
    def zone(self) -> ZoneInfo:
        """The schedule's time zone: ``timezone`` (legacy ``TZ``) or the machine's own."""
        if self.timezone:
            return ZoneInfo(self.timezone)
        return _local_zone()

    @property
    def backup_directory(self) -> Path:
        return self.backup.directory or self.state_dir / "backups"

    @property
    def pitr_window(self) -> float:
        """Seconds a restore to a moment reaches back: pitr.window or the dumps' retention."""
        if self.pitr.window is not None:
            return self.pitr.window
        return self.backup.retention_days * 86400.0

    @property
    def standby_data_dir(self) -> Path:
        return self.standby.data_dir or self.state_dir / "standby"


def _local_zone() -> ZoneInfo:
    try:
        link = os.readlink("/etc/localtime")
        return ZoneInfo(link.split("zoneinfo/", 1)[1])
    except (OSError, IndexError, ZoneInfoNotFoundError, ValueError):
        return ZoneInfo("UTC")


_CONFIG_HINTS = typing.get_type_hints(Config)
# Top-level keys that are sections (nested mappings), by name.
SECTIONS: dict[str, type[Any]] = {
    name: hint
    for name, hint in _CONFIG_HINTS.items()
    if isinstance(hint, type) and dataclasses.is_dataclass(hint)
}

# Legacy Laterbase .env names → key paths. PRIMARY_DB(S) and RCLONE_REMOTE_<N>_* need
# special handling and are not listed here.
LEGACY_ENV: dict[str, tuple[str, ...]] = {
    "PRIMARY_HOST": ("primary", "host"),
    "PRIMARY_PORT": ("primary", "port"),
    "PRIMARY_USER": ("primary", "user"),
    "REPL_PASSWORD": ("primary", "password"),
    "PGDATA": ("standby", "data_dir"),
    "LOCAL_BACKUP_PATH": ("backup", "directory"),
    "BACKUP_RETENTION_DAYS": ("backup", "retention_days"),
    "RCLONE_REMOTE_NAME": ("upload", "remote"),
    "RCLONE_REMOTE_PATH": ("upload", "path"),
    "PGADMIN_EMAIL": ("pgadmin", "email"),
    "PGADMIN_PASSWORD": ("pgadmin", "password"),
    "TZ": ("timezone",),
}

# Environment names that start with LATERBASED_ but are not configuration keys.
NON_CONFIG_ENV = {"LATERBASED_CONFIG", "LATERBASED_ENV_FILE"}
NON_CONFIG_ENV_PREFIXES = ("LATERBASED_TEST_", "LATERBASED_BENCH_")

# The old .env.example shipped values like YOUR_PGADMIN_EMAIL_HERE; a user who forgot to
# replace one deserves to hear so by name rather than a confusing connection failure.
_PLACEHOLDER = re.compile(r"^YOUR_[A-Z0-9_]+_HERE$")
_REMOTE_VAR = re.compile(r"^RCLONE_REMOTE_(\d+)_(NAME|TYPE|PARAM_(.+))$")
_SLOT_NAME = re.compile(r"^[a-z0-9_]{1,63}$")


@dataclass
class _Raw:
    """Merged raw values plus where each came from (for messages) and early errors."""

    values: dict[str, Any] = field(default_factory=dict)
    origin: dict[tuple[str, ...], str] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)

    def set(self, path: tuple[str, ...], value: Any, origin: str) -> None:
        node = self.values
        for part in path[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                child = {}
                node[part] = child
            node = child
        node[path[-1]] = value
        self.origin[path] = origin


def parse_env_file(text: str) -> dict[str, str]:
    """Parse a ``.env`` file the way docker compose does (KEY=VALUE, quotes, comments)."""
    result: dict[str, str] = {}
    for raw_line in text.splitlines():
        line = raw_line.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("export "):
            line = line[len("export ") :].lstrip()
        key, sep, value = line.partition("=")
        key = key.strip()
        if not sep or not key:
            continue
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
            quote = value[0]
            value = value[1:-1]
            if quote == '"':
                value = value.replace("\\n", "\n").replace('\\"', '"').replace("\\\\", "\\")
        else:
            # An unquoted value ends at " #" (an inline comment), as in compose.
            comment = value.find(" #")
            if comment >= 0:
                value = value[:comment].rstrip()
        result[key] = value
    return result


class NotARegularFile(OSError):
    """A configuration input that is a FIFO, directory, device or socket."""


_FILE_KINDS = (
    (stat.S_ISFIFO, "a FIFO (named pipe), which would block until something writes to it"),
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)


def read_regular_file(path: Path | str) -> tuple[str, int]:
    """The UTF-8 text of a regular file and its mode bits.

    The file is opened without blocking and checked before a byte is read: a FIFO given as
    ``--config`` or as a secret file would otherwise hang the daemon (and ``config
    validate``) for ever, and a device could be read without end. Raises
    :class:`NotARegularFile`, ``OSError`` or ``UnicodeDecodeError``.
    """
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    with os.fdopen(fd, "rb") as handle:
        info = os.fstat(fd)
        mode = info.st_mode
        if stat.S_ISCHR(mode) and os.path.samestat(info, os.stat(os.devnull)):
            # /dev/null is the usual "no file here" (--config /dev/null): empty, never blocks.
            return "", 0o600
        if not stat.S_ISREG(mode):
            kind = next((what for test, what in _FILE_KINDS if test(mode)), "not a regular file")
            raise NotARegularFile(f"is {kind}, not a regular file")
        data = handle.read()
    return data.decode("utf-8"), stat.S_IMODE(mode)


def _reason(exc: OSError) -> str:
    return str(exc) if isinstance(exc, NotARegularFile) else (exc.strerror or str(exc))


def load_env_file(path: Path) -> dict[str, str]:
    try:
        return parse_env_file(read_regular_file(path)[0])
    except OSError as exc:
        raise ConfigError([f"--env-file: cannot read {path}: {_reason(exc)}"]) from exc
    except UnicodeDecodeError as exc:
        raise ConfigError([f"--env-file: {path} is not UTF-8 text"]) from exc


def load_config(
    path: Path | None = None,
    environ: Mapping[str, str] | None = None,
) -> Config:
    """Build the effective configuration or raise ConfigError listing every problem."""
    env = dict(os.environ if environ is None else environ)
    raw = _Raw()
    if path is not None:
        _read_yaml(path, raw)
    _overlay_legacy_env(env, raw)
    _overlay_laterbased_env(env, raw)
    _resolve_secret_files(raw, env)
    config: Config = _build(Config, raw.values, (), raw)
    config = dataclasses.replace(
        config, upload=dataclasses.replace(config.upload, environment=rclone_environment(env))
    )
    _check_semantics(config, raw)
    _check_upload(config, raw, env)
    if raw.errors:
        raise ConfigError(raw.errors)
    return config


def _read_yaml(path: Path, raw: _Raw) -> None:
    try:
        text = read_regular_file(path)[0]
    except OSError as exc:
        raw.errors.append(f"config file {path}: {_reason(exc)}")
        return
    except UnicodeDecodeError:
        raw.errors.append(f"config file {path}: not UTF-8 text")
        return
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1} column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raw.errors.append(f"config file {path}{where}: invalid YAML: {problem}")
        return
    if data is None:
        return
    if not isinstance(data, dict):
        raw.errors.append(f"config file {path}: top level must be a mapping of sections")
        return
    for key, value in _flatten(data, ()):
        raw.set(key, value, f"{path}")


def _flatten(
    data: Mapping[Any, Any], prefix: tuple[str, ...]
) -> Iterator[tuple[tuple[str, ...], Any]]:
    for key, value in data.items():
        path = (*prefix, str(key))
        # Sections are nested mappings; anything else (including a remote's params) is a leaf.
        if isinstance(value, dict) and len(path) == 1 and str(key) in SECTIONS:
            yield from _flatten(value, path)
        else:
            yield path, value


def rclone_environment(env: Mapping[str, str]) -> dict[str, str | Secret]:
    """The ``RCLONE_*`` variables in ``env`` that rclone itself reads (our legacy
    ``RCLONE_REMOTE_*`` names are translated instead). A remote's options that rclone keeps
    secret (``RCLONE_CONFIG_<NAME>_<OPTION>``; every option of a remote whose type is not
    known) and the config password are secrets, as in ``RCLONE_REMOTE_<N>_PARAM_*``."""
    found: dict[str, str | Secret] = {}
    backends = {
        name[len("RCLONE_CONFIG_") : -len("_TYPE")]: value
        for name, value in env.items()
        if name.startswith("RCLONE_CONFIG_") and name.endswith("_TYPE")
    }
    for name, value in env.items():
        if not name.startswith("RCLONE_") or name.startswith("RCLONE_REMOTE_"):
            continue
        secret = name.startswith("RCLONE_CONFIG_") and not name.endswith("_TYPE")
        rest = name[len("RCLONE_CONFIG_") :]
        for remote, backend in backends.items():
            if secret and rest.startswith(remote + "_"):
                # Only what rclone keeps secret for that backend (an endpoint is not).
                secret = is_secret_option(backend, rest[len(remote) + 1 :])
        found[name] = Secret(value) if secret else value
    return found


def _overlay_legacy_env(env: Mapping[str, str], raw: _Raw) -> None:
    for name, path in LEGACY_ENV.items():
        if name in env and env[name] != "":
            raw.set(path, env[name], name)
    # PRIMARY_DBS (a list) wins over PRIMARY_DB (the old single-database name).
    for name in ("PRIMARY_DB", "PRIMARY_DBS"):
        if env.get(name, "").strip():
            raw.set(("backup", "databases"), env[name], name)
    remotes = _legacy_remotes(env, raw)
    if remotes is not None:
        raw.set(("upload", "remotes"), remotes, "RCLONE_REMOTE_<N>_*")


def _legacy_remotes(env: Mapping[str, str], raw: _Raw) -> list[dict[str, Any]] | None:
    """Collect RCLONE_REMOTE_<N>_NAME/_TYPE/_PARAM_<KEY> into a list of remote mappings."""
    by_number: dict[int, dict[str, Any]] = {}
    for name, value in env.items():
        match = _REMOTE_VAR.match(name)
        if not match:
            continue
        number = int(match.group(1))
        entry = by_number.setdefault(number, {"params": {}})
        if match.group(3) is not None:
            entry["params"][match.group(3).lower()] = value
        else:
            entry[match.group(2).lower()] = value
    if not by_number:
        return None
    numbers = sorted(by_number)
    expected = list(range(1, len(numbers) + 1))
    if numbers != expected:
        missing = sorted(set(range(1, max(numbers) + 1)) - set(numbers))
        raw.errors.append(
            "RCLONE_REMOTE_<N>_*: remotes must be numbered 1, 2, 3… without gaps; "
            f"found {numbers}, missing {missing or [0]}"
        )
    remotes = []
    for number in numbers:
        entry = by_number[number]
        for required in ("name", "type"):
            if not str(entry.get(required, "")).strip():
                raw.errors.append(f"RCLONE_REMOTE_{number}_{required.upper()}: missing")
        remotes.append(entry)
    return remotes


def _overlay_laterbased_env(env: Mapping[str, str], raw: _Raw) -> None:
    known: dict[str, tuple[str, ...]] = {}
    for section_field in dataclasses.fields(Config):
        section_type = SECTIONS.get(section_field.name)
        if section_type is None:
            known[f"LATERBASED_{section_field.name.upper()}"] = (section_field.name,)
            continue
        for leaf in dataclasses.fields(section_type):
            if leaf.metadata.get("internal"):
                continue
            env_name = f"LATERBASED_{section_field.name}_{leaf.name}".upper()
            known[env_name] = (section_field.name, leaf.name)
    for name, value in env.items():
        if not name.startswith("LATERBASED_") or name in NON_CONFIG_ENV:
            continue
        if name.startswith(NON_CONFIG_ENV_PREFIXES):
            continue
        if name.endswith("_FILE") and name[: -len("_FILE")] in known:
            continue  # handled with the secrets
        if name not in known:
            raw.errors.append(f"{name}: unknown setting (environment)")
            continue
        raw.set(known[name], value, name)


def _resolve_secret_files(raw: _Raw, env: Mapping[str, str]) -> None:
    """Apply ``<secret>_file`` (YAML) and ``<ENV>_FILE`` variables for every secret field."""
    secret_env: dict[tuple[str, ...], list[str]] = {
        ("primary", "password"): ["REPL_PASSWORD_FILE", "LATERBASED_PRIMARY_PASSWORD_FILE"],
        ("http", "token"): ["LATERBASED_HTTP_TOKEN_FILE"],
        ("notify", "webhook_url"): ["LATERBASED_NOTIFY_WEBHOOK_URL_FILE"],
        ("pgadmin", "password"): ["PGADMIN_PASSWORD_FILE", "LATERBASED_PGADMIN_PASSWORD_FILE"],
    }
    for path, env_names in secret_env.items():
        section = raw.values.get(path[0])
        yaml_key = f"{path[1]}_file"
        sources: list[tuple[str, str]] = []
        if isinstance(section, dict) and yaml_key in section:
            sources.append((".".join((path[0], yaml_key)), str(section.pop(yaml_key))))
        sources += [(name, env[name]) for name in env_names if env.get(name)]
        for origin, file_name in sources:
            # A file is one more way to give the value in its own layer: it must not beat a
            # value from a higher layer (YAML password_file vs LATERBASED_PRIMARY_PASSWORD).
            current = raw.origin.get(path)
            if current is not None and _layer(current) > _layer(origin):
                continue
            try:
                text, mode = read_regular_file(file_name)
            except (OSError, UnicodeDecodeError) as exc:
                reason = _reason(exc) if isinstance(exc, OSError) else "not UTF-8 text"
                raw.errors.append(
                    f"{'.'.join(path)}: cannot read secret file {file_name} ({origin}): {reason}"
                )
                continue
            if mode & 0o077:
                # Not an error: Docker and Kubernetes mount secrets 0444 by default, and the
                # daemon works; but anyone on the machine can read the password.
                logger.warning(
                    "secret file %s (%s) is readable or writable by group or others "
                    "(mode %04o): run chmod 600 %s",
                    file_name,
                    origin,
                    mode,
                    file_name,
                )
            raw.set(path, text.rstrip("\r\n"), origin)


def _layer(origin: str) -> int:
    """Precedence of a value's origin: YAML 1 < legacy .env names 2 < ``LATERBASED_*`` 3."""
    if origin.startswith("LATERBASED_"):
        return 3
    if origin in LEGACY_ENV or origin.removesuffix("_FILE") in LEGACY_ENV:
        return 2
    return 1  # a YAML file path, or a YAML key such as primary.password_file


def _where(raw: _Raw, path: tuple[str, ...]) -> str:
    origin = raw.origin.get(path)
    return f" (from {origin})" if origin else ""


def _build(cls: type[Any], values: Any, path: tuple[str, ...], raw: _Raw) -> Any:
    """Coerce a raw mapping into dataclass ``cls``, appending problems to ``raw.errors``."""
    label = ".".join(path) or "config"
    if values is None:
        values = {}
    if not isinstance(values, Mapping):
        raw.errors.append(f"{label}: must be a mapping{_where(raw, path)}")
        return cls()
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if not f.metadata.get("internal")}
    for key in values:
        if key not in fields:
            suggestion = _suggest(str(key), fields)
            raw.errors.append(
                f"{'.'.join((*path, str(key)))}: unknown key{suggestion}{_where(raw, (*path, key))}"
            )
    kwargs: dict[str, Any] = {}
    for name, fld in fields.items():
        if name not in values:
            continue
        field_path = (*path, name)
        try:
            kwargs[name] = _coerce(hints[name], values[name], fld, field_path, raw)
        except _Invalid as exc:
            raw.errors.append(f"{'.'.join(field_path)}: {exc}{_where(raw, field_path)}")
    # A field that failed keeps its default, so later cross-field checks still run and
    # the user sees every problem in one go.
    return cls(**kwargs)


class _Invalid(ValueError):
    pass


def _suggest(key: str, fields: Mapping[str, Any]) -> str:
    import difflib

    close = difflib.get_close_matches(key, list(fields), n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""


_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def _coerce(
    hint: Any, value: Any, fld: dataclasses.Field[Any], path: tuple[str, ...], raw: _Raw
) -> Any:
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        return _build(hint, value, path, raw)
    kind = fld.metadata.get("kind")
    if fld.metadata.get("strip") and isinstance(value, str):
        if value and not value.strip():
            raise _Invalid("only spaces: give the value, or leave it empty for none")
        value = value.strip()
    origin = get_origin(hint)
    args = get_args(hint)
    if origin in (typing.Union, types.UnionType):
        non_none = [a for a in args if a is not type(None)]
        if value is None or (isinstance(value, str) and value.strip() == ""):
            if type(None) in args:
                return None
        if len(non_none) == 1:
            return _coerce(non_none[0], value, fld, path, raw)
    if isinstance(value, str) and _PLACEHOLDER.match(value.strip()):
        raise _Invalid(f"still the placeholder {value!r}: put your real value here")
    if kind == "duration":
        try:
            return parse_duration(value)
        except ValueError as exc:
            raise _Invalid(str(exc)) from None
    if kind == "size":
        try:
            return parse_size(value)
        except ValueError as exc:
            raise _Invalid(str(exc)) from None
    if kind == "cron":
        text = str(value).strip()
        problem = validate_expression(text)
        if problem is not None:
            raise _Invalid(f"invalid cron expression: {problem}")
        return text
    if hint is Secret:
        if not isinstance(value, str | int):
            raise _Invalid("must be a string")
        return Secret(str(value))
    if hint is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
            return value.strip().lower() in _TRUE
        raise _Invalid(f"must be true or false, not {value!r}")
    if hint is int:
        if isinstance(value, bool):
            raise _Invalid(f"must be a whole number, not {value!r}")
        try:
            return int(str(value).strip())
        except ValueError:
            raise _Invalid(f"must be a whole number, not {value!r}") from None
    if hint is float:
        try:
            return float(value)
        except (TypeError, ValueError):
            raise _Invalid(f"must be a number, not {value!r}") from None
    if hint is str:
        if isinstance(value, dict | list):
            raise _Invalid("must be a single value, not a list or mapping")
        return str(value)
    if hint is Path:
        if not isinstance(value, str) or not value.strip():
            raise _Invalid(f"must be a path, not {value!r}")
        result = Path(value).expanduser()
        if not result.is_absolute():
            # Relative to what? The daemon's working directory is / under systemd, not where
            # `config validate` ran; the old compose setup meant the compose directory.
            raise _Invalid(
                f"must be an absolute path, not {value!r}: the daemon does not run in the "
                "directory you run this from (under systemd it runs in /); write the full path"
            )
        return result
    if origin is Literal:
        text = str(value).strip().lower() if isinstance(value, str) else value
        if text not in args:
            choices = ", ".join(repr(a) for a in args)
            raise _Invalid(f"must be one of {choices}, not {value!r}")
        return text
    if origin is tuple and args and args[-1] is Ellipsis:
        item = args[0]
        if isinstance(value, str):
            items: list[Any] = [v.strip() for v in value.split(",") if v.strip()]
        elif isinstance(value, list | tuple):
            items = list(value)
        else:
            raise _Invalid("must be a list")
        if dataclasses.is_dataclass(item):
            built = []
            for index, entry in enumerate(items):
                built.append(_build_remote(entry, (*path, str(index)), raw))
            return tuple(b for b in built if b is not None)
        return tuple(_coerce(item, v, fld, path, raw) for v in items)
    raise _Invalid(f"unsupported value {value!r}")  # pragma: no cover - schema bug


def _build_remote(entry: Any, path: tuple[str, ...], raw: _Raw) -> RcloneRemote | None:
    label = ".".join(path)
    if not isinstance(entry, Mapping):
        raw.errors.append(f"{label}: a remote must be a mapping with name, type, params")
        return None
    unknown = set(entry) - {"name", "type", "params"}
    for key in sorted(unknown):
        raw.errors.append(f"{label}.{key}: unknown key (remotes take name, type, params)")
    name = str(entry.get("name") or "").strip()
    remote_type = str(entry.get("type") or "").strip()
    params = entry.get("params") or {}
    if not isinstance(params, Mapping):
        raw.errors.append(f"{label}.params: must be a mapping of rclone option → value")
        params = {}
    if not name or not remote_type:
        return None  # missing name/type is reported by the caller with the env name
    # Names and parameter keys are checked against rclone's rules in _check_upload.
    return RcloneRemote(
        name=name,
        type=remote_type,
        # Secret exactly where rclone keeps a secret: an endpoint or a provider stays
        # readable in config show (a typo there must be seen), a key never is.
        params={
            str(k).lower(): Secret(str(v)) if is_secret_option(remote_type, str(k)) else str(v)
            for k, v in params.items()
        },
    )


def _check_semantics(config: Config, raw: _Raw) -> None:
    """Cross-field rules that a single field's type cannot express."""
    errors = raw.errors

    def problem(key: str, message: str) -> None:
        """One error for ``key``, naming where its value came from (file or variable)."""
        errors.append(f"{key}: {message}{_where(raw, tuple(key.split('.')))}")

    for key, port in (
        ("primary.port", config.primary.port),
        ("standby.port", config.standby.port),
        ("standby.failover_port", config.standby.failover_port),
        ("http.port", config.http.port),
    ):
        if not 1 <= port <= 65535:
            problem(key, f"port must be 1-65535, not {port}")
    for address in config.standby.failover_address:
        try:
            ipaddress.ip_address(address)
        except ValueError:
            problem(
                "standby.failover_address",
                f"{address!r} is not an IP address (give this host's address the Resolve "
                "workstations reach, e.g. 192.168.1.20)",
            )
    if config.primary.connect_timeout <= 0:
        problem("primary.connect_timeout", "must be greater than 0")
    if config.monitor.interval <= 0:
        problem("monitor.interval", "must be greater than 0")
    if config.backup.standby_wait < 0:
        problem("backup.standby_wait", "must be 0 or more")
    if config.backup.retention_days < 0:
        problem("backup.retention_days", "must be 0 or more")
    if config.backup.min_keep < 1:
        problem("backup.min_keep", "must be at least 1 (the newest good backup is always kept)")
    for tier in ("keep_hourly", "keep_daily", "keep_weekly", "keep_monthly"):
        if getattr(config.backup, tier) < 0:
            problem(f"backup.{tier}", "must be 0 or more")
    for database in config.backup.databases:
        # PostgreSQL has no such database name; a NUL is also how state keys the globals
        # (state.GLOBALS_KEY), which a configured name must never collide with.
        if not database:
            problem("backup.databases", "an empty name (PostgreSQL has no such database)")
        elif "\0" in database:
            problem(
                "backup.databases",
                f"{database!r} contains a NUL character, which no PostgreSQL name can hold",
            )
    if not _SLOT_NAME.match(config.pitr.slot_name):
        problem(
            "pitr.slot_name",
            f"{config.pitr.slot_name!r} is not a valid slot name "
            "(lower-case letters, digits and '_', at most 63)",
        )
    elif config.pitr.slot_name == config.standby.slot_name:
        problem("pitr.slot_name", "must differ from standby.slot_name (each needs its own slot)")
    if config.pitr.compression.strip().lower() not in {"none", *(str(n) for n in range(10))}:
        problem(
            "pitr.compression",
            f"must be a gzip level 1-9 or none, not {config.pitr.compression!r}",
        )
    if config.pitr.window is not None and config.pitr.window <= 0:
        problem("pitr.window", "must be greater than 0")
    if config.upload.retries < 0:
        problem("upload.retries", "must be 0 or more")
    if not _SLOT_NAME.match(config.standby.slot_name):
        problem(
            "standby.slot_name",
            f"{config.standby.slot_name!r} is not a valid slot name "
            "(lower-case letters, digits and '_', at most 63)",
        )
    if config.timezone:
        try:
            ZoneInfo(config.timezone)
        except (ZoneInfoNotFoundError, ValueError):
            problem("timezone", f"unknown time zone {config.timezone!r}")
    if config.standby.enabled and config.primary.host is None:
        errors.append("primary.host: required (set PRIMARY_HOST or primary.host)")
    if not config.standby.enabled and config.backup.enabled and config.primary.host is None:
        errors.append("primary.host: required for backups (set PRIMARY_HOST or primary.host)")
    if (
        not config.standby.enabled
        and not config.backup.enabled
        and config.pitr.enabled
        and config.primary.host is None
    ):
        errors.append(
            "primary.host: required for the point-in-time archive (set PRIMARY_HOST or "
            "primary.host)"
        )
    names = [remote.name for remote in config.upload.remotes]
    for name in sorted({n for n in names if names.count(n) > 1}):
        errors.append(f"upload.remotes: remote {name!r} is defined more than once")
    webhook = config.notify.webhook_url.reveal() if config.notify.webhook_url else ""
    if webhook and not re.match(r"^https?://", webhook):
        problem("notify.webhook_url", "must start with http:// or https://")
    password = config.primary.password.reveal() if config.primary.password else ""
    for key, value in (
        ("primary.password", password),
        ("primary.user", config.primary.user),
        ("primary.host", config.primary.host or ""),
    ):
        reason = _passfile_problem(value)
        if reason is not None:
            problem(key, reason)


def _passfile_problem(value: str) -> str | None:
    """Why ``value`` cannot reach PostgreSQL through a libpq password file, or None.

    pg_dump and the standby's WAL receiver get the password from a passfile (never argv):
    one ``host:port:database:user:password`` line, where ``:`` and ``\\`` are escaped but a
    line break cannot be, and libpq reads C strings, which end at a NUL. Caught here, such a
    value would otherwise fail every dump and standby start. The value itself is never shown.
    """
    if "\n" in value or "\r" in value:
        return (
            "contains a line break, which a libpq password file (how pg_dump and the standby "
            "receive it) cannot hold; remove it (a secret file's final newline is ignored)"
        )
    if "\0" in value:
        return "contains a NUL character, which PostgreSQL's client library cannot send"
    return None


def _check_upload(config: Config, raw: _Raw, env: Mapping[str, str]) -> None:
    """Remote names rclone would reject, and an upload target defined nowhere."""
    legacy = raw.origin.get(("upload", "remotes")) == "RCLONE_REMOTE_<N>_*"
    for problem in upload_config_problems(config.upload, env, legacy=legacy):
        if problem.startswith("upload.remote:"):
            problem += _where(raw, ("upload", "remote"))
        raw.errors.append(problem)


def config_as_dict(config: Config, *, reveal: bool = False) -> dict[str, Any]:
    """A plain mapping for ``config show``, with secrets masked unless ``reveal``."""

    def convert(value: Any) -> Any:
        if isinstance(value, Secret):
            return value.reveal() if reveal else "********"
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            return {
                f.name: convert(getattr(value, f.name))
                for f in dataclasses.fields(value)
                if not f.metadata.get("internal")
            }
        if isinstance(value, Mapping):
            return {str(k): convert(v) for k, v in value.items()}
        if isinstance(value, tuple | list):
            return [convert(v) for v in value]
        if isinstance(value, Path):
            return str(value)
        return value

    result = convert(config)
    assert isinstance(result, dict)  # noqa: S101 - Config is a dataclass
    return result


def secrets_of(config: Config) -> list[str]:
    """Every secret value in the config, for the log filter that masks them."""
    found: list[str] = []

    def walk(value: Any) -> None:
        if isinstance(value, Secret):
            if value.reveal():
                found.append(value.reveal())
        elif dataclasses.is_dataclass(value) and not isinstance(value, type):
            for f in dataclasses.fields(value):
                walk(getattr(value, f.name))
        elif isinstance(value, Mapping):
            for v in value.values():
                walk(v)
        elif isinstance(value, tuple | list):
            for v in value:
                walk(v)

    walk(config)
    return found
