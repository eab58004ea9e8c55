"""The package rules of DESIGN §3: four packages, one direction, ``queues ← handlers ← dlq ←
workers``; only ``workers`` reads the settings (the environment).

Checked twice: through the real import graph in a fresh interpreter, and in the source, which
also sees the imports inside functions (the graph misses them until the function runs).
``handlers`` never loads dramatiq or pika and takes only ``queues.contracts`` and
``queues.errors`` from ``queues``; ``queues`` never loads dramatiq.
"""

from __future__ import annotations

import ast
import functools
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("queues", "handlers", "dlq", "workers")
# Which of our top-level packages each may name (itself included): inward only.
MAY_NAME: dict[str, frozenset[str]] = {
    "queues": frozenset({"queues"}),
    "handlers": frozenset({"handlers", "queues"}),
    "dlq": frozenset({"dlq", "handlers", "queues"}),
    "workers": frozenset({"workers", "dlq", "handlers", "queues"}),
}
# Libraries a package never loads.
NEVER: dict[str, frozenset[str]] = {
    "queues": frozenset({"dramatiq"}),
    "handlers": frozenset({"dramatiq", "pika"}),
    "dlq": frozenset(),
    "workers": frozenset(),
}
ALLOWED_FROM_QUEUES = ("queues.contracts", "queues.errors")
# A module each package surely loads: the graph checks below would pass vacuously without it.
SURELY_LOADED = {
    "queues": "queues.envelope",
    "handlers": "handlers.bus",
    "dlq": "dlq.archiver",
    "workers": "workers.processes",
}
# Every top-level folder of this repository that holds Python: tests, bench and migrations are
# ours too, and no package may name them.
OURS = frozenset(
    path.relative_to(ROOT).parts[0]
    for path in ROOT.glob("*/**/*.py")
    if not path.relative_to(ROOT).parts[0].startswith(".")
)
ENVIRONMENT = frozenset({"environ", "environb", "getenv", "getenvb"})


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _sources(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


def _modules(package: str) -> list[str]:
    # ``python -m workers`` runs the CLI when imported.
    return [_module_name(p) for p in _sources(package) if p.stem != "__main__"]


@functools.cache
def _loaded_after_importing(package: str) -> frozenset[str]:
    script = (
        "import importlib, json, sys\n"
        f"for name in {_modules(package)!r}:\n"
        "    importlib.import_module(name)\n"
        "print(json.dumps(sorted(sys.modules)))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    return frozenset(json.loads(result.stdout))


def _named(path: Path) -> set[str]:
    """Every module the source names in an import, at any depth (functions, TYPE_CHECKING)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = _module_name(path).split(".")
    if path.stem != "__init__":
        package = package[:-1]
    named: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            named.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level == 0:
                base = node.module or ""
            else:
                base = ".".join([*package[: len(package) - node.level + 1], node.module or ""])
            named.add(base.strip("."))
    return named


def _reads_the_environment(path: Path) -> list[int]:
    """The lines that touch ``os.environ`` / ``os.getenv`` (or import them from ``os``)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    return [
        node.lineno
        for node in ast.walk(tree)
        if (isinstance(node, ast.Attribute) and node.attr in ENVIRONMENT)
        or (
            isinstance(node, ast.ImportFrom)
            and node.module == "os"
            and any(alias.name in ENVIRONMENT for alias in node.names)
        )
    ]


def _is_allowed_queues_module(name: str) -> bool:
    return name == "queues" or any(
        name == allowed or name.startswith(allowed + ".") for allowed in ALLOWED_FROM_QUEUES
    )


def _root(name: str) -> str:
    return name.split(".")[0]


def test_the_rules_cover_every_package_and_the_lists_are_not_empty() -> None:
    assert set(MAY_NAME) == set(NEVER) == set(SURELY_LOADED) == set(PACKAGES)
    assert set(PACKAGES) | {"tests", "bench", "migrations"} <= OURS
    assert "handlers.bus" in _modules("handlers")
    assert "handlers.store.uow" in _modules("handlers")
    assert "queues.envelope" in _modules("queues")
    assert "dlq.archiver" in _modules("dlq")
    assert "workers.processes" in _modules("workers")


@pytest.mark.parametrize("package", PACKAGES)
def test_importing_every_module_of_a_package_loads_only_what_it_may(package: str) -> None:
    loaded = _loaded_after_importing(package)
    assert SURELY_LOADED[package] in loaded
    ours = {name for name in loaded if _root(name) in OURS}
    assert {name for name in ours if _root(name) not in MAY_NAME[package]} == set()
    assert {name for name in loaded if _root(name) in NEVER[package]} == set()


def test_importing_every_handlers_module_loads_neither_dramatiq_nor_pika() -> None:
    loaded = _loaded_after_importing("handlers")
    assert "handlers.bus" in loaded
    assert {"dramatiq", "pika"} & loaded == set()


def test_handlers_load_only_contracts_and_errors_from_queues() -> None:
    loaded = _loaded_after_importing("handlers")
    from_queues = {name for name in loaded if _root(name) == "queues"}
    assert "queues.contracts" in from_queues
    assert {name for name in from_queues if not _is_allowed_queues_module(name)} == set()


def test_importing_every_queues_module_does_not_load_dramatiq() -> None:
    loaded = _loaded_after_importing("queues")
    assert "queues.envelope" in loaded
    assert "dramatiq" not in loaded


@pytest.mark.parametrize(
    ("package", "path"),
    [(package, path) for package in PACKAGES for path in _sources(package)],
    ids=lambda value: str(Path(value).relative_to(ROOT)) if isinstance(value, Path) else None,
)
def test_the_source_names_only_the_packages_it_may(package: str, path: Path) -> None:
    named = _named(path)
    roots = {_root(name) for name in named}
    assert (roots & OURS) - MAY_NAME[package] == set()
    assert roots & NEVER[package] == set()
    if package == "handlers":
        assert {"dramatiq", "pika", "workers", "dlq"} & roots == set()
        assert all(_is_allowed_queues_module(name) for name in named if _root(name) == "queues")


@pytest.mark.parametrize(
    "path",
    [path for package in PACKAGES if package != "workers" for path in _sources(package)],
    ids=lambda path: str(path.relative_to(ROOT)),
)
def test_only_workers_reads_the_environment(path: Path) -> None:
    # Settings in one place (workers.settings): a library takes its values as arguments.
    assert _reads_the_environment(path) == []
