"""Reading what really is in a queue, for tests that count messages on the broker."""

from __future__ import annotations

import pika


def queue_depth(url: str, queue: str) -> int:
    """Ready messages in ``queue`` (a passive declare)."""
    connection = pika.BlockingConnection(pika.URLParameters(url))
    try:
        return int(connection.channel().queue_declare(queue, passive=True).method.message_count)
    finally:
        connection.close()


def take(url: str, queue: str) -> list[tuple[pika.BasicProperties, bytes]]:
    """Consume (and ack) every ready message of ``queue``: (properties, body) pairs."""
    connection = pika.BlockingConnection(pika.URLParameters(url))
    taken: list[tuple[pika.BasicProperties, bytes]] = []
    try:
        channel = connection.channel()
        while True:
            method, properties, body = channel.basic_get(queue, auto_ack=True)
            if method is None:
                return taken
            taken.append((properties, body))
    finally:
        connection.close()


def drain_message_ids(url: str, queue: str) -> list[str]:
    """Consume (and ack) every ready message of ``queue``; return their AMQP message ids."""
    return [str(properties.message_id) for properties, _body in take(url, queue)]
