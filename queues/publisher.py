"""The streaming publisher: seal, publish persistently with publisher confirms, many in flight.

One background thread owns a pika ``SelectConnection`` (pika is not thread-safe); callers hand it
work through a lock-protected queue and ``add_callback_threadsafe``. Up to ``window`` messages are
unconfirmed at once; acks (possibly ``multiple``, out of order), nacks and returns are correlated
per delivery tag and message id.

What a result means — the one promise: **CONFIRMED only after the broker's ack.**

- ``confirmed``  the broker acked: the message is in every queue it routes to (persistent).
- ``nacked``     the broker refused it (a full queue with ``reject-publish``, an internal error).
- ``returned``   unroutable and no alternate exchange took it (``mandatory``).
- ``refused``    refused here, before publishing (unknown type, invalid, too large, not allowed).
- ``failed``     no confirm within the timeout (broker blocked, connection lost beyond the
                 re-publish budget, channel closed by the broker). It may or may not have
                 reached a queue: publishing it again with the **same message id** is safe,
                 consumers deduplicate by message id.

On connection loss the publisher reconnects by itself and re-publishes every unconfirmed message
(same body, same message id) up to ``max_attempts`` times; ``connection.blocked`` pauses sending.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import threading
import time
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from types import TracebackType
from typing import Any

import pika
import pika.channel
import pika.frame
import pika.spec
from pika.exceptions import AMQPError

from queues.contracts import CATALOGUE, Contract
from queues.envelope import CONTENT_TYPE, DEFAULT_MAX_BODY_BYTES, SealedMessage, seal
from queues.errors import FleetError
from queues.keys import KeyRegistry

log = logging.getLogger(__name__)

FLEET_EXCHANGE = "fleet"
# A channel closed for one of these will refuse a re-publish the same way: fail, do not retry.
_FINAL_CHANNEL_CODES = frozenset({403, 404, 406})


class PublishStatus(StrEnum):
    CONFIRMED = "confirmed"
    NACKED = "nacked"
    RETURNED = "returned"
    REFUSED = "refused"
    FAILED = "failed"


@dataclass(frozen=True)
class PublishResult:
    """The outcome of one message. ``ok`` only when the broker confirmed it."""

    message_id: str | None
    message_type: str
    status: PublishStatus
    detail: str = ""

    @property
    def ok(self) -> bool:
        return self.status is PublishStatus.CONFIRMED


class PublishError(FleetError):
    """A message was not confirmed by the broker; ``result`` says why."""

    reason = "not_published"

    def __init__(self, result: PublishResult) -> None:
        super().__init__(
            f"{result.message_type} {result.message_id}: {result.status}: {result.detail}"
        )
        self.result = result


@dataclass(frozen=True)
class Outgoing:
    """One AMQP publish: where, what and with which properties."""

    exchange: str
    routing_key: str
    body: bytes
    message_id: str | None  # None only for a body whose id nobody can read (dead letters)
    message_type: str
    headers: dict[str, Any] | None = None
    correlation_id: str | None = None
    app_id: str | None = None

    @classmethod
    def for_sealed(cls, sealed: SealedMessage, exchange: str = FLEET_EXCHANGE) -> Outgoing:
        header = sealed.header
        return cls(
            exchange=exchange,
            routing_key=header.message_type,
            body=sealed.body,
            message_id=str(header.message_id),
            message_type=header.message_type,
            correlation_id=str(header.correlation_id) if header.correlation_id else None,
            app_id=header.producer,
        )

    def properties(self) -> pika.BasicProperties:
        return pika.BasicProperties(
            delivery_mode=pika.DeliveryMode.Persistent,
            content_type=CONTENT_TYPE,
            message_id=self.message_id,
            type=self.message_type,
            correlation_id=self.correlation_id,
            app_id=self.app_id,
            timestamp=int(time.time()),
            headers=self.headers,
        )


@dataclass(eq=False)
class _Pending:
    outgoing: Outgoing
    deadline: float
    attempts: int = 0
    returned: bool = False
    result: PublishResult | None = None
    done: threading.Event = field(default_factory=threading.Event)


@dataclass
class PublisherStats:
    """Counters for tests, benchmarks and metrics."""

    published: int = 0
    confirmed: int = 0
    nacked: int = 0
    returned: int = 0
    failed: int = 0
    republished: int = 0
    reconnects: int = 0
    blocked: int = 0  # connection.blocked received (memory or disk alarm)
    max_in_flight: int = 0


class Publisher:
    """Publishes sealed envelopes (or any ``Outgoing``) with streaming publisher confirms.

    Use as a context manager. Thread-safe: several threads may publish at once.
    """

    def __init__(
        self,
        url: str,
        keys: KeyRegistry | None = None,
        producer: str | None = None,
        *,
        window: int = 1000,
        confirm_timeout_s: float = 30.0,
        max_attempts: int = 3,
        reconnect_delay_max_s: float = 5.0,
        max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
        heartbeat_s: int = 30,
    ) -> None:
        if window < 1:
            raise ValueError("window must be at least 1")
        self._parameters = pika.URLParameters(url)
        self._parameters.heartbeat = heartbeat_s
        self._parameters.connection_attempts = 1
        self._keys = keys
        self._producer = producer
        self.window = window
        self.confirm_timeout_s = confirm_timeout_s
        self.max_attempts = max_attempts
        self.reconnect_delay_max_s = reconnect_delay_max_s
        self.max_body_bytes = max_body_bytes
        self.stats = PublisherStats()

        self._lock = threading.Lock()
        self._outbox: collections.deque[_Pending] = collections.deque()
        self._in_flight: dict[int, _Pending] = {}
        self._next_tag = 0
        self._connection: pika.SelectConnection | None = None
        self._channel: pika.channel.Channel | None = None
        self._ready = threading.Event()
        self._blocked = False
        self._opened = False
        self._closing = False
        self._last_error = ""
        self._thread = threading.Thread(target=self._run, name="fleet-publisher", daemon=True)
        self._thread.start()

    # -- public API ------------------------------------------------------------------------------

    def __enter__(self) -> Publisher:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    @property
    def connected(self) -> bool:
        return self._ready.is_set()

    def wait_connected(self, timeout_s: float = 10.0) -> bool:
        return self._ready.wait(timeout_s)

    def seal(
        self,
        payload: Contract,
        *,
        message_id: uuid.UUID | None = None,
        correlation_id: uuid.UUID | None = None,
    ) -> SealedMessage:
        """Seal with the producer's newest key (no publish).

        Raises:
            FleetError: unknown type, not authorized, no key, or body too large.
        """
        if self._keys is None or self._producer is None:
            raise FleetError("this publisher has no key registry and producer to seal with")
        if CATALOGUE.get((payload.message_type, payload.schema_version)) is not type(payload):
            raise FleetError(
                f"{payload.message_type} v{payload.schema_version} is not in the catalogue"
            )
        key = self._keys.sealing_key(self._producer)
        sealed = seal(payload, key, message_id=message_id, correlation_id=correlation_id)
        if len(sealed.body) > self.max_body_bytes:
            size = len(sealed.body)
            raise FleetError(
                f"sealed body of {size} bytes exceeds the limit of {self.max_body_bytes}"
            )
        self._keys.record_seal(key.kid)
        return sealed

    def publish(self, payload: Contract, **seal_options: Any) -> PublishResult:
        """Seal and publish one message; return only once the broker confirmed it.

        Raises:
            PublishError: not confirmed (nacked, returned, refused or failed).
        """
        result = self.publish_batch([payload], **seal_options)[0]
        if not result.ok:
            raise PublishError(result)
        return result

    def publish_batch(
        self, payloads: Iterable[Contract | SealedMessage], **seal_options: Any
    ) -> list[PublishResult]:
        """Seal (where needed) and publish many; one result per input, in input order."""
        results: list[PublishResult | None] = []
        outgoing: list[Outgoing] = []
        positions: list[int] = []
        for item in payloads:
            if isinstance(item, SealedMessage):
                sealed = item
            else:
                try:
                    sealed = self.seal(item, **seal_options)
                except FleetError as exc:
                    results.append(
                        PublishResult(None, item.message_type, PublishStatus.REFUSED, exc.message)
                    )
                    continue
            positions.append(len(results))
            results.append(None)
            outgoing.append(Outgoing.for_sealed(sealed))
        for position, result in zip(positions, self.publish_raw(outgoing), strict=True):
            results[position] = result
        return [r for r in results if r is not None]

    def publish_raw(self, items: Sequence[Outgoing]) -> list[PublishResult]:
        """Publish prepared messages to any exchange; one result per item, in order."""
        deadline = time.monotonic() + self.confirm_timeout_s
        pending = [_Pending(outgoing=item, deadline=deadline) for item in items]
        if self._closing:
            for p in pending:
                self._resolve(p, PublishStatus.FAILED, "publisher is closed")
        with self._lock:
            self._outbox.extend(p for p in pending if p.result is None)
        self._wake()
        for p in pending:
            remaining = max(0.0, p.deadline - time.monotonic())
            if not p.done.wait(remaining):
                self._expire(p)
        return [p.result for p in pending if p.result is not None]

    def close(self, timeout_s: float = 10.0) -> None:
        """Stop after in-flight confirms arrive (or ``timeout_s``); fail what is left."""
        end = time.monotonic() + timeout_s
        while time.monotonic() < end:
            with self._lock:
                if not self._outbox and not self._in_flight:
                    break
            time.sleep(0.01)
        self._closing = True
        stop_by = time.monotonic() + timeout_s
        while self._thread.is_alive() and time.monotonic() < stop_by:
            connection = self._connection
            if connection is not None:
                with contextlib.suppress(AMQPError, RuntimeError, AttributeError):
                    connection.ioloop.add_callback_threadsafe(self._close_connection)
            self._thread.join(0.05)
        with self._lock:
            leftovers = list(self._outbox) + list(self._in_flight.values())
            self._outbox.clear()
            self._in_flight.clear()
        for p in leftovers:
            self._resolve(p, PublishStatus.FAILED, "publisher closed before the broker confirmed")

    # -- result bookkeeping (any thread) -----------------------------------------------------------

    def _resolve(self, pending: _Pending, status: PublishStatus, detail: str = "") -> None:
        with self._lock:
            if pending.result is not None:
                return
            pending.result = PublishResult(
                pending.outgoing.message_id, pending.outgoing.message_type, status, detail
            )
            counter = {
                PublishStatus.CONFIRMED: "confirmed",
                PublishStatus.NACKED: "nacked",
                PublishStatus.RETURNED: "returned",
            }.get(status, "failed")
            setattr(self.stats, counter, getattr(self.stats, counter) + 1)
        pending.done.set()

    def _expire(self, pending: _Pending) -> None:
        if self._blocked:
            why = "broker blocked publishing (connection.blocked: memory or disk alarm)"
        elif not self._ready.is_set():
            why = f"not connected to the broker ({self._last_error or 'connecting'})"
        else:
            why = "no confirm from the broker"
        self._resolve(
            pending,
            PublishStatus.FAILED,
            f"{why} within {self.confirm_timeout_s:g} s; not known to be published — "
            "safe to publish again with the same message id",
        )

    # -- the I/O thread ------------------------------------------------------------------------

    def _wake(self) -> None:
        connection = self._connection
        if connection is None or not self._ready.is_set():
            return  # the drain runs when the channel opens
        # If the loop is going away, the next connection's channel-open drains instead.
        with contextlib.suppress(AMQPError, RuntimeError, AttributeError):
            connection.ioloop.add_callback_threadsafe(self._drain)

    def _run(self) -> None:
        delay = 0.1
        while not self._closing:
            connection = pika.SelectConnection(
                self._parameters,
                on_open_callback=self._on_connection_open,
                on_open_error_callback=self._on_connection_open_error,
                on_close_callback=self._on_connection_closed,
            )
            self._connection = connection
            try:
                connection.ioloop.start()
            except Exception as exc:  # the loop must never die silently
                log.exception("publisher I/O loop crashed")
                self._last_error = f"I/O loop error {type(exc).__name__}"
            self._ready.clear()
            self._channel = None
            with contextlib.suppress(Exception):
                connection.ioloop.close()  # its wake-up socket pair, or they leak
            self._return_in_flight_to_outbox()
            if self._closing:
                break
            self.stats.reconnects += 1
            delay = 0.1 if self._opened else min(self.reconnect_delay_max_s, delay * 2)
            self._opened = False
            time.sleep(delay)
        self._connection = None

    def _return_in_flight_to_outbox(self) -> None:
        with self._lock:
            unconfirmed = [self._in_flight[tag] for tag in sorted(self._in_flight)]
            self._in_flight.clear()
            self._next_tag = 0
            retry: list[_Pending] = []
            give_up: list[_Pending] = []
            for p in unconfirmed:
                (retry if p.attempts < self.max_attempts else give_up).append(p)
            self._outbox.extendleft(reversed(retry))
            self.stats.republished += len(retry)
        for p in give_up:
            self._resolve(
                p,
                PublishStatus.FAILED,
                f"connection lost {p.attempts} times before the broker confirmed "
                f"({self._last_error}); safe to publish again with the same message id",
            )

    def _on_connection_open(self, connection: pika.SelectConnection) -> None:
        if self._closing:
            connection.close()
            return
        connection.add_on_connection_blocked_callback(self._on_blocked)
        connection.add_on_connection_unblocked_callback(self._on_unblocked)
        connection.channel(on_open_callback=self._on_channel_open)

    def _on_connection_open_error(
        self, connection: pika.SelectConnection, error: Exception
    ) -> None:
        self._last_error = f"cannot connect: {type(error).__name__}: {error}"
        connection.ioloop.stop()

    def _on_connection_closed(self, connection: pika.SelectConnection, reason: Exception) -> None:
        self._last_error = f"connection closed: {reason}"
        self._ready.clear()
        self._blocked = False
        connection.ioloop.stop()

    def _close_connection(self) -> None:
        connection = self._connection
        if connection is None:
            return
        if connection.is_open:
            connection.close()
        elif connection.is_closed:
            connection.ioloop.stop()
        # Opening or closing: the open (sees _closing) or close callback stops the loop, so
        # pika closes its socket; stopping the loop now would leak it.

    def _on_channel_open(self, channel: pika.channel.Channel) -> None:
        self._channel = channel
        channel.add_on_close_callback(self._on_channel_closed)
        channel.add_on_return_callback(self._on_return)
        channel.confirm_delivery(self._on_confirm, callback=self._on_confirm_selected)

    def _on_confirm_selected(self, _frame: pika.frame.Method) -> None:
        with self._lock:
            self._next_tag = 0
        self._opened = True
        self._ready.set()
        self._drain()

    def _on_channel_closed(self, channel: pika.channel.Channel, reason: Exception) -> None:
        self._ready.clear()
        self._channel = None
        code = getattr(reason, "reply_code", 0)
        self._last_error = f"channel closed by the broker: {reason}"
        connection = self._connection
        if code in _FINAL_CHANNEL_CODES:
            with self._lock:
                doomed = list(self._in_flight.values())
                self._in_flight.clear()
                self._next_tag = 0
            for p in doomed:
                self._resolve(p, PublishStatus.FAILED, self._last_error)
            if connection is not None and connection.is_open and not self._closing:
                connection.channel(on_open_callback=self._on_channel_open)
        elif connection is not None and connection.is_open:
            connection.close()

    def _on_blocked(self, _connection: pika.SelectConnection, _frame: Any) -> None:
        log.warning("broker blocked this publisher (connection.blocked)")
        self._blocked = True
        self.stats.blocked += 1

    def _on_unblocked(self, _connection: pika.SelectConnection, _frame: Any) -> None:
        log.info("broker unblocked this publisher")
        self._blocked = False
        self._drain()

    def _drain(self) -> None:
        channel = self._channel
        if channel is None or not channel.is_open or not self._ready.is_set():
            return
        while not self._blocked:
            with self._lock:
                if len(self._in_flight) >= self.window or not self._outbox:
                    return
                pending = self._outbox.popleft()
                if pending.result is not None:
                    continue  # expired while waiting
                self._next_tag += 1
                tag = self._next_tag
                self._in_flight[tag] = pending
                pending.attempts += 1
                pending.returned = False
                self.stats.published += 1
                self.stats.max_in_flight = max(self.stats.max_in_flight, len(self._in_flight))
            out = pending.outgoing
            channel.basic_publish(
                exchange=out.exchange,
                routing_key=out.routing_key,
                body=out.body,
                properties=out.properties(),
                mandatory=True,
            )

    def _on_return(
        self,
        _channel: pika.channel.Channel,
        method: pika.spec.Basic.Return,
        properties: pika.BasicProperties,
        _body: bytes,
    ) -> None:
        # A return precedes the ack of the same message; correlate by message id, not by tag.
        with self._lock:
            for p in self._in_flight.values():
                if p.outgoing.message_id == properties.message_id:
                    p.returned = True
                    break
        log.warning("message returned by the broker: %s %s", method.reply_code, method.reply_text)

    def _on_confirm(self, frame: pika.frame.Method) -> None:
        method = frame.method
        tag = method.delivery_tag
        with self._lock:
            tags = [t for t in self._in_flight if t <= tag] if method.multiple else [tag]
            settled = [(t, self._in_flight.pop(t)) for t in sorted(tags) if t in self._in_flight]
        acked = isinstance(method, pika.spec.Basic.Ack)
        for _tag, p in settled:
            if not acked:
                self._resolve(
                    p,
                    PublishStatus.NACKED,
                    "broker refused the message (queue at max length with reject-publish, "
                    "or a broker-side error); not published",
                )
            elif p.returned:
                self._resolve(
                    p,
                    PublishStatus.RETURNED,
                    "unroutable: no queue is bound for this routing key and no alternate "
                    "exchange took it; not published",
                )
            else:
                self._resolve(p, PublishStatus.CONFIRMED)
        self._drain()
