"""The deployment files under test: docker-compose.yml, deploy/k8s, Grafana provisioning.

YAML is read with PyYAML when it is installed, otherwise by js-yaml through tests/deploy/node,
which also checks every file against its published schema, offline: the compose-spec JSON Schema,
and the Kubernetes and KEDA OpenAPI schemas (kubernetes-models). Node.js is on every machine
of this project (the interop tests need it too); without it the tests skip here and fail in CI.
"""

from __future__ import annotations

import functools
import importlib
import json
import shlex
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.support.node import npm_ci, require_tool

ROOT = Path(__file__).resolve().parents[2]
NODE_DIR = ROOT / "tests" / "deploy" / "node"
COMPOSE_FILE = ROOT / "docker-compose.yml"
K8S_DIR = ROOT / "deploy" / "k8s"
GRAFANA_DIR = ROOT / "deploy" / "grafana"
PURPOSE = "the deployment schema checks"
NODE_TIMEOUT_S = 120


def deploy_files() -> list[Path]:
    """Every YAML file this project deploys with (ours; deploy/prometheus has its own tests)."""
    return [
        COMPOSE_FILE,
        *sorted(K8S_DIR.glob("*.yaml")),
        *sorted(GRAFANA_DIR.glob("provisioning/*/*.yml")),
    ]


@dataclass(frozen=True)
class Checked:
    """One file: its YAML documents (js-yaml) and what its schema said about them."""

    documents: list[Any]
    errors: list[str]


@functools.cache
def schema_report() -> dict[Path, Checked]:
    """Parse and schema-check every deployment file in one Node run (cached per test session)."""
    node = require_tool("node", PURPOSE)
    npm_ci(require_tool("npm", PURPOSE), NODE_DIR)
    files = deploy_files()
    result = subprocess.run(
        [node, "validate.mjs", *map(str, files)],
        cwd=NODE_DIR,
        capture_output=True,
        text=True,
        timeout=NODE_TIMEOUT_S,
    )
    if result.returncode != 0:
        pytest.fail(f"node validate.mjs {shlex.join(map(str, files))} failed:\n{result.stderr}")
    report = json.loads(result.stdout)
    return {
        Path(name): Checked(entry["documents"], entry["errors"]) for name, entry in report.items()
    }


def load_documents(path: Path) -> list[Any]:
    """The YAML documents of ``path``, with PyYAML if it is installed, else with js-yaml."""
    try:
        yaml: Any = importlib.import_module("yaml")
    except ImportError:
        return schema_report()[path].documents
    with path.open() as handle:
        return [d for d in yaml.safe_load_all(handle) if d is not None]


def load_compose() -> dict[str, Any]:
    [document] = load_documents(COMPOSE_FILE)
    assert isinstance(document, dict)
    return document


def k8s_objects() -> Iterator[tuple[Path, dict[str, Any]]]:
    """Every Kubernetes object in deploy/k8s (the kustomization itself excluded)."""
    for path in sorted(K8S_DIR.glob("*.yaml")):
        for document in load_documents(path):
            if document.get("kind") != "Kustomization":
                yield path, document


def subcommand(argv: list[str]) -> tuple[str, ...]:
    """``["worker", "--queue", "crm"]`` ▶ ``("worker",)``; ``["dlq", "archive"]`` ▶ both words."""
    words = []
    for token in argv:
        if token.startswith("-"):
            break
        words.append(token)
    return tuple(words)
