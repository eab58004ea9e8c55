"""Observability of a real fleet: /metrics agrees with the outcome events; `fleet health` judges.

Real worker processes (``fleet worker`` with its metrics fork process), real RabbitMQ and
PostgreSQL. The events file is the ground truth the metrics must add up to.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from collections import Counter
from pathlib import Path

import httpx
import pytest
import typer
from prometheus_client.parser import text_string_to_metric_families
from typer.testing import CliRunner

from tests.support.factories import sample
from tests.support.fleet import FleetUnderTest, fleet_under_test
from tests.support.jose import flip_ciphertext_bit
from workers.commands.health import health
from workers.local import free_port
from workers.observability.health import state_path

pytestmark = [pytest.mark.broker, pytest.mark.db, pytest.mark.slow]

COMPLETED = ("ok", "duplicate", "stale", "dead")


def scrape(port: int) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def sample_value(samples: dict, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def run_health(health_dir: Path, *extra: str) -> tuple[int, str]:
    app = typer.Typer()
    app.command()(health)
    result = CliRunner().invoke(app, ["--dir", str(health_dir), *extra])
    return result.exit_code, result.output.strip()


def wait_healthy(health_dir: Path, timeout_s: float = 30.0) -> str:
    deadline = time.monotonic() + timeout_s
    code, reason = run_health(health_dir)
    while code != 0 and time.monotonic() < deadline:
        time.sleep(0.2)
        code, reason = run_health(health_dir)
    assert code == 0, reason
    return reason


def test_metrics_add_up_to_the_events_and_health_follows_the_fleet(tmp_path: Path) -> None:
    # Given a running fleet with its metrics port and health directory
    port, health_dir = free_port(), tmp_path / "health"
    env = {
        "FLEET_HEALTH_DIR": str(health_dir),
        "FLEET_HEALTH_INTERVAL_S": "0.5",
        "FLEET_METRICS_BIND": "127.0.0.1",
        "FLEET_OUTBOX_LAG_INTERVAL_S": "0.5",
    }
    with fleet_under_test(tmp_path, env=env) as fleet:
        worker = fleet.start_workers(processes=2, threads=2, metrics_port=port, log_format="json")
        assert "ok: 3 worker processes" in wait_healthy(health_dir)

        # When good messages and a tampered one are processed
        account = uuid.uuid4()
        fleet.publish(
            [sample("billing.account.open", account_id=account), sample("billing.account.open")],
            "order-management",
        )
        fleet.publish([sample("crm.interaction.log")], "self-care")
        tampered = fleet.seal(sample("crm.interaction.log"), "self-care")
        fleet.publish_raw(
            flip_ciphertext_bit(tampered.body), "crm.interaction.log", str(tampered.message_id)
        )
        fleet.wait_settled()

        # Then every counter and histogram agrees with the events
        events = [e for e in fleet.events() if e["event"] in COMPLETED]
        assert Counter(e["event"] for e in events) == {"ok": 3, "dead": 1}
        samples = wait_for_metrics(port, expected=len(events))
        for (queue, kind, outcome), count in Counter(
            (e["queue"], e["type"], e["event"]) for e in events
        ).items():
            labels = {"queue": queue, "type": kind, "outcome": outcome}
            assert sample_value(samples, "fleet_messages_total", **labels) == count
            assert sample_value(samples, "fleet_message_age_seconds_count", **labels) == count
            assert sample_value(samples, "fleet_handler_duration_seconds_count", **labels) == count
        assert (
            sample_value(
                samples,
                "fleet_dead_letters_total",
                queue="crm",
                type="crm.interaction.log",
                reason="authentication_failed",
            )
            == 1
        )
        assert (
            sample_value(
                samples,
                "fleet_envelope_failures_total",
                queue="crm",
                reason="authentication_failed",
            )
            == 1
        )
        opened = sum(v for (name, _), v in samples.items() if name == "fleet_envelope_opened_total")
        assert opened == 3
        confirmed = sample_value(
            samples, "fleet_publisher_messages_total", role="worker", result="confirmed"
        )
        assert confirmed == 1  # the dead letter
        assert ("fleet_outbox_lag_seconds", frozenset()) in samples

        # And the worker's log lines are JSON, the dead letter's with its context
        dead_lines = [
            line
            for line in json_log_lines(fleet)
            if line.get("event") == "dead" and line.get("logger") == "fleet.events"
        ]
        assert len(dead_lines) == 1
        assert dead_lines[0]["message_id"] == str(tampered.message_id)
        assert dead_lines[0]["queue"] == "crm" and dead_lines[0]["level"] == "WARNING"

        # And health: a stuck thread (a state file of a live process) makes it unhealthy
        stuck = state_path(health_dir, os.getpid())
        now = time.time()
        stuck.write_text(
            json.dumps(
                {
                    "pid": os.getpid(),
                    "role": "worker",
                    "written_at": now,
                    "started_at": now - 3600,
                    "consumers": {"billing": True},
                    "database": {"ok": True, "last_ok_at": now, "round_trip_s": 0.001},
                    "threads": {"Thread-9": {"busy_since": now - 1000, "message_id": "m-1"}},
                }
            )
        )
        code, reason = run_health(health_dir, "--max-busy-s", "300")
        assert code == 1 and "thread Thread-9 stuck" in reason, reason
        stuck.unlink()
        wait_healthy(health_dir)

        # And once the fleet has stopped, health says so
        assert fleet.local.stop(worker) == 0
        code, reason = run_health(health_dir)
        assert code == 1 and "no live worker process" in reason, reason


def wait_for_metrics(port: int, expected: int, timeout_s: float = 10.0) -> dict:
    """The scrape once the completed-message counters add up to ``expected``."""
    deadline = time.monotonic() + timeout_s
    while True:
        samples = scrape(port)
        total = sum(
            v
            for (name, labels), v in samples.items()
            if name == "fleet_messages_total" and dict(labels)["outcome"] in COMPLETED
        )
        if total >= expected or time.monotonic() > deadline:
            return samples
        time.sleep(0.2)


def json_log_lines(fleet: FleetUnderTest) -> list[dict]:
    lines = (fleet.local.log_dir / "worker.log").read_text().splitlines()
    parsed = []
    for line in lines:
        if line.strip():
            parsed.append(json.loads(line))  # every line is one JSON object
    return parsed
