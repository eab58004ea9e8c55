"""The topology as values: exchanges, queues, bindings and policies, and the tunables they follow.

``desired_topology(config)`` describes the whole vhost; nothing here declares anything (that is
``queues.topology.reconcile``), so the description can be compared, exported or tested alone.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from queues.errors import FleetError
from queues.topology.names import (
    DEAD_EXCHANGE,
    DEFAULT_EXCHANGE,
    DOMAINS,
    FAN_OUTS,
    FLEET_EXCHANGE,
    POLICY_PRIORITY,
    REPLAY_EXCHANGE,
    RETRY_EXCHANGE,
    UNROUTABLE_EXCHANGE,
    UNROUTABLE_QUEUE,
    dead_queue,
    policy_name,
    retry_queue,
    retry_routing_key,
    suspect_queue,
    suspect_routing_key,
    tier_name,
)

ExchangeType = Literal["topic", "direct", "fanout"]


class TopologyError(FleetError):
    """The topology cannot be applied or inspected as asked."""

    reason = "topology"


# ── configuration ──────────────────────────────────────────────────────────────────────────────


class TopologySettings(Protocol):
    """What the topology needs from the fleet's settings (``workers.settings.Settings`` fits)."""

    @property
    def retry_tiers_s(self) -> Sequence[int]: ...
    @property
    def delivery_limit(self) -> int: ...
    @property
    def suspect_delivery_limit(self) -> int: ...
    @property
    def queue_max_length(self) -> int: ...


@dataclass(frozen=True)
class TopologyConfig:
    """The topology's tunables; the defaults equal the fleet's default settings (a test pins it)."""

    retry_tiers_s: tuple[int, ...] = (5, 30, 120, 600, 3600)
    delivery_limit: int = 20
    suspect_delivery_limit: int = 3
    queue_max_length: int = 1_000_000

    def __post_init__(self) -> None:
        tiers = self.retry_tiers_s
        if not tiers or any(s <= 0 for s in tiers):
            raise TopologyError("retry tiers must be one or more positive numbers of seconds")
        if len({tier_name(s) for s in tiers}) != len(tiers):
            raise TopologyError("retry tiers must be distinct")
        if self.delivery_limit < 1 or self.suspect_delivery_limit < 1:
            raise TopologyError("delivery limits must be at least 1")
        if self.queue_max_length < 1:
            raise TopologyError("queue max length must be at least 1")

    @classmethod
    def from_settings(cls, settings: TopologySettings) -> TopologyConfig:
        return cls(
            retry_tiers_s=tuple(settings.retry_tiers_s),
            delivery_limit=settings.delivery_limit,
            suspect_delivery_limit=settings.suspect_delivery_limit,
            queue_max_length=settings.queue_max_length,
        )


# ── the description ────────────────────────────────────────────────────────────────────────────


@dataclass(frozen=True)
class Exchange:
    name: str
    type: ExchangeType
    arguments: Mapping[str, Any] = field(default_factory=dict)
    internal: bool = False


@dataclass(frozen=True)
class Queue:
    name: str
    role: Literal["work", "suspect", "retry", "dead", "unroutable"]


@dataclass(frozen=True, order=True)
class Binding:
    source: str
    destination: str
    routing_key: str

    def __str__(self) -> str:
        return f"{self.source} ▶ {self.destination} [{self.routing_key or '∅'}]"


@dataclass(frozen=True)
class Policy:
    name: str
    pattern: str
    definition: Mapping[str, Any]
    priority: int = POLICY_PRIORITY
    apply_to: str = "queues"

    def same_as(self, other: Policy) -> bool:
        return (
            self.pattern == other.pattern
            and dict(self.definition) == dict(other.definition)
            and self.priority == other.priority
            and self.apply_to == other.apply_to
        )


@dataclass(frozen=True)
class Topology:
    exchanges: tuple[Exchange, ...]
    queues: tuple[Queue, ...]
    bindings: tuple[Binding, ...]
    policies: tuple[Policy, ...]

    def exchange_names(self) -> set[str]:
        return {e.name for e in self.exchanges}


def _queue_policy(queue: str, definition: Mapping[str, Any]) -> Policy:
    return Policy(name=policy_name(queue), pattern=f"^{re.escape(queue)}$", definition=definition)


def desired_topology(config: TopologyConfig | None = None) -> Topology:
    """The whole desired state for ``config`` (default: the fleet's default settings)."""
    config = config or TopologyConfig()
    exchanges = (
        Exchange(FLEET_EXCHANGE, "topic", {"alternate-exchange": UNROUTABLE_EXCHANGE}),
        # Internal: only the broker routes into it (as fleet's alternate exchange).
        Exchange(UNROUTABLE_EXCHANGE, "fanout", internal=True),
        Exchange(RETRY_EXCHANGE, "direct"),
        Exchange(DEAD_EXCHANGE, "direct"),
        Exchange(REPLAY_EXCHANGE, "direct"),
    )
    at_least_once = {"dead-letter-strategy": "at-least-once", "overflow": "reject-publish"}
    queues: list[Queue] = []
    bindings: list[Binding] = []
    policies: list[Policy] = []
    for domain in DOMAINS:
        suspect, dead = suspect_queue(domain), dead_queue(domain)
        queues += [Queue(domain, "work"), Queue(suspect, "suspect")]
        bindings += [
            Binding(FLEET_EXCHANGE, domain, f"{domain}.#"),
            Binding(RETRY_EXCHANGE, suspect, suspect_routing_key(domain)),
            Binding(DEAD_EXCHANGE, dead, domain),
            Binding(REPLAY_EXCHANGE, domain, domain),
        ]
        dead_letter = {"dead-letter-exchange": DEAD_EXCHANGE, "dead-letter-routing-key": domain}
        policies += [
            _queue_policy(
                domain,
                {
                    "delivery-limit": config.delivery_limit,
                    "max-length": config.queue_max_length,
                    **dead_letter,
                    **at_least_once,
                },
            ),
            _queue_policy(
                suspect,
                {"delivery-limit": config.suspect_delivery_limit, **dead_letter, **at_least_once},
            ),
        ]
        for seconds in config.retry_tiers_s:
            tier = retry_queue(domain, seconds)
            queues.append(Queue(tier, "retry"))
            bindings.append(Binding(RETRY_EXCHANGE, tier, retry_routing_key(domain, seconds)))
            # Back through the default exchange, straight to the work queue: through "fleet"
            # a fanned-out type would be delivered to its other queues a second time.
            policies.append(
                _queue_policy(
                    tier,
                    {
                        "message-ttl": seconds * 1000,
                        "dead-letter-exchange": DEFAULT_EXCHANGE,
                        "dead-letter-routing-key": domain,
                        **at_least_once,
                    },
                )
            )
        queues.append(Queue(dead, "dead"))
        # Dead letters are never dropped: no max length, no delivery limit, no DLX. The policy
        # pins the queue (no stray policy governs it) and makes any max length that an operator
        # policy adds refuse instead of dropping the oldest dead letters.
        policies.append(_queue_policy(dead, {"overflow": "reject-publish"}))
    queues.append(Queue(UNROUTABLE_QUEUE, "unroutable"))
    bindings.append(Binding(UNROUTABLE_EXCHANGE, UNROUTABLE_QUEUE, ""))
    policies.append(_queue_policy(UNROUTABLE_QUEUE, {"overflow": "reject-publish"}))
    for message_type, targets in FAN_OUTS.items():
        bindings += [Binding(FLEET_EXCHANGE, queue, message_type) for queue in targets]
    return Topology(
        exchanges=exchanges,
        queues=tuple(queues),
        bindings=tuple(sorted(bindings)),
        policies=tuple(policies),
    )
