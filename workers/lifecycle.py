"""The lifecycle of one delivery, decided in one place (the actor wrapper), before the ack.

    delivery count ≥ 2 on a work queue   ▶ publish to "<queue>.suspect" (confirm) ▶ ack
    routing key on "fleet" ≠ header type ▶ dead "misrouted"
    envelope fails to open               ▶ retryable (unknown kid / schema version) ▶ retry tier,
                                           bounded by skew_max_attempts; otherwise dead
    handler ok / duplicate / stale       ▶ ack
    TransientError / NotYet              ▶ next retry tier (confirm) ▶ ack;
                                           attempts exhausted ▶ dead "retries_exhausted";
                                           NotYet past its horizon ▶ dead "not_yet_expired"
    PermanentError                       ▶ dead with its reason (confirm) ▶ ack
    unexpected exception (a bug)         ▶ treated as transient, reason "unexpected_error"
    no confirm for a retry/dead/suspect  ▶ requeue the original

Retry and dead copies are the same envelope bytes with ``x-fleet-*`` headers; broker headers
(``x-death``, ``x-delivery-count``) are not carried over, and ``x-fleet-*`` headers are trusted
only on deliveries that did not come straight from a publisher (exchange ``fleet``): an upstream
cannot shorten its own retry budget or fake a history. Never does a decision live in an
after-hook: Dramatiq swallows their exceptions and acks anyway.
"""

from __future__ import annotations

import logging
import os
import socket
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

from handlers.context import Outcome
from handlers.errors import DatabaseUnavailable, NetworkUnavailable
from queues.deadletter import (
    H_ATTEMPT,
    H_ATTEMPTS,
    H_DEATH_ID,
    H_ERROR,
    H_ERROR_CLASS,
    H_EXCHANGE,
    H_FIRST_FAILURE,
    H_LANE,
    H_LAST_ERROR_CLASS,
    H_LAST_FAILURE,
    H_LAST_REASON,
    H_QUEUE,
    H_REASON,
    H_ROUTING_KEY,
    H_SUSPECT_DELIVERIES,
    H_TRACEBACK,
    H_WORKER_HOST,
    H_WORKER_PID,
    death_id,
    trusted_fleet_headers,
)
from queues.envelope import (
    EnvelopeHeader,
    OpenedMessage,
    ParsedEnvelope,
    open_envelope,
    parse,
    peek_header,
)
from queues.errors import (
    EnvelopeError,
    FleetError,
    InvalidHeader,
    Misrouted,
    NotYet,
    PermanentError,
    TransientError,
)
from queues.keys import KeyRegistry
from queues.publisher import Outgoing, PublishResult
from queues.topology import DEAD_EXCHANGE, FLEET_EXCHANGE, RETRY_EXCHANGE
from workers.breaker import Breakers, CircuitBreaker
from workers.broker import Delivery, Settlement
from workers.events import EventSink

log = logging.getLogger(__name__)

MAX_ERROR_CHARS = 500
MAX_TRACEBACK_CHARS = 4000

# Failures that say a dependency is down, and the breaker that counts them.
OUTAGES: dict[type[BaseException], str] = {
    DatabaseUnavailable: "database",
    NetworkUnavailable: "network",
}


class Publishes(Protocol):
    def publish_raw(self, items: list[Outgoing]) -> list[PublishResult]: ...


Apply = Callable[[str, OpenedMessage], str]
"""Performs the business effect for (queue, message); returns ok | duplicate | stale."""


class Batcher(Protocol):
    """Where deferred messages go (``workers.runtime``: the batch writer and its helpers)."""

    def accepts(self, queue: str, opened: OpenedMessage) -> bool:
        """Whether this message takes the batch path."""
        ...

    def submit(
        self, queue: str, opened: OpenedMessage, then: Callable[[Outcome | None], None]
    ) -> None:
        """Apply it in a batch; ``then(outcome)``, or ``then(None)``: apply it alone."""
        ...

    def alone(self, work: Callable[[], None]) -> None:
        """Run ``work`` (a one-message path) on another thread than the writer's."""
        ...


@dataclass(frozen=True)
class _InHand:
    """A delivery whose envelope opened, on its way to its decision."""

    delivery: Delivery
    info: dict[str, Any]
    attempt: int
    opened: OpenedMessage
    started: float


@dataclass(frozen=True)
class RetryPolicy:
    """How long and how often a message may come back before it is dead-lettered."""

    tiers: tuple[tuple[str, int], ...]
    max_attempts: int = 8
    skew_max_attempts: int = 5
    not_yet_horizon_s: float = 6 * 3600

    def tier_for(self, attempt: int) -> str:
        """The tier of the retry after failed attempt ``attempt`` (1-based)."""
        return self.tiers[min(attempt, len(self.tiers)) - 1][0]


def domain_of(queue: str) -> str:
    """``billing.suspect`` ▶ ``billing``: the work queue a lane belongs to."""
    return queue.split(".", 1)[0]


def _now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class Lifecycle:
    """Takes the one decision per delivery and records it on the delivery."""

    def __init__(
        self,
        *,
        keys: KeyRegistry,
        publisher: Publishes,
        apply: Apply,
        policy: RetryPolicy,
        events: EventSink,
        max_body_bytes: int,
        fault_hook: Callable[[str, OpenedMessage | None], None] | None = None,
        breakers: Breakers | None = None,
        batcher: Batcher | None = None,
    ) -> None:
        self.keys = keys
        self.publisher = publisher
        self.apply = apply
        self.policy = policy
        self.events = events
        self.max_body_bytes = max_body_bytes
        self.fault_hook = fault_hook or (lambda point, opened: None)
        self.breakers = breakers or Breakers(())
        self.batcher = batcher
        self.host = socket.gethostname()

    def process(self, delivery: Delivery) -> None:
        """Decide and record the outcome of one delivery (``delivery.settlement``).

        A message of a batched type (``batcher``) is deferred: the actor returns at once, the
        batch writer commits it with others, and its outcome is decided and recorded then —
        or, if the batch cannot take it, on the one-message path as below.
        """
        started = time.monotonic()
        info, parsed = self._describe(delivery)
        attempt = _int_header(_fleet_headers(delivery), H_ATTEMPT, default=1)
        if not delivery.queue.endswith(".suspect") and delivery.delivery_count >= 2:
            self._to_suspect_lane(delivery, info)
            return
        try:
            opened = self._open(delivery, parsed)
            self.fault_hook("before_handle", opened)
        except Exception as exc:
            self._failed(delivery, info, attempt, exc)
            return
        queue = domain_of(delivery.queue)
        hand = _InHand(delivery, info, attempt, opened, started)
        batcher = self.batcher
        if batcher is not None and batcher.accepts(queue, opened):
            delivery.defer()

            def then(outcome: Outcome | None) -> None:
                if outcome is None:
                    batcher.alone(lambda: self._apply(hand))
                else:
                    self._succeeded(hand, str(outcome))

            batcher.submit(queue, opened, then)
            return
        self._apply(hand)

    def _apply(self, hand: _InHand) -> None:
        """The one-message path: the handler in its own transaction, then the decision."""
        try:
            outcome = self.apply(domain_of(hand.delivery.queue), hand.opened)
        except Exception as exc:
            self._failed(hand.delivery, hand.info, hand.attempt, exc)
            return
        self._succeeded(hand, outcome)

    def _succeeded(self, hand: _InHand, outcome: str) -> None:
        self.fault_hook("after_commit_before_ack", hand.opened)
        for breaker in self.breakers.for_domain(domain_of(hand.delivery.queue)):
            breaker.record_success()
        hand.delivery.settle(Settlement.ACK)
        self.events.emit(
            outcome,
            **hand.info,
            attempt=hand.attempt,
            age_s=round(time.time() - hand.opened.header.created_at.timestamp(), 6),
            duration_s=round(time.monotonic() - hand.started, 6),
        )

    def _failed(
        self, delivery: Delivery, info: dict[str, Any], attempt: int, exc: Exception
    ) -> None:
        """The decision for a failure (the table in the module docstring)."""
        if isinstance(exc, EnvelopeError):
            if exc.retryable and attempt < self.policy.skew_max_attempts:
                self._retry(delivery, info, attempt, exc)
            else:
                self._dead(delivery, info, attempt, exc, exc.reason)
        elif isinstance(exc, NotYet):
            if attempt >= self.policy.max_attempts or self._past_horizon(delivery):
                self._dead(delivery, info, attempt, exc, "not_yet_expired")
            else:
                self._retry(delivery, info, attempt, exc)
        elif isinstance(exc, PermanentError):
            self._dead(delivery, info, attempt, exc, exc.reason)
        else:  # a bug or an unclassified failure: bounded like a transient
            breaker = self._outage(exc)
            if breaker is not None and breaker.is_open:
                # The dependency is down: park it without using up an attempt.
                self._retry(delivery, info, attempt, exc, burn=False)
                return
            if not isinstance(exc, TransientError):
                log.error(
                    "unexpected error in %s %s",
                    info.get("type"),
                    info.get("message_id"),
                    exc_info=exc,
                )
            if attempt >= self.policy.max_attempts:
                self._dead(delivery, info, attempt, exc, "retries_exhausted")
            else:
                self._retry(delivery, info, attempt, exc)

    # -- steps ---------------------------------------------------------------------------------

    def _describe(
        self, delivery: Delivery
    ) -> tuple[dict[str, Any], ParsedEnvelope | EnvelopeError]:
        """What events say of the delivery, and its envelope parsed once (or why it is refused:
        opening it would fail with exactly that error)."""
        info: dict[str, Any] = {"queue": delivery.queue}
        parsed = delivery.envelope  # the actor's choice parsed it, if a broker delivered it
        if parsed is None:
            try:
                parsed = parse(delivery.body, max_body_bytes=self.max_body_bytes)
            except EnvelopeError as exc:
                parsed = exc
            delivery.envelope = parsed
        header = parsed.header if isinstance(parsed, ParsedEnvelope) else None
        if header is None:  # refused before authentication: the lenient reading, if any
            try:
                header = peek_header(delivery.body[: self.max_body_bytes + 1])
            except FleetError:
                info["message_id"] = delivery.message_id
                info["type"] = delivery.message_type
                return info, parsed
        info.update(
            message_id=str(header.message_id),
            type=header.message_type,
            producer=header.producer,
            created_at=header.created_at.isoformat(),
        )
        return info, parsed

    def _open(self, delivery: Delivery, parsed: ParsedEnvelope | EnvelopeError) -> OpenedMessage:
        if isinstance(parsed, EnvelopeError):
            raise parsed
        opened = open_envelope(parsed, self.keys, max_body_bytes=self.max_body_bytes)
        header = opened.header
        if delivery.exchange == FLEET_EXCHANGE and delivery.routing_key != header.message_type:
            raise Misrouted("routing key on the fleet exchange differs from the header's type")
        _check_advisory_properties(delivery, header)
        return opened

    def _outage(self, exc: BaseException) -> CircuitBreaker | None:
        """The breaker of the dependency this failure says is down (it counts the failure)."""
        name = OUTAGES.get(type(exc))
        breaker = self.breakers.get(name) if name else None
        if breaker is not None:
            breaker.record_failure()
        return breaker

    def _past_horizon(self, delivery: Delivery) -> bool:
        """Whether a ``NotYet`` has waited out its horizon, counted from the first failure the
        fleet saw (``x-fleet-first-failure``, the fleet's own clock) — never from the producer's
        ``created_at``, which a producer's clock hours slow or fast would move."""
        started = _parse_time(_fleet_headers(delivery).get(H_FIRST_FAILURE))
        return started is not None and time.time() - started > self.policy.not_yet_horizon_s

    def _publish(self, delivery: Delivery, info: dict[str, Any], out: Outgoing, step: str) -> bool:
        """Publish the copy ``out``; ack the delivery once it is confirmed, else requeue it.
        ``step`` names the copy (``retry``, ``suspect``, ``dead``) for the fault points."""
        result = self.publisher.publish_raw([out])[0]
        if result.ok:
            self.fault_hook(f"after_{step}_publish_before_ack", None)
            delivery.settle(Settlement.ACK)
            return True
        delivery.settle(Settlement.REQUEUE)
        self.events.emit("requeued", **info, detail=f"{result.status}: {result.detail}")
        return False

    def _outgoing(
        self,
        delivery: Delivery,
        info: dict[str, Any],
        exchange: str,
        key: str,
        headers: dict[str, Any],
    ) -> Outgoing:
        return Outgoing(
            exchange=exchange,
            routing_key=key,
            body=delivery.body,
            message_id=info.get("message_id") or delivery.message_id or None,
            message_type=str(info.get("type") or delivery.message_type or ""),
            headers=headers,
        )

    def _to_suspect_lane(self, delivery: Delivery, info: dict[str, Any]) -> None:
        domain = domain_of(delivery.queue)
        headers = {
            **_fleet_headers(delivery),
            H_SUSPECT_DELIVERIES: delivery.delivery_count,
        }
        out = self._outgoing(delivery, info, RETRY_EXCHANGE, f"{domain}.suspect", headers)
        if self._publish(delivery, info, out, "suspect"):
            self.events.emit("suspect", **info, deliveries=delivery.delivery_count)

    def _retry(
        self,
        delivery: Delivery,
        info: dict[str, Any],
        attempt: int,
        exc: BaseException,
        *,
        burn: bool = True,
    ) -> None:
        tier = self.policy.tier_for(attempt if burn else 1)
        reason = getattr(exc, "reason", "unexpected_error")
        history = _fleet_headers(delivery)
        headers = {
            **history,
            H_ATTEMPT: attempt + 1 if burn else attempt,
            H_FIRST_FAILURE: history.get(H_FIRST_FAILURE) or _now_iso(),
            H_LAST_REASON: reason,
            H_LAST_ERROR_CLASS: type(exc).__name__,
        }
        domain = domain_of(delivery.queue)
        out = self._outgoing(delivery, info, RETRY_EXCHANGE, f"{domain}.{tier}", headers)
        if self._publish(delivery, info, out, "retry"):
            self.events.emit(
                "retried", **info, attempt=attempt, tier=tier, reason=reason, burned=burn
            )

    def _dead(
        self,
        delivery: Delivery,
        info: dict[str, Any],
        attempt: int,
        exc: BaseException,
        reason: str,
    ) -> None:
        message = exc.message if isinstance(exc, FleetError) else type(exc).__name__
        # Frames and our own (value-free) message only: a foreign exception's text may quote
        # payload values (an IntegrityError DETAIL, a ValueError), and this header is archived.
        frames = "".join(traceback.format_tb(exc.__traceback__, limit=8))
        trace = f"Traceback (most recent call last):\n{frames}{type(exc).__name__}: {message}"
        history = _fleet_headers(delivery)
        headers = {
            **history,
            H_REASON: reason,
            H_ERROR_CLASS: type(exc).__name__,
            H_ERROR: message[:MAX_ERROR_CHARS],
            H_ATTEMPTS: attempt,
            H_FIRST_FAILURE: history.get(H_FIRST_FAILURE) or _now_iso(),
            H_LAST_FAILURE: _now_iso(),
            H_WORKER_HOST: self.host,
            H_WORKER_PID: os.getpid(),
            H_DEATH_ID: death_id(delivery.body, history),
            H_QUEUE: domain_of(delivery.queue),
            H_LANE: delivery.queue,
            H_EXCHANGE: delivery.exchange,
            H_ROUTING_KEY: delivery.routing_key,
            H_TRACEBACK: trace[-MAX_TRACEBACK_CHARS:],
        }
        if reason in ("retries_exhausted", "not_yet_expired"):
            headers[H_LAST_REASON] = getattr(exc, "reason", "unexpected_error")
        domain = domain_of(delivery.queue)
        out = self._outgoing(delivery, info, DEAD_EXCHANGE, domain, headers)
        if self._publish(delivery, info, out, "dead"):
            self.events.emit(
                "dead", **info, attempt=attempt, reason=reason, error_class=type(exc).__name__
            )


def _check_advisory_properties(delivery: Delivery, header: EnvelopeHeader) -> None:
    """AMQP properties are optional; when present they must agree with the header."""
    if delivery.message_id and delivery.message_id != str(header.message_id):
        raise InvalidHeader("invalid header: AMQP message_id property differs from the header's")
    if delivery.message_type and delivery.message_type != header.message_type:
        raise InvalidHeader("invalid header: AMQP type property differs from the header's")


def _fleet_headers(delivery: Delivery) -> dict[str, Any]:
    """The fleet's own bookkeeping headers, ignored on a publisher's first delivery."""
    return trusted_fleet_headers(delivery.headers, delivery.exchange)


def _int_header(headers: dict[str, Any], name: str, default: int) -> int:
    value = headers.get(name)
    return value if isinstance(value, int) and value >= 1 else default


def _parse_time(value: Any) -> float | None:
    if not isinstance(value, str):
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None
