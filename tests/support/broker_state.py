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


def drain_message_ids(url: str, queue: str) -> list[str]:
    """Consume (and ack) every ready message of ``queue``; return their AMQP message ids."""
    connection = pika.BlockingConnection(pika.URLParameters(url))
    ids: list[str] = []
    try:
        channel = connection.channel()
        while True:
            method, properties, _body = channel.basic_get(queue, auto_ack=True)
            if method is None:
                return ids
            ids.append(str(properties.message_id))
    finally:
        connection.close()
