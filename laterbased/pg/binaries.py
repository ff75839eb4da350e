"""Finding PostgreSQL programs of the right major version.

The selection logic is pure: it takes a *probe* (``bindir, tools -> major or None``) so it
can be tested without installing five PostgreSQL versions. The default probe runs
``<bindir>/<tool> --version``. These functions block briefly: from async code, call them
through ``asyncio.to_thread``.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import subprocess
from collections.abc import Callable, Sequence
from pathlib import Path

from laterbased.errors import ToolMissing
from laterbased.proc import child_environment

logger = logging.getLogger(__name__)

DEFAULT_SEARCH_ROOTS: tuple[Path, ...] = (Path("/usr/lib/postgresql"),)
SERVER_TOOLS: tuple[str, ...] = ("postgres", "pg_basebackup", "pg_ctl")
DUMP_TOOLS: tuple[str, ...] = ("pg_dump", "pg_restore")
# What reading a backup needs: pg_restore for custom archives, psql for plain SQL.
READ_TOOLS: tuple[str, ...] = ("pg_restore", "psql")
_VERSION_TIMEOUT = 15.0

# "postgres (PostgreSQL) 15.18 (Debian 15.18-0+deb12u1)", "pg_dump (PostgreSQL) 9.5.24",
# "postgres (PostgreSQL) 17devel", "pg_dump (PostgreSQL) 16beta1"
_VERSION_RE = re.compile(r"\(PostgreSQL\)\s+(\d+)(?:\.(\d+))?")

# bindir, tools -> major version ("15", "9.5") of the first tool, or None if unusable.
Probe = Callable[[Path, Sequence[str]], str | None]
# pg_config program -> the directory it reports with --bindir, or None.
PgConfigLookup = Callable[[str], Path | None]


def major_from_version_num(version_num: int) -> str:
    """``server_version_num`` → major: 90524 → "9.5", 130011 → "13", 150004 → "15"."""
    if version_num >= 100000:
        return str(version_num // 10000)
    if version_num >= 80000:
        return f"{version_num // 10000}.{version_num // 100 % 100}"
    raise ValueError(f"not a PostgreSQL server_version_num: {version_num}")


def major_from_version_string(text: str) -> str:
    """Major from ``--version`` output: "pg_dump (PostgreSQL) 9.5.24" → "9.5"."""
    match = _VERSION_RE.search(text)
    if match is None:
        raise ValueError(f"not PostgreSQL --version output: {text.strip()[:200]!r}")
    major = int(match.group(1))
    if major >= 10 or match.group(2) is None:
        return str(major)
    return f"{major}.{match.group(2)}"


def major_key(major: str) -> tuple[int, ...]:
    """Sortable form of a major: "9.5" → (9, 5), "13" → (13,); (9, 6) < (10,)."""
    try:
        return tuple(int(part) for part in major.split("."))
    except ValueError:
        raise ValueError(f"not a PostgreSQL major version: {major!r}") from None


def tool_version(path: Path) -> str:
    """The first line of ``<path> --version`` (e.g. "pg_dump (PostgreSQL) 15.18 (...)")."""
    completed = subprocess.run(  # noqa: S603 - fixed argv, no shell
        [str(path), "--version"],
        capture_output=True,
        check=False,
        timeout=_VERSION_TIMEOUT,
        env=child_environment(),
        stdin=subprocess.DEVNULL,
    )
    output = completed.stdout.decode("utf-8", errors="replace").strip()
    if completed.returncode != 0 or not output:
        error = completed.stderr.decode("utf-8", errors="replace").strip()
        raise ToolMissing(f"{path} --version failed (status {completed.returncode}): {error}")
    return output.splitlines()[0]


def probe_bindir(bindir: Path, tools: Sequence[str]) -> str | None:
    """Default probe: every tool present and executable, major of the first one's version."""
    for tool in tools:
        if not os.access(bindir / tool, os.X_OK):
            return None
    try:
        return major_from_version_string(tool_version(bindir / tools[0]))
    except (ToolMissing, ValueError, OSError, subprocess.TimeoutExpired) as exc:
        logger.warning("cannot tell the version of %s: %s", bindir / tools[0], exc)
        return None


def pg_config_bindir(pg_config: str) -> Path | None:
    """What ``pg_config --bindir`` reports, or None when pg_config is absent or fails."""
    program = shutil.which(pg_config)
    if program is None:
        return None
    try:
        completed = subprocess.run(  # noqa: S603 - fixed argv, no shell
            [program, "--bindir"],
            capture_output=True,
            check=False,
            timeout=_VERSION_TIMEOUT,
            env=child_environment(),
            stdin=subprocess.DEVNULL,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        logger.warning("%s --bindir failed: %s", program, exc)
        return None
    bindir = completed.stdout.decode("utf-8", errors="replace").strip()
    if completed.returncode != 0 or not bindir:
        return None
    return Path(bindir)


def _package_hint(major: str, tools: Sequence[str]) -> str:
    if "postgres" in tools:
        return f"postgresql-{major}"
    return f"postgresql-client-{major}"


def _describe(found: str | None, major: str) -> str:
    if found is None:
        return "missing or not executable"
    return f"is PostgreSQL {found}, need {major}"


def find_bindir(
    major: str,
    configured: Path | None = None,
    *,
    search_roots: Sequence[Path] = DEFAULT_SEARCH_ROOTS,
    pg_config: str | None = "pg_config",
    tools: Sequence[str] = SERVER_TOOLS,
    config_key: str = "standby.bin_dir",
    probe: Probe = probe_bindir,
    pg_config_lookup: PgConfigLookup = pg_config_bindir,
) -> Path:
    """Directory holding ``tools`` of PostgreSQL ``major``.

    Looks, in order, at ``configured`` (an explicit setting that is wrong is an error,
    not something to silently route around), ``<root>/<major>/bin`` for each search root,
    then ``pg_config --bindir``. Raises :class:`ToolMissing` naming every place looked at
    and how to fix it.
    """
    if configured is not None:
        found = probe(configured, tools)
        if found == major:
            return configured
        raise ToolMissing(
            f"{config_key}={configured}: {', '.join(tools)} there "
            f"{_describe(found, major)}; point {config_key} at PostgreSQL {major}'s bin "
            f"directory or remove it to search {', '.join(str(r) for r in search_roots)}"
        )
    looked: list[str] = []
    for root in search_roots:
        candidate = root / major / "bin"
        found = probe(candidate, tools)
        if found == major:
            return candidate
        looked.append(f"{candidate} ({_describe(found, major)})")
    if pg_config is not None:
        reported = pg_config_lookup(pg_config)
        if reported is None:
            looked.append(f"{pg_config} --bindir (no pg_config found)")
        else:
            found = probe(reported, tools)
            if found == major:
                return reported
            looked.append(f"{pg_config} --bindir → {reported} ({_describe(found, major)})")
    raise ToolMissing(
        f"PostgreSQL {major} programs ({', '.join(tools)}) not found. Looked at: "
        f"{'; '.join(looked)}. Fix: apt-get install {_package_hint(major, tools)} "
        f"(older majors come from apt.postgresql.org) or set {config_key}"
    )


def newest_bindir_at_least(
    major: str,
    *,
    search_roots: Sequence[Path] = DEFAULT_SEARCH_ROOTS,
    pg_config: str | None = "pg_config",
    tools: Sequence[str] = DUMP_TOOLS,
    config_key: str = "backup.bin_dir",
    probe: Probe = probe_bindir,
    pg_config_lookup: PgConfigLookup = pg_config_bindir,
) -> tuple[Path, str]:
    """The newest installed ``tools`` whose major is >= ``major``, with that major.

    pg_dump can dump servers older than itself, never newer ones: an older pg_dump is
    refused. Callers should prefer the exact major (:func:`dump_bindir`).
    """
    wanted = major_key(major)
    candidates, looked = _installed(tools, search_roots, pg_config, probe, pg_config_lookup)
    usable = [(major_key(m), path, m) for path, m in candidates.items() if major_key(m) >= wanted]
    if not usable:
        raise ToolMissing(
            f"no {', '.join(tools)} of PostgreSQL {major} or newer found (an older one cannot "
            f"dump this server). Looked at: {'; '.join(looked) or 'nothing found'}. Fix: "
            f"apt-get install {_package_hint(major, tools)} or set {config_key}"
        )
    _key, path, found_major = max(usable)
    return path, found_major


def _installed(
    tools: Sequence[str],
    search_roots: Sequence[Path],
    pg_config: str | None,
    probe: Probe,
    pg_config_lookup: PgConfigLookup,
) -> tuple[dict[Path, str], list[str]]:
    """Every directory under the search roots (and pg_config's) holding usable ``tools``,
    with its major; and a description of each place looked at."""
    candidates: dict[Path, str] = {}
    looked: list[str] = []
    for root in search_roots:
        try:
            entries = sorted(root.iterdir())
        except OSError:
            looked.append(f"{root} (not readable)")
            continue
        for entry in entries:
            bindir = entry / "bin"
            found = probe(bindir, tools)
            looked.append(f"{bindir} ({'unusable' if found is None else found})")
            if found is not None:
                candidates[bindir] = found
    if pg_config is not None:
        reported = pg_config_lookup(pg_config)
        if reported is not None and reported not in candidates:
            found = probe(reported, tools)
            looked.append(f"{pg_config} --bindir → {reported} ({found or 'unusable'})")
            if found is not None:
                candidates[reported] = found
    return candidates, looked


def dump_bindir(
    server_major: str,
    configured: Path | None = None,
    *,
    search_roots: Sequence[Path] = DEFAULT_SEARCH_ROOTS,
    pg_config: str | None = "pg_config",
    config_key: str = "backup.bin_dir",
    probe: Probe = probe_bindir,
    pg_config_lookup: PgConfigLookup = pg_config_bindir,
) -> Path:
    """pg_dump/pg_restore for a server of ``server_major``: the same major when installed
    (Resolve's bundled restore may not read a newer archive format), else the newest newer
    one with a warning. A configured directory of a newer major is used with that warning
    (it is what the operator asked for; pg_dump reads older servers); an older or unusable
    one is an error.
    """
    try:
        return find_bindir(
            server_major,
            configured,
            search_roots=search_roots,
            pg_config=pg_config,
            tools=DUMP_TOOLS,
            config_key=config_key,
            probe=probe,
            pg_config_lookup=pg_config_lookup,
        )
    except ToolMissing:
        if configured is not None:
            found = probe(configured, DUMP_TOOLS)
            if found is None or major_key(found) < major_key(server_major):
                raise
            _warn_newer_pg_dump(server_major, found, configured, config_key)
            return configured
    path, found_major = newest_bindir_at_least(
        server_major,
        search_roots=search_roots,
        pg_config=pg_config,
        tools=DUMP_TOOLS,
        config_key=config_key,
        probe=probe,
        pg_config_lookup=pg_config_lookup,
    )
    _warn_newer_pg_dump(server_major, found_major, path, config_key)
    return path


def newer_pg_dump_fix(server_major: str, config_key: str = "backup.bin_dir") -> str:
    """How to dump a ``server_major`` server with its own pg_dump again."""
    return (
        f"apt-get install {_package_hint(server_major, DUMP_TOOLS)} (apt.postgresql.org for "
        f"older majors) and set {config_key} to its bin directory "
        f"(/usr/lib/postgresql/{server_major}/bin) or leave {config_key} unset"
    )


def _warn_newer_pg_dump(server_major: str, found: str, bindir: Path, config_key: str) -> None:
    logger.warning(
        "dumping the PostgreSQL %s server with pg_dump %s from %s: its backups are not "
        "readable by Resolve's own restore (it runs pg_restore %s). Fix: %s",
        server_major,
        found,
        bindir,
        server_major,
        newer_pg_dump_fix(server_major, config_key),
    )


def reading_bindir(
    major: str,
    configured: Path | None = None,
    *,
    tools: Sequence[str] = READ_TOOLS,
    config_key: str = "backup.bin_dir",
    search_roots: Sequence[Path] = DEFAULT_SEARCH_ROOTS,
    pg_config: str | None = "pg_config",
    probe: Probe = probe_bindir,
    pg_config_lookup: PgConfigLookup = pg_config_bindir,
) -> tuple[Path, str]:
    """``tools`` to read (list, restore) a backup of a PostgreSQL ``major`` server, and
    their major: that major's, as Resolve's own restore reads it (its bundled pg_restore is
    the server's major), not the newest installed. When that major is not installed, the
    nearest newer one (pg_restore reads older archives) with a warning naming it.

    ``configured`` is taken when it is that major; when it is another major, ``major`` is
    looked for in the usual places first and ``configured`` is one of the newer candidates.
    A configured directory without usable ``tools`` is an error (an explicit setting that
    is wrong is not routed around silently).
    """
    configured_major: str | None = None
    if configured is not None:
        configured_major = probe(configured, tools)
        if configured_major is None:
            raise ToolMissing(
                f"{config_key}={configured}: {', '.join(tools)} there missing or not "
                f"executable; point {config_key} at a PostgreSQL bin directory or remove it"
            )
        if configured_major == major:
            return configured, major
    try:
        exact = find_bindir(
            major,
            search_roots=search_roots,
            pg_config=pg_config,
            tools=tools,
            config_key=config_key,
            probe=probe,
            pg_config_lookup=pg_config_lookup,
        )
    except ToolMissing as missing:
        candidates, _looked = _installed(tools, search_roots, pg_config, probe, pg_config_lookup)
        if configured is not None and configured_major is not None:
            candidates[configured] = configured_major
        wanted = major_key(major)
        newer = [(major_key(m), p, m) for p, m in candidates.items() if major_key(m) > wanted]
        if not newer:
            raise ToolMissing(f"{missing} (and no newer PostgreSQL's either)") from None
        _key, path, found = min(newer, key=lambda item: (item[0], str(item[1])))
        logger.warning(
            "no %s of PostgreSQL %s installed; reading its backup with PostgreSQL %s's from %s "
            "(Resolve's own restore runs pg_restore %s): apt-get install %s",
            "/".join(tools),
            major,
            found,
            path,
            major,
            _package_hint(major, tools),
        )
        return path, found
    return exact, major
