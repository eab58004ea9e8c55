"""The streaming publisher against the real broker: confirms are real, nothing reported lost."""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pika
import pytest
from typer.testing import CliRunner

from queues.contracts import MESSAGE_TYPES, Contract
from queues.keys import KeyRegistry
from queues.publisher import Publisher, PublishStatus
from queues.topology import TopologyConfig, apply, queues_of
from tests.support.broker_state import drain_message_ids, queue_depth
from tests.support.factories import sample
from tests.support.rabbit import amqp_url, rabbitmqctl, scratch_vhost, vhost_connections
from workers.cli import app

pytestmark = pytest.mark.broker


@pytest.fixture
def fleet_vhost() -> Iterator[str]:
    """A scratch vhost with the fleet's topology."""
    with scratch_vhost("test", TopologyConfig()) as vhost:
        yield vhost


@pytest.fixture
def fleet_url(fleet_vhost: str) -> str:
    return amqp_url(fleet_vhost)


def charges(count: int) -> list[Contract]:
    return [sample("billing.charge.post") for _ in range(count)]


def test_a_large_batch_streams_with_many_confirms_in_flight(
    fleet_url: str, keys: KeyRegistry
) -> None:
    with Publisher(fleet_url, keys, "fleet", window=500) as publisher:
        results = publisher.publish_batch(charges(10_000))
        assert publisher.stats.max_in_flight > 1
        assert publisher.stats.max_in_flight <= 500
    assert [r.status for r in results] == [PublishStatus.CONFIRMED] * 10_000
    assert len({r.message_id for r in results}) == 10_000
    assert queue_depth(fleet_url, "billing") == 10_000


def test_every_catalogue_type_reaches_its_queues(fleet_url: str, keys: KeyRegistry) -> None:
    with Publisher(fleet_url, keys, "fleet") as publisher:
        results = publisher.publish_batch([sample(t) for t in MESSAGE_TYPES])
    assert all(r.ok for r in results), results
    expected: Counter[str] = Counter(q for t in MESSAGE_TYPES for q in queues_of(t))
    assert expected["billing"] == 5  # four billing types and the crm.customer.upsert fan-out
    for queue in ("billing", "provisioning", "crm"):
        assert queue_depth(fleet_url, queue) == expected[queue]
    assert queue_depth(fleet_url, "unroutable") == 0


def test_a_type_outside_the_catalogue_is_refused_before_publishing(
    fleet_url: str, keys: KeyRegistry
) -> None:
    class RefundCharge(Contract):
        message_type = "billing.charge.refund"
        schema_version = 1

    with Publisher(fleet_url, keys, "fleet") as publisher:
        [result] = publisher.publish_batch([RefundCharge()])
        assert publisher.stats.published == 0
    assert result.status is PublishStatus.REFUSED
    assert "not in the catalogue" in result.detail
    assert queue_depth(fleet_url, "unroutable") == 0


def test_a_type_the_producer_may_not_send_is_refused(fleet_url: str, keys: KeyRegistry) -> None:
    with Publisher(fleet_url, keys, "payment-gateway") as publisher:
        [result] = publisher.publish_batch([sample("billing.charge.post")])
    assert result.status is PublishStatus.REFUSED
    assert "may not send" in result.detail


def test_a_full_queue_refuses_the_rest_and_nothing_confirmed_is_missing(
    keys: KeyRegistry,
) -> None:
    with scratch_vhost("test", TopologyConfig(queue_max_length=100)) as vhost:
        vhost_url = amqp_url(vhost)
        with Publisher(vhost_url, keys, "fleet", window=50) as publisher:
            filling = publisher.publish_batch(charges(150))
            beyond = publisher.publish_batch(charges(20))
        # A quorum queue enforces max-length on what its leader has applied, so with publishes in
        # flight it may admit some beyond the limit; once it is full it nacks every publish.
        assert sum(r.ok for r in filling) >= 100
        assert [r.status for r in beyond] == [PublishStatus.NACKED] * 20
        assert all("reject-publish" in r.detail for r in beyond)
        results = filling + beyond
        confirmed = {str(r.message_id) for r in results if r.ok}
        assert set(drain_message_ids(vhost_url, "billing")) == confirmed


def test_unroutable_without_an_alternate_exchange_is_returned_not_confirmed(
    vhost_url: str, keys: KeyRegistry
) -> None:
    connection = pika.BlockingConnection(pika.URLParameters(vhost_url))
    connection.channel().exchange_declare("fleet", "topic", durable=True)
    connection.close()
    with Publisher(vhost_url, keys, "fleet") as publisher:
        [result] = publisher.publish_batch([sample("crm.interaction.log")])
    assert result.status is PublishStatus.RETURNED
    assert not result.ok


def test_a_missing_exchange_fails_the_message_and_the_publisher_recovers(
    vhost_url: str, keys: KeyRegistry
) -> None:
    with Publisher(vhost_url, keys, "fleet", confirm_timeout_s=5) as publisher:
        [lost] = publisher.publish_batch([sample("crm.interaction.log")])
        assert lost.status is PublishStatus.FAILED
        assert "404" in lost.detail
        apply(vhost_url, TopologyConfig())
        [ok] = publisher.publish_batch([sample("crm.interaction.log")])
    assert ok.ok
    assert drain_message_ids(vhost_url, "crm") == [ok.message_id]


def _close_connections(vhost: str, stop: threading.Event) -> int:
    closed = 0
    while not stop.is_set() and closed < 3:
        for pid in vhost_connections(vhost):
            rabbitmqctl("close_connection", pid, "test: kill publisher")
            closed += 1
        time.sleep(0.3)
    return closed


def test_killing_the_connection_mid_batch_never_reports_a_lost_message_published(
    fleet_vhost: str, fleet_url: str, keys: KeyRegistry
) -> None:
    stop = threading.Event()
    killed: list[int] = []
    killer = threading.Thread(target=lambda: killed.append(_close_connections(fleet_vhost, stop)))
    results = []
    with Publisher(fleet_url, keys, "fleet", window=200, confirm_timeout_s=60) as publisher:
        assert publisher.wait_connected()
        killer.start()
        while killer.is_alive():
            results += publisher.publish_batch(charges(2_000))
        stop.set()
        killer.join()
        reconnects = publisher.stats.reconnects
    assert killed[0] >= 1
    assert reconnects >= 1
    confirmed = {str(r.message_id) for r in results if r.ok}
    on_broker = drain_message_ids(fleet_url, "billing")
    assert confirmed <= set(on_broker), "a message reported published is not in its queue"
    assert len(confirmed) > 0


def test_cli_publishes_json_lines_and_rejects_bad_input_without_echoing_it(
    fleet_url: str, keys: KeyRegistry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    keys_file = tmp_path / "keys.json"
    keys.save(keys_file)
    monkeypatch.setenv("FLEET_KEYS_FILE", str(keys_file))
    monkeypatch.setenv("FLEET_AMQP_URL", fleet_url)
    from workers.settings import get_settings

    get_settings.cache_clear()
    try:
        good = "\n".join(sample("crm.interaction.log").model_dump_json() for _ in range(3))
        runner = CliRunner()
        published = runner.invoke(
            app, ["publish", "crm.interaction.log", "--json", "-"], input=good
        )
        assert published.exit_code == 0, published.output
        lines = [json.loads(line) for line in published.stdout.splitlines()]
        assert [line["status"] for line in lines] == ["confirmed"] * 3
        assert queue_depth(fleet_url, "crm") == 3

        bad = json.loads(sample("crm.interaction.log").model_dump_json())
        bad["topic"] = 12345678
        bad["channel"] = "SECRET-CHANNEL-VALUE"
        refused = runner.invoke(
            app, ["publish", "crm.interaction.log", "--json", "-"], input=json.dumps(bad)
        )
        assert refused.exit_code == 2
        assert "channel" in refused.output and "topic" in refused.output
        assert "SECRET-CHANNEL-VALUE" not in refused.output
        assert "12345678" not in refused.output
        assert len(refused.output.strip().splitlines()) == 1
        assert queue_depth(fleet_url, "crm") == 3
    finally:
        get_settings.cache_clear()
