"""Reading what really is in a queue, for tests that count messages on the broker."""

from __future__ import annotations

import pika

PREFETCH = 1000
ACK_EVERY = 250


def queue_depth(url: str, queue: str) -> int:
    """Ready messages in ``queue`` (a passive declare)."""
    connection = pika.BlockingConnection(pika.URLParameters(url))
    try:
        return int(connection.channel().queue_declare(queue, passive=True).method.message_count)
    finally:
        connection.close()


def take(url: str, queue: str) -> list[tuple[pika.BasicProperties, bytes]]:
    """Consume (and ack) every ready message of ``queue``: (properties, body) pairs.

    A consumer with a prefetch window, not one ``basic.get`` round trip per message (tens of
    thousands in the publisher tests): it takes as many as a passive declare counts, acks them,
    cancels (what arrived meanwhile goes back, unacked), and counts again until none is ready.
    """
    connection = pika.BlockingConnection(pika.URLParameters(url))
    taken: list[tuple[pika.BasicProperties, bytes]] = []
    try:
        channel = connection.channel()
        channel.basic_qos(prefetch_count=PREFETCH)
        while ready := int(channel.queue_declare(queue, passive=True).method.message_count):
            for method, properties, body in channel.consume(queue, inactivity_timeout=30):
                if method is None:
                    raise AssertionError(f"{queue}: {ready} ready, yet nothing delivered for 30 s")
                taken.append((properties, body))
                ready -= 1
                if ready == 0 or ready % ACK_EVERY == 0:  # within the prefetch window
                    channel.basic_ack(method.delivery_tag, multiple=True)
                if ready == 0:
                    break
            channel.cancel()
        return taken
    finally:
        connection.close()


def drain_message_ids(url: str, queue: str) -> list[str]:
    """Consume (and ack) every ready message of ``queue``; return their AMQP message ids."""
    return [str(properties.message_id) for properties, _body in take(url, queue)]
