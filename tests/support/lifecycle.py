"""A real ``Lifecycle`` with fakes around it, to produce real outcome events without a broker."""

from __future__ import annotations

import types
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from queues.envelope import OpenedMessage, SealedMessage
from queues.keys import KeyRegistry
from queues.publisher import Outgoing, PublishResult, PublishStatus
from workers.broker import Delivery
from workers.events import EventSink
from workers.lifecycle import Lifecycle, RetryPolicy
from workers.observability.context import MessageContextMiddleware

TIERS = (("5s", 5), ("30s", 30))


@dataclass
class FakePublisher:
    """Confirms every publish, unless told to nack the next ones."""

    published: list[Outgoing] = field(default_factory=list)
    nack_next: int = 0

    def publish_raw(self, items: list[Outgoing]) -> list[PublishResult]:
        results = []
        for item in items:
            self.published.append(item)
            status = PublishStatus.CONFIRMED
            if self.nack_next:
                self.nack_next -= 1
                status = PublishStatus.NACKED
            results.append(PublishResult(item.message_id, item.message_type, status))
        return results


def delivery_of(
    body: bytes,
    queue: str,
    message_type: str | None,
    message_id: str | None = None,
    *,
    exchange: str = "fleet",
    headers: dict[str, Any] | None = None,
) -> Delivery:
    return Delivery(
        queue=queue,
        body=body,
        exchange=exchange,
        routing_key=message_type or "",
        redelivered=False,
        headers=headers or {},
        message_id=message_id,
        message_type=message_type,
        content_type="application/jose",
    )


def delivery_of_sealed(sealed: SealedMessage, queue: str) -> Delivery:
    return delivery_of(sealed.body, queue, sealed.header.message_type, str(sealed.message_id))


Apply = Callable[[str, OpenedMessage], str]


@dataclass
class Driven:
    """A lifecycle, its event sink and publisher; ``process`` runs one delivery like a worker."""

    lifecycle: Lifecycle
    events: EventSink
    publisher: FakePublisher
    context: MessageContextMiddleware = field(default_factory=MessageContextMiddleware)

    def process(self, delivery: Delivery) -> None:
        message = types.SimpleNamespace(args=(delivery,), message_id="dramatiq-id")
        self.context.before_process_message(None, message)  # type: ignore[arg-type]
        try:
            self.lifecycle.process(delivery)
        finally:
            self.context.after_process_message(None, message)  # type: ignore[arg-type]


def drive(keys: KeyRegistry, apply: Apply, *, max_attempts: int = 3) -> Driven:
    events = EventSink()
    publisher = FakePublisher()
    lifecycle = Lifecycle(
        keys=keys,
        publisher=publisher,
        apply=apply,
        policy=RetryPolicy(tiers=TIERS, max_attempts=max_attempts, skew_max_attempts=2),
        events=events,
        max_body_bytes=256 * 1024,
    )
    return Driven(lifecycle, events, publisher)
