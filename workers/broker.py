"""FleetBroker: Dramatiq's public ``Broker`` / ``Consumer`` / ``MessageProxy`` over pika.

What it does differently from Dramatiq's own RabbitMQ broker, and why (DESIGN §4):

- **Passive declares only.** Topology belongs to ``fleet topology apply``; a missing queue is a
  loud error, never a classic queue created on the fly.
- **No enqueue, no delay queues.** Upstreams publish JWE envelopes with ``queues.publisher``;
  retries are parked on the broker's tier queues, never held in worker memory.
- **Each delivery becomes a Dramatiq message for the actor chosen by (queue, type)**, with
  ``queue_name`` = the consumed queue, so a fanned-out message runs each queue's actor once.
- **Three outcomes, decided by the actor wrapper** (``workers.lifecycle``) on the ``Delivery``:
  ack, requeue — dead-lettering is a publish to ``fleet.dead`` followed by an ack. Only an
  explicit ``ack`` decision acks; anything else (a crash in the wrapper, Dramatiq's ``nack``,
  shutdown) returns the message to its queue. Nothing is acked by accident.
- **Prefetch = worker threads** (``prefetch_by_queue`` deeper for queues whose messages the
  batch writer settles later: ``Settlement.LATER``), and ``cancel_consumers`` when shutdown
  begins, so no new deliveries arrive while in-flight work finishes.
- **Acks handed over together go together**: the consumer thread acks the oldest unsettled run
  with one ``multiple`` ack, the rest one by one.

pika is not thread-safe: each consumer's connection belongs to its Dramatiq consumer thread;
worker threads hand acks to it with ``add_callback_threadsafe``.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING, Any

import dramatiq
import pika
import pika.adapters.blocking_connection
import pika.spec
from dramatiq.errors import ConnectionClosed, ConnectionFailed, QueueNotFound
from pika.exceptions import AMQPConnectionError, AMQPError, ChannelClosedByBroker

if TYPE_CHECKING:
    from queues.envelope import ParsedEnvelope
    from queues.errors import EnvelopeError

log = logging.getLogger(__name__)


class Settlement(StrEnum):
    ACK = "ack"
    REQUEUE = "requeue"
    LATER = "later"
    """Decided after the actor returns (the batch writer commits it): ``settle`` it then."""


SettleLater = Callable[[Settlement], None]


@dataclass(eq=False)
class Delivery:
    """One AMQP delivery as the actor wrapper sees it. ``settle`` records the decision."""

    queue: str
    body: bytes = field(repr=False)  # Dramatiq logs str(message): never the envelope
    exchange: str
    routing_key: str
    redelivered: bool
    headers: dict[str, Any] = field(repr=False)
    message_id: str | None
    message_type: str | None
    content_type: str | None
    settlement: Settlement | None = None
    received_at: float = field(default_factory=time.time)
    # The body parsed once (or why it is refused), by whoever reads the envelope first; the
    # message context and the lifecycle share it instead of parsing again.
    envelope: ParsedEnvelope | EnvelopeError | None = field(default=None, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _then: SettleLater | None = field(default=None, repr=False)

    @property
    def delivery_count(self) -> int:
        """1 for a first delivery; n when the broker returned it n-1 times (crash, requeue).

        ``x-delivery-count`` is trusted only on a redelivery: on a first delivery the broker
        passes through whatever a publisher put there.
        """
        if not self.redelivered:
            return 1
        value = self.headers.get("x-delivery-count")
        return 1 + value if isinstance(value, int) and value >= 0 else 2

    def settle(self, settlement: Settlement) -> None:
        """Record the decision; for a deferred delivery the consumer then acts on it at once."""
        with self._lock:
            self.settlement = settlement
            then = self._then if settlement is not Settlement.LATER else None
        if then is not None:
            then(settlement)

    def defer(self) -> None:
        """The actor returns undecided; whoever decides calls ``settle`` (from any thread)."""
        self.settle(Settlement.LATER)

    def hand_over(self, then: SettleLater) -> Settlement | None:
        """The consumer's side: the decision if there is one (None: none, requeue); while it is
        deferred, ``then`` is called with it when it comes, and this returns ``LATER``."""
        with self._lock:
            if self.settlement is Settlement.LATER:
                self._then = then
            return self.settlement


class FleetMessageProxy(dramatiq.MessageProxy):
    """A Dramatiq message proxy that remembers its delivery and the consumer it came from."""

    def __init__(
        self, message: dramatiq.Message[Any], delivery: Delivery, tag: int, consumer: FleetConsumer
    ) -> None:
        super().__init__(message)
        self.delivery = delivery
        self.delivery_tag = tag
        self.consumer = consumer


# Which actor runs a delivery (its name); it may leave what it read on the delivery.
ActorChooser = Callable[["Delivery"], str]

# Dramatiq's message ids, unique within a process (Dramatiq's default, a uuid4, costs a
# system call per delivery; nothing outside the process sees these ids).
_message_ids = itertools.count(1)


class FleetBroker(dramatiq.Broker):
    """Consumes the fleet's quorum queues; see the module docstring for the contract."""

    def __init__(
        self,
        url: str,
        *,
        choose_actor: ActorChooser,
        prefetch: int,
        prefetch_by_queue: dict[str, int] | None = None,
        middleware: list[dramatiq.Middleware] | None = None,
        heartbeat_s: int = 30,
    ) -> None:
        super().__init__(middleware=middleware if middleware is not None else [])
        self.queues: set[str] = set()
        self.parameters = pika.URLParameters(url)
        self.parameters.heartbeat = heartbeat_s
        self.parameters.connection_attempts = 1
        self.choose_actor = choose_actor
        self.prefetch = prefetch
        self.prefetch_by_queue = dict(prefetch_by_queue or {})
        self._consumers: list[FleetConsumer] = []
        self._paused: set[str] = set()
        self._stopping = False
        self._lock = threading.Lock()

    def consume(self, queue_name: str, prefetch: int = 1, timeout: int = 30000) -> FleetConsumer:
        """A consumer of ``queue_name`` with this broker's prefetch for it (``prefetch_by_queue``,
        else ``prefetch``: the worker threads).

        Raises:
            ConnectionFailed: the broker cannot be reached.
            QueueNotFound: the queue does not exist (run ``fleet topology apply``).
        """
        chosen = self.prefetch_by_queue.get(queue_name) or self.prefetch or prefetch
        consumer = FleetConsumer(self, queue_name, chosen, timeout)
        with self._lock:
            self._consumers = [c for c in self._consumers if c.is_open] + [consumer]
            paused = self._stopping or _domain(queue_name) in self._paused
        if paused:
            consumer.cancel()
        return consumer

    def declare_queue(self, queue_name: str) -> None:
        if queue_name not in self.queues:
            self.emit_before("declare_queue", queue_name)
            self.queues.add(queue_name)
            self.emit_after("declare_queue", queue_name)

    def enqueue(self, message: dramatiq.Message[Any], *, delay: int | None = None) -> Any:
        raise NotImplementedError(
            "FleetBroker does not enqueue Dramatiq messages: publish JWE envelopes with "
            "queues.publisher.Publisher to the fleet exchange"
        )

    def get_declared_queues(self) -> set[str]:
        return set(self.queues)

    def get_declared_delay_queues(self) -> set[str]:
        return set()

    def cancel_consumers(self) -> None:
        """Stop new deliveries on every consumer (shutdown begins); in-flight work continues."""
        with self._lock:
            self._stopping = True
            consumers = list(self._consumers)
        for consumer in consumers:
            consumer.cancel()

    def pause_domains(self, domains: Iterable[str]) -> None:
        """Stop new deliveries from the domains' queues (a circuit breaker opened)."""
        with self._lock:
            self._paused |= set(domains)
            consumers = [c for c in self._consumers if _domain(c.queue_name) in self._paused]
        for consumer in consumers:
            consumer.cancel()

    def resume_domains(self, domains: Iterable[str]) -> None:
        """Deliver again from the domains' queues, one message at a time (a circuit breaker
        probing its dependency), unless the worker is stopping; ``restore_domains`` then gives
        the consumers their full prefetch back."""
        for consumer in self._resumable(domains):
            consumer.resume(prefetch=1)

    def restore_domains(self, domains: Iterable[str]) -> None:
        """Full prefetch again for the domains' queues (a circuit breaker closed)."""
        for consumer in self._resumable(domains):
            consumer.resume()

    def _resumable(self, domains: Iterable[str]) -> list[FleetConsumer]:
        """The consumers of ``domains`` (no others: their prefetch is not this breaker's)."""
        wanted = set(domains)
        with self._lock:
            self._paused -= wanted
            if self._stopping:
                return []
            return [c for c in self._consumers if _domain(c.queue_name) in wanted]

    def close(self) -> None:
        with self._lock:
            consumers, self._consumers = self._consumers, []
        for consumer in consumers:
            consumer.close()

    def flush(self, queue_name: str) -> None:
        connection = pika.BlockingConnection(self.parameters)
        try:
            connection.channel().queue_purge(queue_name)
        finally:
            connection.close()

    def flush_all(self) -> None:
        for queue_name in self.queues:
            self.flush(queue_name)

    def join(self, queue_name: str, *, timeout: int | None = None) -> None:
        raise NotImplementedError("wait on the database or the broker's queue depth instead")


class FleetConsumer(dramatiq.Consumer):
    """Consumes one queue over its own connection, owned by the thread that created it."""

    def __init__(
        self, broker: FleetBroker, queue_name: str, prefetch: int, timeout_ms: int
    ) -> None:
        self.broker = broker
        self.queue_name = queue_name
        self._timeout_s = max(timeout_ms, 10) / 1000
        self._owner = threading.current_thread()
        self._ready: deque[FleetMessageProxy] = deque()
        self._consumer_tag: str | None = None
        self._prefetch = self._full_prefetch = prefetch
        # Settlements handed over by worker threads, run together by the consumer thread.
        self._settling: deque[tuple[int, Settlement]] = deque()
        self._settle_scheduled = False
        self._settle_lock = threading.Lock()
        self._unsettled: set[int] = set()  # delivery tags of this channel not settled yet
        try:
            self._connection = pika.BlockingConnection(broker.parameters)
        except AMQPConnectionError as exc:
            raise ConnectionFailed(f"cannot connect to RabbitMQ: {type(exc).__name__}") from None
        try:
            self._channel = self._connection.channel()
            self._channel.queue_declare(queue_name, passive=True)
            self._channel.basic_qos(prefetch_count=prefetch)
            self._consumer_tag = self._channel.basic_consume(queue_name, self._on_message)
        except ChannelClosedByBroker as exc:
            self._close_quietly()
            if exc.reply_code == 404:
                raise QueueNotFound(
                    f"queue {queue_name!r} does not exist: run `fleet topology apply`"
                ) from None
            raise ConnectionClosed(f"cannot consume {queue_name!r}: {exc}") from None
        except AMQPError as exc:
            self._close_quietly()
            raise ConnectionClosed(f"cannot consume {queue_name!r}: {type(exc).__name__}") from None

    @property
    def is_open(self) -> bool:
        return bool(self._connection.is_open)

    # -- the consumer thread -------------------------------------------------------------------

    def _on_message(
        self,
        _channel: pika.adapters.blocking_connection.BlockingChannel,
        method: pika.spec.Basic.Deliver,
        properties: pika.BasicProperties,
        body: bytes,
    ) -> None:
        delivery = Delivery(
            queue=self.queue_name,
            body=body,
            exchange=method.exchange,
            routing_key=method.routing_key,
            redelivered=bool(method.redelivered),
            headers=dict(properties.headers or {}),
            message_id=properties.message_id,
            message_type=properties.type,
            content_type=properties.content_type,
        )
        message: dramatiq.Message[Any] = dramatiq.Message(
            queue_name=self.queue_name,
            actor_name=self.broker.choose_actor(delivery),
            args=(delivery,),
            kwargs={},
            options={},
            message_id=str(next(_message_ids)),
        )
        self._unsettled.add(method.delivery_tag)
        self._ready.append(FleetMessageProxy(message, delivery, method.delivery_tag, self))

    def __next__(self) -> FleetMessageProxy | None:
        try:
            if not self._ready:
                self._connection.process_data_events(time_limit=self._timeout_s)
            return self._ready.popleft() if self._ready else None
        except AMQPError as exc:
            raise ConnectionClosed(
                f"lost the connection consuming {self.queue_name!r}: {exc}"
            ) from None

    # -- any thread ----------------------------------------------------------------------------

    def ack(self, message: dramatiq.MessageProxy) -> None:
        """Acks only when the wrapper decided ``ack``; otherwise the message goes back.

        A deferred delivery (``Settlement.LATER``) is settled when its decision comes.
        """
        assert isinstance(message, FleetMessageProxy)
        decided = message.delivery.hand_over(lambda settlement: self._settle(message, settlement))
        if decided is not Settlement.LATER:
            self._settle(message, decided if decided is not None else Settlement.REQUEUE)

    def nack(self, message: dramatiq.MessageProxy) -> None:
        """Dramatiq's rejection: never dropped here, the message goes back to its queue."""
        assert isinstance(message, FleetMessageProxy)
        self._settle(message, Settlement.REQUEUE)

    def requeue(self, messages: Iterable[dramatiq.MessageProxy]) -> None:
        for message in messages:
            assert isinstance(message, FleetMessageProxy)
            self._settle(message, Settlement.REQUEUE)

    def cancel(self) -> None:
        """basic.cancel: no new deliveries; unacked ones stay ours until settled or closed."""
        self._call(self._cancel_now)

    def resume(self, prefetch: int | None = None) -> None:
        """basic.consume again after a cancel, with ``prefetch`` (default: the consumer's own);
        a consumer already running with another prefetch is re-subscribed with this one."""
        self._call(lambda: self._consume_now(prefetch or self._full_prefetch))

    def close(self) -> None:
        if self._owner_thread_gone() or threading.current_thread() is self._owner:
            with contextlib.suppress(AMQPError):
                # Run acks handed over by worker threads that the consumer thread never ran.
                if self._connection.is_open:
                    self._connection.process_data_events(time_limit=0)
            self._close_quietly()
        else:
            self._call(self._close_quietly)

    def _settle(self, message: FleetMessageProxy, settlement: Settlement) -> None:
        if message.consumer is not self:
            # Dramatiq hands an old delivery to the thread's newest consumer after a reconnect;
            # its tag means nothing on this channel, and the broker already returned it.
            message.consumer._settle(message, settlement)
            return
        with self._settle_lock:
            self._settling.append((message.delivery_tag, settlement))
            if self._settle_scheduled:
                return  # the consumer thread has a run of settlements coming; this joins it
            self._settle_scheduled = True
        if not self._call(self._settle_pending):
            with self._settle_lock:  # the connection is gone; the broker returns them itself
                self._settle_scheduled = False

    def _settle_pending(self) -> None:
        """Settle what worker threads handed over (consumer thread): acks that complete the
        oldest unsettled deliveries go as one ``multiple`` ack, the rest one by one."""
        with self._settle_lock:
            self._settle_scheduled = False
            pending = list(self._settling)
            self._settling.clear()
        if not self._channel.is_open:
            return  # the broker returns unacked deliveries of a closed channel by itself
        acks = {tag for tag, settlement in pending if settlement is Settlement.ACK}
        oldest_first = sorted(self._unsettled)
        run = 0
        while run < len(oldest_first) and oldest_first[run] in acks:
            run += 1
        if run >= 2:
            self._channel.basic_ack(oldest_first[run - 1], multiple=True)
            self._unsettled.difference_update(oldest_first[:run])
        for tag, settlement in pending:
            if tag not in self._unsettled:
                continue  # acked above (or settled twice: once is what counts)
            self._unsettled.discard(tag)
            if settlement is Settlement.ACK:
                self._channel.basic_ack(tag)
            else:
                self._channel.basic_nack(tag, requeue=True)

    def _consume_now(self, prefetch: int) -> None:
        if not self._channel.is_open:
            return
        if self._consumer_tag is not None:
            if prefetch == self._prefetch:
                return
            # basic.qos reaches only consumers started after it: subscribe again. Unacked
            # deliveries stay ours across the cancel.
            self._channel.basic_cancel(self._consumer_tag)
            self._consumer_tag = None
        if prefetch != self._prefetch:
            self._channel.basic_qos(prefetch_count=prefetch)
            self._prefetch = prefetch
        self._consumer_tag = self._channel.basic_consume(self.queue_name, self._on_message)

    def _cancel_now(self) -> None:
        if self._consumer_tag is not None and self._channel.is_open:
            self._channel.basic_cancel(self._consumer_tag)
            self._consumer_tag = None

    def _call(self, action: Callable[[], None]) -> bool:
        """Run ``action`` on the consumer thread (now, if this is it); False when it cannot."""
        try:
            if threading.current_thread() is self._owner or self._owner_thread_gone():
                action()
            else:
                self._connection.add_callback_threadsafe(action)
            return True
        except (AMQPError, RuntimeError, ValueError) as exc:
            log.warning(
                "could not settle on %s (%s): the broker returns the message by itself",
                self.queue_name,
                type(exc).__name__,
            )
            return False

    def _owner_thread_gone(self) -> bool:
        return not self._owner.is_alive()

    def _close_quietly(self) -> None:
        with contextlib.suppress(AMQPError, RuntimeError):
            if self._connection.is_open:
                self._connection.close()


def _domain(queue: str) -> str:
    return queue.split(".", 1)[0]
