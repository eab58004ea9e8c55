"""Metrics follow the outcome events: a real lifecycle with fakes, a fresh registry per test."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from queues.envelope import OpenedMessage, seal
from queues.errors import IllegalTransition, NotYet
from queues.keys import KeyRegistry
from queues.publisher import PublisherStats
from tests.support.factories import sample
from tests.support.jose import flip_ciphertext_bit, header_for, seal_raw
from tests.support.lifecycle import delivery_of, delivery_of_sealed, drive
from workers.observability.context import current_message
from workers.observability.metrics import (
    MULTIPROC_ENV,
    FleetMetrics,
    exposition_registry,
)

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def registry() -> CollectorRegistry:
    return CollectorRegistry()


def value(registry: CollectorRegistry, name: str, **labels: str) -> float:
    return registry.get_sample_value(name, labels) or 0.0


def steered_apply(queue: str, opened: OpenedMessage) -> str:
    """ok once per id, then duplicate; NotYet for charges; terminate is impossible."""
    message_type = opened.header.message_type
    if message_type == "billing.charge.post":
        raise NotYet("account not open yet")
    if message_type == "provisioning.service.terminate":
        raise IllegalTransition("service already terminated")
    message_id = opened.header.message_id
    if message_id in steered_apply.seen:  # type: ignore[attr-defined]
        return "duplicate"
    steered_apply.seen.add(message_id)  # type: ignore[attr-defined]
    return "ok"


steered_apply.seen = set()  # type: ignore[attr-defined]


def test_metrics_follow_a_sequence_of_outcome_events(
    keys: KeyRegistry, registry: CollectorRegistry
) -> None:
    # Given a lifecycle whose events feed fresh metrics
    metrics = FleetMetrics(registry)
    driven = drive(keys, steered_apply, max_attempts=3)
    driven.events.subscribe(
        lambda event: metrics.record(
            event, current_message(), known_kid=lambda k: bool(keys.get(k))
        )
    )
    order_key = keys.sealing_key("order-management")
    fleet_key = keys.sealing_key("fleet")
    opened_account = seal(sample("billing.account.open"), order_key)

    # When: ok, duplicate, retried, two kinds of dead, an envelope retry, suspect, requeued
    driven.process(delivery_of_sealed(opened_account, "billing"))
    driven.process(delivery_of_sealed(opened_account, "billing"))
    driven.process(delivery_of_sealed(seal(sample("billing.charge.post"), fleet_key), "billing"))
    tampered = seal(sample("billing.account.open"), order_key)
    driven.process(
        delivery_of(
            flip_ciphertext_bit(tampered.body),
            "billing",
            "billing.account.open",
            str(tampered.message_id),
        )
    )
    terminate = seal(sample("provisioning.service.terminate"), order_key)
    driven.process(delivery_of_sealed(terminate, "provisioning"))
    ghost = seal_raw(
        header_for(order_key, "billing.account.open", kid="ghost.kid.000"),
        sample("billing.account.open").model_dump_json().encode(),
        order_key,
    )
    driven.process(delivery_of(ghost, "billing", "billing.account.open"))
    redelivered = delivery_of_sealed(seal(sample("billing.account.open"), order_key), "billing")
    redelivered.redelivered, redelivered.headers = True, {"x-delivery-count": 1}
    driven.process(redelivered)
    driven.publisher.nack_next = 1
    driven.process(delivery_of_sealed(seal(sample("billing.charge.post"), fleet_key), "billing"))

    # Then each outcome is counted once, by queue / type / outcome
    def messages(queue: str, kind: str, outcome: str) -> float:
        return value(registry, "fleet_messages_total", queue=queue, type=kind, outcome=outcome)

    assert messages("billing", "billing.account.open", "ok") == 1
    assert messages("billing", "billing.account.open", "duplicate") == 1
    assert messages("billing", "billing.charge.post", "retried") == 1
    assert messages("billing", "billing.account.open", "dead") == 1
    assert messages("provisioning", "provisioning.service.terminate", "dead") == 1
    assert messages("billing", "billing.account.open", "retried") == 1
    assert messages("billing", "billing.account.open", "suspect") == 1
    assert messages("billing", "billing.charge.post", "requeued") == 1
    # retries by tier, dead letters and envelope failures by reason
    assert value(registry, "fleet_retries_total", queue="billing", tier="5s", reason="not_yet") == 1
    assert (
        value(registry, "fleet_retries_total", queue="billing", tier="5s", reason="unknown_kid")
        == 1
    )
    dead = "fleet_dead_letters_total"
    assert (
        value(
            registry,
            dead,
            queue="billing",
            type="billing.account.open",
            reason="authentication_failed",
        )
        == 1
    )
    assert (
        value(
            registry,
            dead,
            queue="provisioning",
            type="provisioning.service.terminate",
            reason="illegal_transition",
        )
        == 1
    )
    failures = "fleet_envelope_failures_total"
    assert value(registry, failures, queue="billing", reason="authentication_failed") == 1
    assert value(registry, failures, queue="billing", reason="unknown_kid") == 1
    assert value(registry, failures, queue="provisioning", reason="illegal_transition") == 0
    # message age at completion: ok, duplicate, dead — never retried or suspect
    age = "fleet_message_age_seconds_count"
    assert value(registry, age, queue="billing", type="billing.account.open", outcome="ok") == 1
    assert (
        value(registry, age, queue="billing", type="billing.account.open", outcome="duplicate") == 1
    )
    assert value(registry, age, queue="billing", type="billing.account.open", outcome="dead") == 1
    assert value(registry, age, queue="billing", type="billing.charge.post", outcome="retried") == 0
    # handler duration for every outcome
    duration = "fleet_handler_duration_seconds_count"
    assert (
        value(registry, duration, queue="billing", type="billing.charge.post", outcome="requeued")
        == 1
    )
    # envelopes opened per kid: only those that decrypted (not tampered, not the ghost kid)
    opened = "fleet_envelope_opened_total"
    assert value(registry, opened, kid=order_key.kid, producer="order-management") == 3
    assert value(registry, opened, kid=fleet_key.kid, producer="fleet") == 1
    assert value(registry, opened, kid="ghost.kid.000", producer="order-management") == 0


def test_a_hostile_amqp_type_never_becomes_a_label(
    keys: KeyRegistry, registry: CollectorRegistry
) -> None:
    metrics = FleetMetrics(registry)
    driven = drive(keys, steered_apply)
    driven.events.subscribe(lambda event: metrics.record(event, current_message()))
    hostile = "x" + uuid.uuid4().hex
    driven.process(delivery_of(b"not a jwe at all", "crm", hostile, str(uuid.uuid4())))
    assert value(registry, "fleet_messages_total", queue="crm", type="unknown", outcome="dead") == 1
    assert hostile not in generate_latest(registry).decode()


def test_publisher_and_seal_counters_add_only_what_grew(registry: CollectorRegistry) -> None:
    metrics = FleetMetrics(registry)
    stats = PublisherStats(published=3, confirmed=2, nacked=1)
    metrics.mirror_publisher("relay", stats)
    stats.published, stats.confirmed, stats.reconnects, stats.blocked = 5, 4, 1, 2
    metrics.mirror_publisher("relay", stats)
    metrics.mirror_sealed({"k1": 2})
    metrics.mirror_sealed({"k1": 7})
    pub = "fleet_publisher_messages_total"
    assert value(registry, pub, role="relay", result="published") == 5
    assert value(registry, pub, role="relay", result="confirmed") == 4
    assert value(registry, pub, role="relay", result="nacked") == 1
    assert value(registry, "fleet_publisher_reconnects_total", role="relay") == 1
    assert value(registry, "fleet_publisher_blocked_total", role="relay") == 2
    assert value(registry, "fleet_envelope_sealed_total", kid="k1") == 7


MULTIPROCESS_SCRIPT = textwrap.dedent(
    """
    import os, sys
    from pathlib import Path
    import prometheus_client  # imported before the variable is set, as in `fleet worker`
    from workers.observability.metrics import fleet_metrics, prepare_multiprocess_dir

    prepare_multiprocess_dir(Path(sys.argv[1]))
    children = []
    for n in range(2):
        pid = os.fork()
        if pid == 0:
            metrics = fleet_metrics()
            metrics.record({"event": "ok", "queue": "billing", "type": "billing.account.open",
                            "age_s": 1.5, "duration_s": 0.02})
            if n == 1:
                metrics.outbox_lag.set(42.0)  # then dies without a clean stop
            os._exit(0)
        children.append(pid)
    for pid in children:
        os.waitpid(pid, 0)
    """
)


def test_processes_add_up_in_the_multiprocess_directory_and_dead_gauges_go(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a directory with samples of an earlier run
    directory = tmp_path / "metrics"
    directory.mkdir()
    (directory / "counter_999999.db").write_bytes(b"left over")
    # When two forked processes record an outcome each (the second also an outbox lag)
    subprocess.run(
        [sys.executable, "-c", MULTIPROCESS_SCRIPT, str(directory)], check=True, cwd=ROOT
    )
    assert not (directory / "counter_999999.db").exists()
    # Then the exposition adds them up, and the dead process's lag is forgotten
    monkeypatch.setenv(MULTIPROC_ENV, str(directory))
    text = generate_latest(exposition_registry()).decode()
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }
    labels = (("outcome", "ok"), ("queue", "billing"), ("type", "billing.account.open"))
    assert samples[("fleet_messages_total", labels)] == 2
    assert samples[("fleet_message_age_seconds_count", labels)] == 2
    assert ("fleet_outbox_lag_seconds", ()) not in samples
    assert not list(directory.glob("gauge_live*"))


def test_every_metric_is_documented_for_operators(registry: CollectorRegistry) -> None:
    FleetMetrics(registry)
    doc = (ROOT / "docs" / "observability.md").read_text()
    exposed = [
        f"{family.name}_total" if family.type == "counter" else family.name
        for family in registry.collect()
    ]
    missing = [name for name in exposed if f"`{name}`" not in doc]
    assert len(exposed) == 12 and not missing, missing


def test_a_producer_clock_ahead_of_the_workers_counts_as_age_zero(
    registry: CollectorRegistry,
) -> None:
    # created_at an hour in the worker's future: the age at completion is 0, never negative
    metrics = FleetMetrics(registry)
    ahead = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    for event in (
        {"event": "ok", "queue": "crm", "type": "crm.interaction.log", "age_s": -3600.0},
        {"event": "ok", "queue": "crm", "type": "crm.interaction.log", "created_at": ahead},
    ):
        metrics.record(event)
    labels = {"queue": "crm", "type": "crm.interaction.log", "outcome": "ok"}
    assert value(registry, "fleet_message_age_seconds_count", **labels) == 2
    assert value(registry, "fleet_message_age_seconds_sum", **labels) == 0
    assert value(registry, "fleet_message_age_seconds_bucket", le="0.1", **labels) == 2
