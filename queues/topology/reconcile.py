"""A live vhost against the desired topology: ``apply`` makes it match (idempotent, says what
changed); ``check`` lists every difference with what to do (``queues.topology.differences``).

Policies go through an admin backend (``queues.topology.admin``); exchanges, queues and bindings
are declared over AMQP (pika). Nothing is ever deleted.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import pika
import pika.exceptions

from queues.topology.admin import BrokerAddress, PolicyVia, broker_admin
from queues.topology.differences import (
    Finding,
    compare,
    definition_diff,
    exchange_differences,
    queue_differences,
)
from queues.topology.entities import TopologyConfig, TopologyError, desired_topology
from queues.topology.names import QUEUE_ARGUMENTS, UNROUTABLE_EXCHANGE
from queues.topology.rabbitmqctl import Rabbitmqctl

Action = Literal["created", "updated", "unchanged"]


# ── apply ──────────────────────────────────────────────────────────────────────────────────────


@dataclass(frozen=True)
class Change:
    """What ``apply`` did to one entity."""

    kind: Literal["exchange", "queue", "binding", "policy"]
    name: str
    action: Action
    detail: str = ""

    def to_json(self) -> dict[str, str]:
        return {"kind": self.kind, "name": self.name, "action": self.action, "detail": self.detail}


@dataclass(frozen=True)
class ApplyReport:
    vhost: str
    via: str
    changes: tuple[Change, ...]

    @property
    def changed(self) -> tuple[Change, ...]:
        return tuple(c for c in self.changes if c.action != "unchanged")

    def to_json(self) -> dict[str, Any]:
        return {
            "vhost": self.vhost,
            "policies_via": self.via,
            "changed": len(self.changed),
            "changes": [c.to_json() for c in self.changes],
        }


def _connect(address: BrokerAddress) -> pika.BlockingConnection:
    try:
        return pika.BlockingConnection(pika.URLParameters(address.url))
    except pika.exceptions.AMQPError as exc:
        raise TopologyError(
            f"cannot connect to {address.host}:{address.port} vhost {address.vhost!r} "
            f"as {address.username} ({type(exc).__name__}): check the URL, vhost and credentials"
        ) from None


def apply(
    url: str,
    config: TopologyConfig | None = None,
    *,
    via: PolicyVia = "auto",
    management_url: str | None = None,
    ctl: Rabbitmqctl | None = None,
) -> ApplyReport:
    """Make the vhost of ``url`` match the desired topology; idempotent.

    Policies first (so a new queue is governed from its first message), then exchanges, queues
    and bindings over AMQP. Nothing is deleted or re-declared differently: a changed tunable is
    a changed policy, applied live to queues that keep their messages.

    Raises:
        TopologyError: the broker is unreachable, or an entity exists in a form that can only be
            fixed by deleting it (e.g. a classic queue named like a fleet queue).
    """
    address = BrokerAddress.parse(url)
    topology = desired_topology(config)
    admin = broker_admin(address, via, management_url, ctl)
    state = admin.read_state(address.vhost)
    conflicts = [
        f"exchange {e.name}: {'; '.join(problems)}"
        for e in topology.exchanges
        if e.name in state.exchanges
        and (problems := exchange_differences(e, state.exchanges[e.name]))
    ] + [
        f"queue {q.name}: {'; '.join(problems)}"
        for q in topology.queues
        if q.name in state.queues and (problems := queue_differences(state.queues[q.name]))
    ]
    if conflicts:
        raise TopologyError(
            f"{conflicts[0]}{f' (and {len(conflicts) - 1} more)' if len(conflicts) > 1 else ''}"
            " — cannot change in place: see `fleet topology check` for what to do"
        )

    changes: list[Change] = []
    admin.set_policies(
        address.vhost,
        [
            policy
            for policy in topology.policies
            if not ((have := state.policies.get(policy.name)) and have.same_as(policy))
        ],
    )
    for policy in topology.policies:
        have = state.policies.get(policy.name)
        if have is not None and have.same_as(policy):
            changes.append(Change("policy", policy.name, "unchanged"))
        elif have is None:
            changes.append(Change("policy", policy.name, "created"))
        else:
            changes.append(Change("policy", policy.name, "updated", definition_diff(have, policy)))

    connection = _connect(address)
    try:
        channel = connection.channel()
        # The alternate exchange first, so "fleet" never exists without it.
        for exchange in sorted(topology.exchanges, key=lambda e: e.name != UNROUTABLE_EXCHANGE):
            channel.exchange_declare(
                exchange.name,
                exchange.type,
                durable=True,
                internal=exchange.internal,
                arguments=dict(exchange.arguments) or None,
            )
            action: Action = "unchanged" if exchange.name in state.exchanges else "created"
            changes.append(Change("exchange", exchange.name, action))
        for queue in topology.queues:
            channel.queue_declare(queue.name, durable=True, arguments=dict(QUEUE_ARGUMENTS))
            action = "unchanged" if queue.name in state.queues else "created"
            changes.append(Change("queue", queue.name, action))
        for binding in topology.bindings:
            channel.queue_bind(binding.destination, binding.source, binding.routing_key)
            action = "unchanged" if binding in state.bindings else "created"
            changes.append(Change("binding", str(binding), action))
    except pika.exceptions.ChannelClosedByBroker as exc:
        raise TopologyError(
            f"broker refused a declare ({exc.reply_code} {exc.reply_text}): "
            "the user needs the fleet-admin permissions"
        ) from None
    finally:
        if connection.is_open:
            connection.close()
    return ApplyReport(vhost=address.vhost, via=admin.name, changes=tuple(changes))


# ── check ──────────────────────────────────────────────────────────────────────────────────────


@dataclass(frozen=True)
class CheckReport:
    vhost: str
    via: str
    findings: tuple[Finding, ...]

    @property
    def ok(self) -> bool:
        return not self.findings

    def to_json(self) -> dict[str, Any]:
        return {
            "vhost": self.vhost,
            "via": self.via,
            "ok": self.ok,
            "findings": [f.to_json() for f in self.findings],
        }


def check(
    url: str,
    config: TopologyConfig | None = None,
    *,
    via: PolicyVia = "auto",
    management_url: str | None = None,
    ctl: Rabbitmqctl | None = None,
) -> CheckReport:
    """Compare the vhost of ``url`` with the desired topology; changes nothing.

    Raises:
        TopologyError: the broker cannot be inspected.
    """
    address = BrokerAddress.parse(url)
    admin = broker_admin(address, via, management_url, ctl)
    state = admin.read_state(address.vhost)
    findings = compare(desired_topology(config), state, address.vhost)
    return CheckReport(vhost=address.vhost, via=admin.name, findings=tuple(findings))
