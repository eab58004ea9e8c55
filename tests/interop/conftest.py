"""Fixtures of the interop suites."""

from __future__ import annotations

import pytest

from tests.interop.nodejs import node_modules_match_lock, npm_ci, require_tool


@pytest.fixture(scope="session")
def node() -> str:
    """The node executable, with tests/interop/node's locked packages installed (once)."""
    node = require_tool("node")
    npm = require_tool("npm")
    if not node_modules_match_lock():
        npm_ci(npm)
    return node
