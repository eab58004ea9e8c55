"""The message a worker thread is handling, set by a middleware around each message.

Log lines (``workers.observability.logging``) and metrics (``workers.observability.metrics``)
read it; nothing else should. It holds steering fields from the envelope's readable header —
never payload values — and only ever values of bounded shape: a header that does not validate
contributes nothing but the AMQP properties, cut short.
"""

from __future__ import annotations

import time
from contextvars import ContextVar
from functools import cached_property
from typing import Any

import dramatiq

from queues.envelope import ParsedEnvelope, peek_header
from queues.errors import FleetError
from queues.header import EnvelopeHeader
from workers.broker import Delivery

MAX_PROPERTY_CHARS = 128


class MessageContext:
    """Steering fields of the message in hand (from the unauthenticated header).

    Read lazily: most messages are never logged about, and the lifecycle parses the envelope
    anyway (``Delivery.envelope``), so the header is taken from there when first asked for —
    parsed here only if nobody has yet.
    """

    def __init__(self, delivery: Delivery, started: float) -> None:
        self.queue = delivery.queue
        self.started = started
        self._delivery = delivery

    @cached_property
    def _header(self) -> EnvelopeHeader | None:
        parsed = self._delivery.envelope
        if isinstance(parsed, ParsedEnvelope):
            return parsed.header
        try:
            return peek_header(self._delivery.body)
        except FleetError:
            return None

    @property
    def message_id(self) -> str | None:
        header = self._header
        return str(header.message_id) if header else _cut(self._delivery.message_id)

    @property
    def message_type(self) -> str | None:
        header = self._header
        return header.message_type if header else _cut(self._delivery.message_type)

    @property
    def kid(self) -> str | None:
        header = self._header
        return header.kid if header else None

    @property
    def producer(self) -> str | None:
        header = self._header
        return header.producer if header else None

    def fields(self) -> dict[str, Any]:
        """The fields a log line carries."""
        return {"message_id": self.message_id, "type": self.message_type, "queue": self.queue}


_current: ContextVar[MessageContext | None] = ContextVar("fleet_message", default=None)


def current_message() -> MessageContext | None:
    """The message this thread is handling, or None between messages."""
    return _current.get()


def describe(delivery: Delivery) -> MessageContext:
    """The context of a delivery; a header that does not validate falls back to AMQP properties."""
    return MessageContext(delivery, time.monotonic())


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
