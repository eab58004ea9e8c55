"""The ``fleet`` command starts fast: declaring it loads no heavy library; each command loads what
it needs when it runs (issue 12). Checked through the real import graph in a fresh interpreter,
never with a clock.
"""

from __future__ import annotations

import inspect
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from dlq.audit import ACTIONS
from workers.billing import DEFAULT_BATCH_SIZE
from workers.commands import billing as billing_command
from workers.commands import dlq as dlq_command

ROOT = Path(__file__).resolve().parents[2]
HEAVY = (
    "alembic",
    "cryptography",
    "dramatiq",
    "httpx",
    "joserfc",
    "pika",
    "prometheus_client",
    "psycopg",
    "pydantic",
    "pydantic_settings",
    "sentry_sdk",
    "sqlalchemy",
    "tenacity",
)
# Typer itself coerces a subcommand's options with pydantic.
TYPER_OWN = {"pydantic"}
# The settings, the engine and its driver: what listing the archive cannot do without.
DLQ_LS_NEEDS = {"pydantic", "pydantic_settings", "psycopg", "sqlalchemy"}
# No server behind it: the command gets as far as connecting, then fails with a one-line error.
NO_DATABASE = "postgresql+psycopg://postgres@/test?host=/nonexistent-fleet-socket-dir"


def _run_fleet(args: list[str], tmp_path: Path) -> tuple[int, str, set[str]]:
    """Exit code, output and the heavy top-level packages loaded by ``fleet ARGS``."""
    report = tmp_path / "loaded.json"
    script = (
        "import json, sys\n"
        "from workers.cli import app\n"
        "try:\n"
        f"    app({args!r}, prog_name='fleet')\n"
        "except SystemExit as exc:\n"
        "    code = exc.code or 0\n"
        f"heavy = sorted(m for m in {HEAVY!r} if m in sys.modules)\n"
        f"open({str(report)!r}, 'w').write(json.dumps({{'code': code, 'heavy': heavy}}))\n"
    )
    env = {**os.environ, "FLEET_DATABASE_URL": NO_DATABASE, "COLUMNS": "100"}
    result = subprocess.run(
        [sys.executable, "-c", script],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    loaded = json.loads(report.read_text())
    return loaded["code"], result.stdout + result.stderr, set(loaded["heavy"])


def test_fleet_help_loads_no_heavy_library(tmp_path: Path) -> None:
    code, output, heavy = _run_fleet(["--help"], tmp_path)
    assert code == 0
    assert "dlq" in output and "worker" in output
    assert heavy == set()


@pytest.mark.parametrize(
    "args",
    [["dlq", "--help"], ["dlq", "ls", "--help"], ["worker", "--help"], ["billrun", "--help"]],
    ids=" ".join,
)
def test_a_commands_help_loads_nothing_beyond_typers_own(args: list[str], tmp_path: Path) -> None:
    code, output, heavy = _run_fleet(args, tmp_path)
    assert code == 0
    assert "Usage: fleet" in output
    assert heavy <= TYPER_OWN


def test_dlq_ls_loads_only_the_settings_and_the_database_driver(tmp_path: Path) -> None:
    code, output, heavy = _run_fleet(["dlq", "ls"], tmp_path)
    # It got as far as connecting (so everything the listing imports was imported).
    assert code == 2
    assert "database unreachable" in output
    assert heavy == DLQ_LS_NEEDS


def test_the_clis_spelled_out_defaults_match_the_library() -> None:
    # Written out in the command modules so that declaring them loads no SQLAlchemy.
    batch_size = inspect.signature(billing_command.billrun).parameters["batch_size"].default
    assert batch_size.default == DEFAULT_BATCH_SIZE
    assert dlq_command.AUDIT_ACTIONS == ACTIONS
