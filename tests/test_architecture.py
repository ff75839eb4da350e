"""The package's parts and the arrows allowed between them (docs/architecture.md), checked
on every import statement in laterbased/, function-level imports included."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "laterbased"

# The root holds the entry points and a few shared leaves, nothing else.
ROOT_MODULES = {
    "__init__", "__main__", "cli", "daemon", "errors", "logs", "proc", "units",
}
WORKERS = {"standby", "monitor", "backup", "offsite", "archive"}
# Shared leaves every part may import (the root's errors, units, logs, process handling,
# configuration and version). Among themselves, ALLOWED below decides.
LEAVES = {"errors", "units", "logs", "proc", "config", "__init__"}
# part -> the parts it may import (besides itself and the shared leaves).
ALLOWED: dict[str, set[str]] = {
    "errors": set(),
    "units": set(),
    "logs": set(),
    "proc": {"errors"},
    "config": {"errors", "units", "schedule"},
    "schedule": set(),
    "core": set(),
    "pg": set(),
    "records": {"core", "pg"},
    # Workers meet only in state (core) and on disk (records); never in each other.
    "standby": {"core", "pg", "records"},
    "monitor": {"core", "pg", "records", "health"},  # health's pure verdicts, to log changes
    "backup": {"core", "pg", "records", "schedule"},
    "offsite": {"core", "records"},
    "archive": {"core", "pg", "records", "schedule"},
    # Output reads state (and pure schedule facts); it never calls a worker.
    "health": {"core", "schedule"},
    "web": {"core", "health"},
    # Operator commands may use any part; nothing but the CLI imports them.
    "ops": {
        "core", "pg", "records", "schedule", "standby", "backup", "offsite", "archive", "daemon",
    },
    "daemon": {"core", "standby", "monitor", "backup", "offsite", "archive", "health", "web"},
    "cli": {"ops", "daemon"},
    "__main__": {"cli"},
    "__init__": set(),
}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules() -> dict[str, Path]:
    return {module_name(path): path for path in PACKAGE.rglob("*.py")}


def imports_of(name: str, path: Path, known: set[str]) -> set[str]:
    """Every laterbased module ``name`` imports, wherever the import statement stands."""
    found: set[str] = set()
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text("utf-8"))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join(anchor + ([node.module] if node.module else []))
            targets = [f"{base}.{alias.name}" for alias in node.names] + [base]
        else:
            continue
        for target in targets:
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != name and target.startswith("laterbased"):
                found.add(target)
    return found


def part_of(module: str) -> str:
    rest = module.split(".")[1:] or ["__init__"]
    return rest[0]


def graph() -> dict[str, set[str]]:
    found = modules()
    known = set(found)
    return {name: imports_of(name, path, known) for name, path in found.items()}


def test_no_import_circle_between_modules_even_through_function_level_imports() -> None:
    edges = graph()
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    circles: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in edges[node]:
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                circles.append(sorted(component))

    for node in edges:
        if node not in index:
            visit(node)
    assert circles == [], f"import circles: {circles}"


def test_parts_import_only_what_the_architecture_allows() -> None:
    wrong = []
    for module, targets in graph().items():
        source = part_of(module)
        assert source in ALLOWED, f"{module}: part {source!r} is not in docs/architecture.md"
        for target in targets:
            destination = part_of(target)
            if destination == source or (destination in LEAVES and source not in LEAVES):
                continue
            if destination not in ALLOWED[source]:
                wrong.append(f"{module} -> {target}")
    assert wrong == [], "arrows the architecture does not allow:\n" + "\n".join(sorted(wrong))


def test_workers_never_import_each_other() -> None:
    crossing = [
        f"{module} -> {target}"
        for module, targets in graph().items()
        for target in targets
        if part_of(module) in WORKERS
        and part_of(target) in WORKERS
        and part_of(target) != part_of(module)
    ]
    assert crossing == []


def test_the_package_root_holds_only_entry_points_and_shared_leaves() -> None:
    root = {path.stem for path in PACKAGE.glob("*.py")}
    assert root <= ROOT_MODULES, f"new module at the root: {sorted(root - ROOT_MODULES)}"
    assert len(root) <= 10


TESTS = Path(__file__).resolve().parent
# Test folders beside the package's parts: the shared helpers, and the deployment files that
# are no Python part (Docker, systemd, the install script).
TEST_FOLDERS_BESIDE_PARTS = {"support", "deploy"}


def test_tests_mirror_the_package_and_share_helpers_only_through_support() -> None:
    parts = {path.name for path in PACKAGE.iterdir() if (path / "__init__.py").exists()}
    folders = {
        path.name
        for path in TESTS.iterdir()
        if path.is_dir() and not path.name.startswith((".", "__"))
    }
    strays = folders - parts - TEST_FOLDERS_BESIDE_PARTS
    assert not strays, f"test folders that are no part of the package: {sorted(strays)}"
    test_files = sorted(TESTS.rglob("test_*.py"))
    assert not [path for path in test_files if path.parent.name == "support"]
    # Without __init__.py, pytest imports each test module by its base name: one per name.
    assert not list(TESTS.rglob("__init__.py"))
    stems = [path.stem for path in test_files]
    assert sorted({s for s in stems if stems.count(s) > 1}) == []
    # A helper two test files need lives in tests/support/, never in one of them.
    borrowed = []
    for path in [*test_files, *(TESTS / "support").glob("*.py")]:
        for node in ast.walk(ast.parse(path.read_text("utf-8"))):
            if isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            elif isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            else:
                continue
            borrowed += [f"{path.relative_to(TESTS)}: {n}" for n in names if n.startswith("test_")]
    assert borrowed == [], "test modules importing test modules:\n" + "\n".join(borrowed)
