"""Parked retries: what waits on the retry tiers, and moving it back to work now.

A retry tier ``<domain>.retry.<tier>`` holds messages until their TTL expires; then the broker
dead-letters them back to ``<domain>``. RabbitMQ cannot peek, so ``parked`` takes the messages
without acking and closes the channel, which returns them untouched (same place, same expiry;
the fresh delivery count they start with on the work queue is not affected). ``flush`` takes
them, publishes each to ``fleet.replay`` with key ``<domain>`` (the operators' only way in) —
same body, message id and ``x-fleet-*`` headers, so the attempt budget continues — and acks each
one only after the broker confirmed its copy. What does not match the filter, or was not
confirmed, goes back to its tier.
"""

from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

import pika
import pika.adapters.blocking_connection
from pika.exceptions import AMQPError, ChannelClosedByBroker

from queues.envelope import peek_header
from queues.errors import FleetError
from queues.publisher import Outgoing, PublishResult
from queues.topology import DOMAINS, REPLAY_EXCHANGE, retry_queue, tier_name

PARKED_FIELDS = (
    "queue",
    "tier",
    "tier_queue",
    "ttl_s",
    "count",
    "inspected",
    "oldest_parked_at",
    "next_due_at",
    "by_type",
)
FLUSH_FIELDS = ("queue", "tier", "tier_queue", "taken", "moved", "kept", "failed", "by_type")
# Broker bookkeeping of the parked copy; the work queue starts its own.
_DROPPED_HEADERS = frozenset(
    {
        "x-death",
        "x-delivery-count",
        "x-first-death-exchange",
        "x-first-death-queue",
        "x-first-death-reason",
        "x-last-death-exchange",
        "x-last-death-queue",
        "x-last-death-reason",
    }
)


class RetryError(FleetError):
    """Parked retries cannot be read or moved as asked."""

    reason = "retry_flush"


class Publishes(Protocol):
    def publish_raw(self, items: Sequence[Outgoing]) -> list[PublishResult]: ...


@dataclass
class ParkedTier:
    queue: str
    tier: str
    tier_queue: str
    ttl_s: int
    count: int
    inspected: int = 0
    oldest_parked_at: datetime | None = None
    next_due_at: datetime | None = None
    by_type: dict[str, int] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in PARKED_FIELDS}


@dataclass
class FlushResult:
    queue: str
    tier: str
    tier_queue: str
    taken: int = 0
    moved: int = 0
    kept: int = 0
    failed: int = 0
    by_type: dict[str, int] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in FLUSH_FIELDS}


def _type_of(properties: pika.BasicProperties, body: bytes) -> str:
    if properties.type:
        return str(properties.type)
    try:
        return peek_header(body).message_type
    except FleetError:
        return "(unreadable)"


def _connect(url: str) -> pika.BlockingConnection:
    try:
        return pika.BlockingConnection(pika.URLParameters(url))
    except AMQPError as exc:
        raise RetryError(f"cannot connect to RabbitMQ ({type(exc).__name__})") from None


def _tiers(tiers_s: Iterable[int], only: str | None) -> list[tuple[str, int]]:
    tiers = [(tier_name(s), s) for s in tiers_s]
    if only is not None:
        tiers = [(name, s) for name, s in tiers if name == only]
        if not tiers:
            known = ", ".join(tier_name(s) for s in tiers_s)
            raise RetryError(f"no tier {only!r}; the tiers are {known}")
    return tiers


def parked(
    url: str,
    tiers_s: Sequence[int],
    *,
    domains: Iterable[str] = DOMAINS,
    inspect_limit: int = 10_000,
) -> list[ParkedTier]:
    """Per domain and tier: count, and (for up to ``inspect_limit`` messages each) oldest,
    next due and types. Nothing is consumed."""
    connection = _connect(url)
    rows: list[ParkedTier] = []
    try:
        for domain in domains:
            for name, seconds in _tiers(tiers_s, None):
                tier_queue = retry_queue(domain, seconds)
                channel = connection.channel()
                try:
                    depth = channel.queue_declare(tier_queue, passive=True).method.message_count
                except ChannelClosedByBroker as exc:
                    raise RetryError(
                        f"cannot read {tier_queue} ({exc.reply_code}): does the tier exist "
                        "(fleet topology apply) and may this user read it (fleet-operator)?"
                    ) from None
                row = ParkedTier(domain, name, tier_queue, seconds, int(depth))
                types: Counter[str] = Counter()
                stamps: list[int] = []
                while row.inspected < min(row.count, inspect_limit):
                    method, properties, body = channel.basic_get(tier_queue, auto_ack=False)
                    if method is None:
                        break
                    row.inspected += 1
                    types[_type_of(properties, body)] += 1
                    if properties.timestamp is not None:
                        stamps.append(int(properties.timestamp))
                with contextlib.suppress(AMQPError):
                    channel.close()  # returns everything taken, untouched
                row.by_type = dict(types.most_common())
                if stamps:
                    row.oldest_parked_at = datetime.fromtimestamp(min(stamps), UTC)
                    row.next_due_at = row.oldest_parked_at + timedelta(seconds=seconds)
                rows.append(row)
    finally:
        if connection.is_open:
            connection.close()
    return rows


def flush(
    url: str,
    publisher: Publishes,
    domain: str,
    tiers_s: Sequence[int],
    *,
    tier: str | None = None,
    types: Iterable[str] = (),
    limit: int | None = None,
    dry_run: bool = False,
) -> list[FlushResult]:
    """Move parked messages of ``domain`` (one tier or all; some types or all) back to work now.

    Raises:
        RetryError: unknown domain or tier, or the broker refuses.
    """
    if domain not in DOMAINS:
        raise RetryError(f"unknown queue {domain!r}; the domains are {', '.join(DOMAINS)}")
    wanted = set(types)
    connection = _connect(url)
    results: list[FlushResult] = []
    remaining = limit
    try:
        for name, seconds in _tiers(tiers_s, tier):
            tier_queue = retry_queue(domain, seconds)
            result = FlushResult(domain, name, tier_queue)
            results.append(result)
            if remaining is not None and remaining <= 0:
                continue
            channel = connection.channel()
            try:
                channel.queue_declare(tier_queue, passive=True)
            except ChannelClosedByBroker as exc:
                raise RetryError(f"cannot read {tier_queue} ({exc.reply_code})") from None
            taken: list[tuple[int, pika.BasicProperties, bytes, str]] = []
            while remaining is None or len(taken) < remaining:
                method, properties, body = channel.basic_get(tier_queue, auto_ack=False)
                if method is None:
                    break
                taken.append((method.delivery_tag, properties, body, _type_of(properties, body)))
            result.taken = len(taken)
            chosen = [t for t in taken if not wanted or t[3] in wanted]
            if remaining is not None:
                remaining -= len(chosen)
            counts: Counter[str] = Counter(t[3] for t in chosen)
            result.by_type = dict(counts.most_common())
            if dry_run or not chosen:
                result.kept = len(taken)
                with contextlib.suppress(AMQPError):
                    channel.close()
                continue
            outgoing = [
                Outgoing(
                    exchange=REPLAY_EXCHANGE,
                    routing_key=domain,
                    body=body,
                    message_id=str(properties.message_id or ""),
                    message_type=str(properties.type or ""),
                    correlation_id=properties.correlation_id,
                    headers={
                        k: v
                        for k, v in (properties.headers or {}).items()
                        if k not in _DROPPED_HEADERS
                    },
                )
                for _tag, properties, body, _type in chosen
            ]
            confirmed = publisher.publish_raw(outgoing)
            for (tag, *_rest), outcome in zip(chosen, confirmed, strict=True):
                if outcome.ok:
                    channel.basic_ack(tag)
                    result.moved += 1
                else:
                    result.failed += 1
            result.kept = result.taken - result.moved
            _settle_before_close(channel, tier_queue)
            with contextlib.suppress(AMQPError):
                channel.close()  # returns what was not moved
    finally:
        if connection.is_open:
            connection.close()
    return results


def _settle_before_close(
    channel: pika.adapters.blocking_connection.BlockingChannel, queue: str
) -> None:
    """Make the acks just sent take effect before the channel closes.

    A quorum queue's client on the broker may still hold acks when the channel closes and then
    returns those deliveries as if never acked (rabbitmq-server #10327): they would come back
    later as duplicates. One more request to the same queue on the same channel — a
    ``basic.get``, whose answer follows the acks — flushes them; a message it takes goes back.
    """
    method, _properties, _body = channel.basic_get(queue, auto_ack=False)
    if method is not None:
        channel.basic_nack(method.delivery_tag, requeue=True)
