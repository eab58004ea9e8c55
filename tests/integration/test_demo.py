"""`fleet demo` end to end: a small workload runs green and its JSON summary adds up."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from tests.support.db import DATABASE_URL
from tests.support.rabbit import rabbitmqctl

pytestmark = [pytest.mark.slow, pytest.mark.broker, pytest.mark.db]

REPO = Path(__file__).resolve().parents[2]
HANDLED_TYPES = {
    "crm.customer.upsert",
    "crm.interaction.log",
    "billing.account.open",
    "billing.charge.post",
    "provisioning.service.activate",
    "provisioning.service.suspend",
    "provisioning.service.resume",
    "provisioning.service.terminate",
}


def run_demo(*options: str, timeout_s: float = 150) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "workers", "demo", *options],
        cwd=REPO,
        env={**os.environ, "COLUMNS": "120"},
        capture_output=True,
        text=True,
        timeout=timeout_s,
    )


def schema_exists(schema: str) -> bool:
    engine = create_engine(DATABASE_URL)
    try:
        with engine.connect() as connection:
            return bool(
                connection.execute(
                    text("SELECT count(*) FROM information_schema.schemata WHERE schema_name = :s"),
                    {"s": schema},
                ).scalar_one()
            )
    finally:
        engine.dispose()


def test_demo_runs_green_and_its_summary_matches_the_workload() -> None:
    # Given a small workload; When the demo runs it end to end
    result = run_demo("--messages", "300", "--json", "--seed", "7", "--timeout-s", "100")

    # Then it exits 0 with the ledger proven, the JSON alone on stdout
    assert result.returncode == 0, result.stderr[-4000:]
    assert "ledger: OK" in result.stderr
    summary = json.loads(result.stdout)
    assert summary["ok"] is True and summary["ledger"] == "OK"
    assert [c["check"] for c in summary["checks"] if not c["ok"]] == []

    # Every planted bad message died with its own reason, and nothing else died
    planned = summary["planned"]
    assert summary["dead_by_reason"] == {
        "authentication_failed": 1,
        "illegal_transition": 1,
        "invalid_payload": 1,
        "not_authorized": 1,
    }
    assert summary["dead_by_reason"] == planned["dead_by_reason"]

    # The planted scenarios showed: stale on both queues of the fan-out, NotYet retried,
    # re-sends absorbed by the inbox and by the business key
    assert summary["stale"] >= planned["stale_at_least"] == 2
    assert summary["retried_by_reason"].get("not_yet", 0) >= planned["retried_at_least"] == 2
    assert sum(summary["retried_by_tier"].values()) == summary["retried"]
    resent = planned["resent_same_id"] + planned["resent_same_business_key"]
    assert summary["duplicates"] >= resent >= 2

    # Every handled type was processed, nothing without a handler was sent
    processed = summary["processed_by_type"]
    assert {t for t, n in processed.items() if n > 0} == HANDLED_TYPES
    assert summary["published"]["follow_ups"] > 0
    outcomes = summary["outcomes"]
    settled = outcomes["ok"] + outcomes["duplicate"] + outcomes["stale"] + outcomes["dead"]
    assert settled == summary["published"]["deliveries"]
    assert summary["suspects"] == 0 and summary["worker_exit_code"] == 0
    assert summary["age_s"]["p50"] is not None and summary["throughput_per_s"] > 0

    # And it cleaned up after itself
    vhost, schema = summary["run"]["vhost"], summary["run"]["schema"]
    assert vhost not in rabbitmqctl("list_vhosts").split()
    assert not schema_exists(schema)
