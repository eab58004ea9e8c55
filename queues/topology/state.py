"""What the broker has: one vhost as listed by an admin backend, and the interface both share.

The two backends are ``queues.topology.management`` (the management HTTP API) and
``queues.topology.rabbitmqctl`` (on the broker's own machine); ``queues.topology.admin`` picks one.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from queues.topology.entities import Binding, Policy


@dataclass(frozen=True)
class ExchangeState:
    name: str
    type: str
    durable: bool
    auto_delete: bool
    internal: bool
    arguments: Mapping[str, Any]


@dataclass(frozen=True)
class QueueState:
    name: str
    type: str
    durable: bool
    auto_delete: bool
    arguments: Mapping[str, Any]
    policy: str | None
    messages: int


@dataclass(frozen=True)
class BrokerState:
    """One vhost as the broker lists it (default exchange and its implicit bindings left out)."""

    exchanges: Mapping[str, ExchangeState]
    queues: Mapping[str, QueueState]
    bindings: frozenset[Binding]
    policies: Mapping[str, Policy]


class BrokerAdmin(Protocol):
    """Lists a vhost and sets policies: the management API or rabbitmqctl."""

    name: str

    def read_state(self, vhost: str) -> BrokerState: ...
    def set_policies(self, vhost: str, policies: Sequence[Policy]) -> None: ...


def arguments_table(raw: Any) -> dict[str, Any]:
    """rabbitmqctl prints arguments as ``[[key, type, value], ...]``; the HTTP API as an object."""
    if isinstance(raw, dict):
        return dict(raw)
    return {str(item[0]): item[2] for item in raw or []}


def exchange_states(rows: Iterable[Mapping[str, Any]]) -> dict[str, ExchangeState]:
    """Exchanges as either admin backend lists them, the nameless default exchange left out."""
    return {
        row["name"]: ExchangeState(
            name=row["name"],
            type=row["type"],
            durable=bool(row["durable"]),
            auto_delete=bool(row["auto_delete"]),
            internal=bool(row["internal"]),
            arguments=arguments_table(row.get("arguments")),
        )
        for row in rows
        if row["name"]
    }


def queue_states(rows: Iterable[Mapping[str, Any]]) -> dict[str, QueueState]:
    """Queues as either admin backend lists them."""
    return {
        row["name"]: QueueState(
            name=row["name"],
            type=str(row.get("type", "classic")),
            durable=bool(row["durable"]),
            auto_delete=bool(row["auto_delete"]),
            arguments=arguments_table(row.get("arguments")),
            policy=row.get("policy") or None,
            messages=int(row.get("messages") or 0),
        )
        for row in rows
    }


def serves_amqp(listeners: Iterable[Mapping[str, Any]], port: int) -> bool:
    """Whether a node's listener list (``rabbitmqctl status`` or ``/api/overview``) includes
    AMQP (plain or TLS) on ``port``."""
    return any(
        str(listener.get("protocol", "")).startswith("amqp") and listener.get("port") == port
        for listener in listeners
    )
