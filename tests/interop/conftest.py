"""Fixtures of the interop suites."""

from __future__ import annotations

import pytest

from tests.interop.nodejs import NODE_DIR
from tests.support.node import npm_ci, require_tool

PURPOSE = "the Node interop tests"


@pytest.fixture(scope="session")
def node() -> str:
    """The node executable, with tests/interop/node's locked packages installed (once)."""
    node = require_tool("node", PURPOSE)
    npm_ci(require_tool("npm", PURPOSE), NODE_DIR)
    return node
