"""The message a worker thread is handling, set by a middleware around each message.

Log lines (``workers.observability.logging``) and metrics (``workers.observability.metrics``)
read it; nothing else should. It holds steering fields from the envelope's readable header —
never payload values — and only ever values of bounded shape: a header that does not validate
contributes nothing but the AMQP properties, cut short.
"""

from __future__ import annotations

import time
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

import dramatiq

from queues.envelope import peek_header
from queues.errors import FleetError
from workers.broker import Delivery

MAX_PROPERTY_CHARS = 128


@dataclass(frozen=True)
class MessageContext:
    """Steering fields of the message in hand (from the unauthenticated header)."""

    queue: str
    message_id: str | None
    message_type: str | None
    kid: str | None
    producer: str | None
    started: float

    def fields(self) -> dict[str, Any]:
        """The fields a log line carries."""
        return {"message_id": self.message_id, "type": self.message_type, "queue": self.queue}


_current: ContextVar[MessageContext | None] = ContextVar("fleet_message", default=None)


def current_message() -> MessageContext | None:
    """The message this thread is handling, or None between messages."""
    return _current.get()


def describe(delivery: Delivery) -> MessageContext:
    """The context of a delivery; a header that does not validate falls back to AMQP properties."""
    started = time.monotonic()
    try:
        header = peek_header(delivery.body)
    except FleetError:
        return MessageContext(
            queue=delivery.queue,
            message_id=_cut(delivery.message_id),
            message_type=_cut(delivery.message_type),
            kid=None,
            producer=None,
            started=started,
        )
    return MessageContext(
        queue=delivery.queue,
        message_id=str(header.message_id),
        message_type=header.message_type,
        kid=header.kid,
        producer=header.producer,
        started=started,
    )


def set_current(context: MessageContext | None) -> None:
    _current.set(context)


class MessageContextMiddleware(dramatiq.Middleware):
    """Sets the message context before each message and clears it after."""

    def before_process_message(self, broker: dramatiq.Broker, message: Any) -> None:
        delivery = message.args[0] if message.args else None
        set_current(describe(delivery) if isinstance(delivery, Delivery) else None)

    def after_process_message(
        self,
        broker: dramatiq.Broker,
        message: Any,
        *,
        result: Any | None = None,
        exception: BaseException | None = None,
    ) -> None:
        set_current(None)

    def after_skip_message(self, broker: dramatiq.Broker, message: Any) -> None:
        set_current(None)


def _cut(value: str | None) -> str | None:
    return value[:MAX_PROPERTY_CHARS] if value is not None else None
