"""Named mutations of the data-safety core, each run against the fast tests that must kill it.

    .venv/bin/python bench/mutations.py [--only NAME ...] [--list]

Each mutant is one deliberate breakage of a promise (retention keeps the newest backup,
publish is crash-safe, health says stale when stale, secrets are masked, the promote guard
refuses, configuration errors are caught): a file, the exact text to replace (it must occur
exactly once) and its replacement, and the test files (with an optional ``-k``) that should
fail with it. The tree is copied to a scratch directory first (the working tree, tracked and
new files), so the working tree is never touched; each mutant is applied there, its tests run
with ``-x -q`` against the scratch copy (PYTHONPATH puts its ``laterbased`` first), and the
file is restored. A mutant whose tests still pass *survived*: a promise no test defends.

Prints one line per mutant and a final ``mutants: N killed, M survived``. Report only: the
exit status is 0 whatever survived (``--strict`` makes survivors exit 1). Server tests run on
one PostgreSQL major (the lowest installed, or LATERBASED_TEST_PG_MAJORS) to keep the run
short. A mutant whose text no longer occurs is reported as ``stale`` (the code moved on:
update the mutant), never counted as killed. Accepted survivors are listed in
bench/README.md with the reason.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PER_MUTANT_TIMEOUT = 240.0


@dataclass(frozen=True)
class Mutant:
    name: str
    path: str
    old: str
    new: str
    tests: tuple[str, ...]
    select: str | None = None  # pytest -k


PRUNE = "laterbased/backup/prune.py"
PRUNE_TESTS = ("tests/backup/test_prune.py",)
CATALOGUE = "laterbased/records/catalogue.py"
CATALOGUE_TESTS = ("tests/records/test_backup_catalogue.py",)
VERDICTS = "laterbased/health/verdicts.py"
VERDICT_TESTS = ("tests/health/test_health.py", "tests/health/test_backup_checks.py")
PROMOTE = "laterbased/standby/promote.py"
PROMOTE_TESTS = ("tests/standby/test_promote_guard.py",)
CONFIG = "laterbased/config/__init__.py"
CONFIG_TESTS = ("tests/test_config.py",)

MUTANTS: tuple[Mutant, ...] = (
    # --- retention decisions (backup/prune.py) -------------------------------------------
    Mutant(
        "prune: max_local_bytes may delete the newest",
        PRUNE,
        '            if "newest" in decision.rules:\n                continue\n',
        "",
        PRUNE_TESTS,
    ),
    Mutant(
        "prune: min_keep keeps one fewer",
        PRUNE,
        "for decision in good[: policy.min_keep]:",
        "for decision in good[: policy.min_keep - 1]:",
        PRUNE_TESTS,
    ),
    Mutant(
        "prune: a backup dated in the future may be the newest",
        PRUNE,
        "trusted = [d for d in newest_first if not d.record.from_the_future(now)]",
        "trusted = list(newest_first)",
        PRUNE_TESTS,
    ),
    Mutant(
        "prune: not-uploaded backups are not kept",
        PRUNE,
        "        if policy.upload_enabled:\n            for decision in newest_first:",
        "        if False:\n            for decision in newest_first:",
        PRUNE_TESTS,
    ),
    Mutant(
        "prune: with no good backup, the newest file is not kept",
        PRUNE,
        '            if present:\n                present[0].rules.append("newest")',
        "            if present:\n                pass",
        PRUNE_TESTS,
    ),
    Mutant(
        "prune: age rule off by the retention window",
        PRUNE,
        "cutoff = now - timedelta(days=policy.retention_days)",
        "cutoff = now - timedelta(days=policy.retention_days + 1)",
        PRUNE_TESTS,
    ),
    # --- catalogue publish (records/catalogue.py) ----------------------------------------
    Mutant(
        "catalogue: manifest renamed before the data",
        CATALOGUE,
        "            os.rename(partial, final)\n            placed.append(final)\n"
        "            os.rename(manifest_tmp, manifest_final)\n"
        "            placed.append(manifest_final)\n",
        "            os.rename(manifest_tmp, manifest_final)\n"
        "            placed.append(manifest_final)\n"
        "            os.rename(partial, final)\n            placed.append(final)\n",
        CATALOGUE_TESTS,
    ),
    Mutant(
        "catalogue: data file not fsynced before publishing",
        CATALOGUE,
        "            os.fchmod(fd, 0o600)  # whatever the umask was when it was created\n"
        "            os.fsync(fd)\n",
        "            os.fchmod(fd, 0o600)  # whatever the umask was when it was created\n",
        CATALOGUE_TESTS,
    ),
    Mutant(
        "catalogue: no rollback when publishing fails",
        CATALOGUE,
        "            for path in reversed(placed):\n"
        "                with contextlib.suppress(OSError):\n"
        "                    path.unlink()\n",
        "",
        CATALOGUE_TESTS,
    ),
    Mutant(
        "catalogue: directory not fsynced after the manifest",
        CATALOGUE,
        "            placed.append(manifest_final)\n            fsync_directory(directory)\n",
        "            placed.append(manifest_final)\n",
        CATALOGUE_TESTS,
    ),
    Mutant(
        "catalogue: an existing backup may be overwritten",
        CATALOGUE,
        "        if final.exists() or manifest_final.exists():",
        "        if False:",
        CATALOGUE_TESTS,
    ),
    # --- health verdicts (health/verdicts.py) --------------------------------------------
    Mutant(
        "verdicts: a stale backup is not critical",
        VERDICTS,
        "    if age > stale_after:\n        return Check(\n            name,\n"
        '            "critical",',
        "    if age > stale_after * 1000:\n        return Check(\n            name,\n"
        '            "critical",',
        VERDICT_TESTS,
    ),
    Mutant(
        "verdicts: a failed last run after a good one is not reported",
        VERDICTS,
        '    if failed:\n        return Check(name, "warning", f"last run failed{error}")',
        '    if False:\n        return Check(name, "warning", f"last run failed{error}")',
        VERDICT_TESTS,
    ),
    Mutant(
        "verdicts: a backup dated in the future counts as fresh",
        VERDICTS,
        "    if -age > FUTURE_TOLERANCE.total_seconds():",
        "    if False:",
        VERDICT_TESTS,
    ),
    Mutant(
        "verdicts: no backup since start is never critical",
        VERDICTS,
        "        if waited > stale_after:\n            return Check(\n                name,\n"
        '                "critical",',
        "        if False:\n            return Check(\n                name,\n"
        '                "critical",',
        VERDICT_TESTS,
    ),
    Mutant(
        "verdicts: replication lag in bytes is ignored",
        VERDICTS,
        "if local.lag_bytes is not None and local.lag_bytes > config.max_lag_bytes:",
        "if local.lag_bytes is not None and local.lag_bytes > config.max_lag_bytes * 1000:",
        VERDICT_TESTS,
    ),
    # --- secret masking (logs.py, config) ------------------------------------------------
    Mutant(
        "logs: the text format does not mask",
        "laterbased/logs.py",
        "        return masker.mask(super().format(record))",
        "        return super().format(record)",
        ("tests/test_logs.py",),
    ),
    Mutant(
        "logs: the JSON format does not mask the message",
        "laterbased/logs.py",
        '"message": masker.mask(record.getMessage()),',
        '"message": record.getMessage(),',
        ("tests/test_logs.py",),
    ),
    Mutant(
        "logs: a secret containing another is masked piecewise",
        "laterbased/logs.py",
        "self._secrets = tuple(sorted(unique, key=len, reverse=True))",
        "self._secrets = tuple(sorted(unique, key=len))",
        ("tests/test_logs.py",),
    ),
    Mutant(
        "config: secrets inside lists are not masked",
        CONFIG,
        "        elif isinstance(value, tuple | list):\n            for v in value:\n"
        "                walk(v)",
        "        elif isinstance(value, tuple | list):\n            pass",
        CONFIG_TESTS + ("tests/test_logs.py",),
    ),
    Mutant(
        "daemon: a reload does not tell the masker its new secrets",
        "laterbased/daemon.py",
        "        masker.set_secrets(secrets_of(old) + secrets_of(new))\n",
        "",
        ("tests/test_logs.py",),
    ),
    # --- the promote guard (standby/promote.py) ------------------------------------------
    Mutant(
        "promote: a primary that accepts the login counts as gone",
        PROMOTE,
        '    return f"the old primary {where} is still running and accepting writes"',
        "    return None",
        PROMOTE_TESTS,
        "still_runs",
    ),
    Mutant(
        "promote: a refused login counts as gone",
        PROMOTE,
        'if exc.reason in {"auth", "server", "ssl"}:',
        'if exc.reason in {"server", "ssl"}:',
        PROMOTE_TESTS,
        "still_runs",
    ),
    Mutant(
        "promote: the guard is skipped without --force",
        PROMOTE,
        "    if still_up is not None and not force:",
        "    if still_up is not None and force:",
        PROMOTE_TESTS,
        "still_runs",
    ),
    # --- configuration validation (config/) ----------------------------------------------
    Mutant(
        "config: port 0 accepted",
        CONFIG,
        "        if not 1 <= port <= 65535:",
        "        if not 0 <= port <= 65535:",
        CONFIG_TESTS,
    ),
    Mutant(
        "config: min_keep 0 accepted (the newest could go)",
        CONFIG,
        "    if config.backup.min_keep < 1:",
        "    if config.backup.min_keep < 0:",
        CONFIG_TESTS,
    ),
    Mutant(
        "config: negative retention accepted",
        CONFIG,
        "    if config.backup.retention_days < 0:",
        "    if config.backup.retention_days < -1000:",
        CONFIG_TESTS,
    ),
    Mutant(
        "config: a webhook URL that is not http(s) accepted",
        CONFIG,
        '        problem("notify.webhook_url", "must start with http:// or https://")',
        "        pass",
        CONFIG_TESTS,
    ),
    # --- children: nothing outlives the daemon ---------------------------------------------
    Mutant(
        "standby: a second cancel may skip the sweep of leftover backends",
        "laterbased/standby/supervisor.py",
        "            await finish_uncancellable(asyncio.ensure_future(stop_and_sweep()))",
        "            await stop_and_sweep()",
        ("tests/standby/test_standby_supervisor.py",),
        "frozen_backend",
    ),
    Mutant(
        "proc: a child's exit is read from the end of its output",
        "laterbased/proc.py",
        "                returncode = await wait_exit(process)",
        "                returncode = await process.wait()",
        ("tests/test_proc_stray_output.py",),
        "a_run_returns",
    ),
)


def scratch_copy(destination: Path) -> None:
    """The working tree as it is (tracked and new files, not ignored ones) in ``destination``."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT, capture_output=True, check=True, timeout=60,
    ).stdout.decode()
    for name in filter(None, listed.split("\0")):
        source = ROOT / name
        if not source.is_file():
            continue  # deleted in the working tree, or a submodule
        target = destination / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, target)


def environment(scratch: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(scratch), env.get("PYTHONPATH")]))
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    if not env.get("LATERBASED_TEST_PG_MAJORS"):
        majors = sorted(
            int(p.parent.parent.name)
            for p in Path("/usr/lib/postgresql").glob("*/bin/initdb")
            if p.parent.parent.name.isdigit()
        )
        if majors:
            env["LATERBASED_TEST_PG_MAJORS"] = str(majors[0])
    return env


def run_tests(scratch: Path, mutant: Mutant, env: dict[str, str]) -> tuple[bool, str]:
    """(passed, last line of pytest's output)."""
    argv = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *mutant.tests]
    if mutant.select:
        argv += ["-k", mutant.select]
    try:
        done = subprocess.run(
            argv, cwd=scratch, env=env, capture_output=True, text=True,
            timeout=PER_MUTANT_TIMEOUT, check=False,
        )
    except subprocess.TimeoutExpired:
        return False, f"timed out after {PER_MUTANT_TIMEOUT:.0f}s"
    lines = [line for line in done.stdout.splitlines() if line.strip()]
    return done.returncode == 0, lines[-1] if lines else f"exit {done.returncode}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", action="append", help="run only mutants whose name has this")
    parser.add_argument("--list", action="store_true", help="list the mutants and exit")
    parser.add_argument("--strict", action="store_true", help="exit 1 when a mutant survives")
    args = parser.parse_args()
    mutants = [m for m in MUTANTS if not args.only or any(o in m.name for o in args.only)]
    if args.list:
        for mutant in mutants:
            print(f"{mutant.name}  [{mutant.path}; {' '.join(mutant.tests)}]")
        return 0
    started = time.monotonic()
    killed: list[str] = []
    survived: list[str] = []
    stale: list[str] = []
    with tempfile.TemporaryDirectory(prefix="laterbased-mutants-") as temp:
        scratch = Path(temp)
        scratch_copy(scratch)
        env = environment(scratch)
        probe = subprocess.run(
            [sys.executable, "-c", "import laterbased; print(laterbased.__file__)"],
            cwd=scratch, env=env, capture_output=True, text=True, check=True, timeout=60,
        ).stdout.strip()
        if not probe.startswith(str(scratch)):
            print(f"mutations: laterbased imports from {probe}, not the scratch copy", flush=True)
            print("mutants: 0 killed, 0 survived")
            return 0
        baseline_ok = True
        for tests in sorted({(m.tests, m.select) for m in mutants}, key=str):
            ok, last = run_tests(scratch, Mutant("baseline", "", "", "", *tests), env)
            if not ok:
                print(f"baseline FAILS without any mutant: {' '.join(tests[0])}: {last}")
                baseline_ok = False
        if not baseline_ok:
            print("mutations: the tests fail on the unmutated tree; no mutant can be judged")
            print("mutants: 0 killed, 0 survived")
            return 0
        for mutant in mutants:
            path = scratch / mutant.path
            original = path.read_text()
            if original.count(mutant.old) != 1:
                stale.append(mutant.name)
                print(f"STALE     {mutant.name}: its text occurs {original.count(mutant.old)} "
                      f"times in {mutant.path}", flush=True)
                continue
            path.write_text(original.replace(mutant.old, mutant.new))
            try:
                passed, last = run_tests(scratch, mutant, env)
            finally:
                path.write_text(original)
            (survived if passed else killed).append(mutant.name)
            verdict = "SURVIVED" if passed else "killed  "
            print(f"{verdict}  {mutant.name}  ({last})", flush=True)
    print(f"mutations: {time.monotonic() - started:.0f}s; stale: {len(stale)}")
    for name in survived:
        print(f"survivor: {name}")
    print(f"mutants: {len(killed)} killed, {len(survived)} survived")
    return 1 if args.strict and survived else 0


if __name__ == "__main__":
    sys.exit(main())
