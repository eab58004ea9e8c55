"""deploy/prometheus: the alert rules and scrape config are valid and name real metrics.

Three layers. Always: every metric an alert names exists (the fleet's from ``FleetMetrics``,
RabbitMQ's from the 3.10 plugin's ``/metrics/detailed`` families) and every alert is documented.
With PyYAML: the structure (groups, severities, annotations, scrape jobs). With ``promtool``
(Debian package ``prometheus``): PromQL syntax, the config, and alerts.test.yml's unit tests.
In CI a missing validator fails instead of skipping (`make test` installs both).
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from workers.observability.metrics import FleetMetrics

ROOT = Path(__file__).resolve().parents[2]
PROMETHEUS = ROOT / "deploy" / "prometheus"
ALERTS = PROMETHEUS / "alerts.yml"
PROMTOOL = shutil.which("promtool")
HAS_YAML = importlib.util.find_spec("yaml") is not None

# From rabbitmq_prometheus 3.10.8 (its core collector): families queue_coarse_metrics and
# queue_consumer_count of /metrics/detailed, labels vhost and queue.
RABBITMQ_DETAILED = {
    "rabbitmq_detailed_queue_messages_ready",
    "rabbitmq_detailed_queue_messages_unacked",
    "rabbitmq_detailed_queue_messages",
    "rabbitmq_detailed_queue_consumers",
}
REQUIRED_ALERTS = {
    "FleetDeadLetters",
    "FleetUnroutableMessages",
    "FleetMessageAgeOverSLA",
    "FleetOutboxLag",
    "FleetRetriesSpike",
    "FleetNoConsumers",
    "FleetEnvelopeAuthenticationFailed",
    "FleetEnvelopeFailures",
    "FleetKeyNearingRotation",
}


def need(available: bool, what: str) -> None:
    """Skip without ``what`` locally; in CI fail (`make test` installs both validators)."""
    if available:
        return
    if os.environ.get("CI"):
        pytest.fail(
            f"{what} is missing in CI: `make tools` installs promtool, `make install` PyYAML"
        )
    pytest.skip(f"{what} is not installed")


def fleet_series() -> set[str]:
    registry = CollectorRegistry()
    FleetMetrics(registry)
    return {name for family in registry.collect() for name in _series_of(family.name, family.type)}


def _series_of(name: str, kind: str) -> list[str]:
    if kind == "counter":
        return [f"{name}_total"]
    if kind == "histogram":
        return [f"{name}_bucket", f"{name}_count", f"{name}_sum"]
    return [name]


def test_alerts_name_only_metrics_that_exist() -> None:
    text = ALERTS.read_text()
    referenced = set(re.findall(r"\b((?:fleet|rabbitmq)_[a-z_]+)\b", text))
    known = fleet_series() | RABBITMQ_DETAILED
    assert referenced, "no metric found in the alert rules"
    assert referenced <= known, sorted(referenced - known)


def test_the_required_alerts_exist_and_are_documented() -> None:
    names = re.findall(r"^\s*- alert: (\w+)\s*$", ALERTS.read_text(), flags=re.MULTILINE)
    assert len(names) == len(set(names)), "duplicate alert names"
    assert set(names) >= REQUIRED_ALERTS, sorted(REQUIRED_ALERTS - set(names))
    doc = (ROOT / "docs" / "observability.md").read_text()
    assert [n for n in names if f"`{n}`" not in doc] == []


def load_yaml(path: Path) -> Any:
    import yaml

    return yaml.safe_load(path.read_text())


def test_rules_and_scrape_config_are_structurally_complete() -> None:
    need(HAS_YAML, "PyYAML")
    rules = load_yaml(ALERTS)
    [group] = rules["groups"]
    for rule in group["rules"]:
        assert set(rule) <= {"alert", "expr", "for", "labels", "annotations"}, rule["alert"]
        assert isinstance(rule["expr"], str) and rule["expr"].strip(), rule["alert"]
        assert rule["labels"]["severity"] in {"page", "ticket"}, rule["alert"]
        assert {"summary", "description"} <= set(rule["annotations"]), rule["alert"]
    config = load_yaml(PROMETHEUS / "prometheus.yml")
    assert config["rule_files"] == ["alerts.yml"]
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert {"fleet-workers", "rabbitmq", "rabbitmq-queues"} <= set(jobs)
    detailed = jobs["rabbitmq-queues"]
    assert detailed["metrics_path"] == "/metrics/detailed"
    assert set(detailed["params"]["family"]) == {"queue_coarse_metrics", "queue_consumer_count"}


@pytest.mark.parametrize(
    "args",
    [
        ["check", "config", "prometheus.yml"],
        ["check", "rules", "alerts.yml"],
        ["test", "rules", "alerts.test.yml"],
    ],
    ids=["config", "rules", "rule-unit-tests"],
)
def test_promtool_accepts_the_config_the_rules_and_their_unit_tests(args: list[str]) -> None:
    need(PROMTOOL is not None, "promtool (Debian package prometheus)")
    result = subprocess.run(
        [str(PROMTOOL), *args], cwd=PROMETHEUS, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr
