"""Node.js for tests (interop with Node's jose, schema checks of the deploy files): npm ci, once.

Node.js and npm are on every machine of this project; without them a test skips locally and
fails in CI (never a silent pass).
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

NPM_CI_TIMEOUT_S = 300


def require_tool(name: str, purpose: str) -> str:
    """The tool's path; skips the test without it — or fails it in CI."""
    path = shutil.which(name)
    if path is None:
        message = f"`{name}` is not on PATH: {purpose} need Node.js >= 20 and npm"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return path


def node_modules_match_lock(package_dir: Path) -> bool:
    """Whether every package of package-lock.json is installed at its locked version."""
    lock = json.loads((package_dir / "package-lock.json").read_text())
    for location, meta in lock["packages"].items():
        if not location:
            continue
        manifest = package_dir / location / "package.json"
        if not manifest.is_file():
            return False
        if json.loads(manifest.read_text()).get("version") != meta["version"]:
            return False
    return True


def npm_ci(npm: str, package_dir: Path) -> None:
    """``npm ci`` in ``package_dir`` unless node_modules already matches the lock.

    Under an exclusive lock: test processes running in parallel (pytest -n) would otherwise
    install at once, and ``npm ci`` deletes node_modules that another one is reading.
    """
    with (package_dir / ".npm-ci.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if node_modules_match_lock(package_dir):
            return
        result = subprocess.run(
            [npm, "ci", "--no-audit", "--no-fund"],
            cwd=package_dir,
            capture_output=True,
            text=True,
            timeout=NPM_CI_TIMEOUT_S,
        )
    if result.returncode != 0:
        pytest.fail(f"npm ci failed in {package_dir}:\n{result.stderr[-4000:]}")
