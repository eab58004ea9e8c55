"""Running the Node side of the interop tests (tests/interop/node): install, seal, open."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

NODE_DIR = Path(__file__).parent / "node"
NODE_TIMEOUT_S = 60
NPM_CI_TIMEOUT_S = 300


def require_tool(name: str) -> str:
    """The tool's path; skips the test without it — or fails it in CI, never a silent pass."""
    path = shutil.which(name)
    if path is None:
        message = f"`{name}` is not on PATH: the Node interop tests need Node.js >= 20 and npm"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return path


def node_modules_match_lock() -> bool:
    """Whether every package of package-lock.json is installed at its locked version."""
    lock = json.loads((NODE_DIR / "package-lock.json").read_text())
    for location, meta in lock["packages"].items():
        if not location:
            continue
        manifest = NODE_DIR / location / "package.json"
        if not manifest.is_file():
            return False
        if json.loads(manifest.read_text()).get("version") != meta["version"]:
            return False
    return True


def npm_ci(npm: str) -> None:
    result = subprocess.run(
        [npm, "ci", "--no-audit", "--no-fund"],
        cwd=NODE_DIR,
        capture_output=True,
        text=True,
        timeout=NPM_CI_TIMEOUT_S,
    )
    if result.returncode != 0:
        pytest.fail(f"npm ci failed in {NODE_DIR}:\n{result.stderr[-4000:]}")


def run_script(
    node: str, script: str, document: dict[str, Any]
) -> subprocess.CompletedProcess[str]:
    """Run one of the node/*.mjs scripts with ``document`` as JSON on stdin."""
    return subprocess.run(
        [node, script],
        input=json.dumps(document),
        cwd=NODE_DIR,
        capture_output=True,
        text=True,
        timeout=NODE_TIMEOUT_S,
    )


def run_json(node: str, script: str, document: dict[str, Any]) -> dict[str, Any]:
    """Run a script that must succeed; its stdout as JSON."""
    result = run_script(node, script, document)
    assert result.returncode == 0, f"node {script} failed: {result.stderr}"
    output: dict[str, Any] = json.loads(result.stdout)
    return output
