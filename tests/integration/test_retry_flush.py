"""``dlq.retry.flush`` against real quorum tier queues: what it reports moved has left the tier.

RabbitMQ 3.10 may return deliveries of a quorum queue that were acked just before their channel
closed, as if never acked (rabbitmq-server #10327); a flush that closed straight after its acks
left some of what it reported moved on the tier, to come back later as duplicates.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pika
import pytest

from dlq.retry import flush
from queues.keys import KeyRegistry
from queues.publisher import Publisher
from queues.topology import TopologyConfig, retry_queue
from tests.support.polling import poll
from tests.support.rabbit import amqp_url, queue_counts, rabbitmqctl, scratch_vhost

pytestmark = pytest.mark.broker

TIER_S = 600
CONFIG = TopologyConfig(retry_tiers_s=(TIER_S,))
PARKED = 300
ROUNDS = 2


@pytest.fixture(scope="module")
def vhost() -> Iterator[str]:
    with scratch_vhost("test-retryflush", topology=CONFIG) as name:
        yield name


def park(url: str, queue: str, count: int) -> None:
    connection = pika.BlockingConnection(pika.URLParameters(url))
    try:
        channel = connection.channel()
        channel.confirm_delivery()
        for _ in range(count):
            properties = pika.BasicProperties(
                message_id=str(uuid.uuid4()), type="billing.charge.post", delivery_mode=2
            )
            channel.basic_publish("", queue, b"parked", properties)
    finally:
        connection.close()


def messages(vhost: str) -> dict[str, int]:
    """Queue ▶ messages (ready + unacknowledged), as the broker counts them."""
    return queue_counts(rabbitmqctl("list_queues", "-p", vhost, "name", "messages"))


def test_what_a_flush_reports_moved_never_stays_parked(vhost: str) -> None:
    url = amqp_url(vhost)
    tier = retry_queue("billing", TIER_S)
    publisher = Publisher(url, KeyRegistry([]), "fleet")
    try:
        for round_no in range(1, ROUNDS + 1):
            park(url, tier, PARKED)
            [result] = flush(url, publisher, "billing", (TIER_S,))
            assert (result.taken, result.moved, result.kept) == (PARKED, PARKED, 0)
            # Every moved message reached the work queue; none went back to the tier when the
            # flush's channel closed.
            counts = poll(
                lambda round_no=round_no: (
                    c if (c := messages(vhost))["billing"] == PARKED * round_no else None
                ),
                timeout_s=30,
                what="the moved messages on the work queue",
            )
            assert counts[tier] == 0, f"round {round_no}: {counts[tier]} moved yet still parked"
    finally:
        publisher.close()
