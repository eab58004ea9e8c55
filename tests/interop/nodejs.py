"""Running the Node side of the interop tests (tests/interop/node): install, seal, open."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

NODE_DIR = Path(__file__).parent / "node"
NODE_TIMEOUT_S = 60


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
