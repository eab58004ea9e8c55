"""The package rules of DESIGN §3, checked through the real import graph in a fresh interpreter.

``handlers`` never loads dramatiq or pika and takes only ``queues.contracts`` and ``queues.errors``
from ``queues``; ``queues`` never loads dramatiq.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
ALLOWED_FROM_QUEUES = ("queues.contracts", "queues.errors")


def _modules(package: str) -> list[str]:
    base = ROOT / package
    names = []
    for path in sorted(base.rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        names.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return names


def _loaded_after_importing(modules: list[str]) -> set[str]:
    script = (
        "import importlib, json, sys\n"
        f"for name in {modules!r}:\n"
        "    importlib.import_module(name)\n"
        "print(json.dumps(sorted(sys.modules)))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    return set(json.loads(result.stdout))


def _is_allowed_queues_module(name: str) -> bool:
    return name == "queues" or any(
        name == allowed or name.startswith(allowed + ".") for allowed in ALLOWED_FROM_QUEUES
    )


def test_the_module_lists_are_not_empty() -> None:
    assert "handlers.bus" in _modules("handlers")
    assert "handlers.store.uow" in _modules("handlers")
    assert "queues.envelope" in _modules("queues")


def test_importing_every_handlers_module_loads_neither_dramatiq_nor_pika() -> None:
    loaded = _loaded_after_importing(_modules("handlers"))
    assert "handlers.bus" in loaded
    assert {"dramatiq", "pika"} & loaded == set()


def test_handlers_load_only_contracts_and_errors_from_queues() -> None:
    loaded = _loaded_after_importing(_modules("handlers"))
    from_queues = {name for name in loaded if name.split(".")[0] == "queues"}
    assert "queues.contracts" in from_queues
    assert {name for name in from_queues if not _is_allowed_queues_module(name)} == set()


@pytest.mark.parametrize("path", sorted((ROOT / "handlers").rglob("*.py")), ids=str)
def test_handlers_source_names_only_allowed_queues_modules(path: Path) -> None:
    # The import graph above misses imports inside functions; the source does not.
    tree = ast.parse(path.read_text(), filename=str(path))
    named: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            named.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            named.add(node.module)
    roots = {name.split(".")[0] for name in named}
    assert {"dramatiq", "pika", "workers", "dlq"} & roots == set()
    assert all(_is_allowed_queues_module(name) for name in named if name.split(".")[0] == "queues")


def test_importing_every_queues_module_does_not_load_dramatiq() -> None:
    loaded = _loaded_after_importing(_modules("queues"))
    assert "queues.envelope" in loaded
    assert "dramatiq" not in loaded
