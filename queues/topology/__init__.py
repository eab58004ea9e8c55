"""The broker topology: exchanges, quorum queues, bindings and the policies that tune them.

docs/topology.md explains the shape:

    upstream ─▶ fleet (topic) ── billing.# / provisioning.# / crm.# ─▶ <domain>   (quorum)
                 │  crm.customer.upsert ─▶ billing (fan-out)
                 └─ no binding ─▶ alternate exchange fleet.unroutable (fanout) ─▶ unroutable
    worker  ─▶ fleet.retry (direct) ── <domain>.<tier> ─▶ <domain>.retry.<tier>
                 │                                        └ TTL ─▶ default exchange ─▶ <domain>
                 └─ <domain>.suspect ─▶ <domain>.suspect
    worker  ─▶ fleet.dead (direct) ── <domain> ─▶ <domain>.dead
    operator ─▶ fleet.replay (direct) ── <domain> ─▶ <domain>        (never re-fanned out)

The only declare argument of a queue is ``x-queue-type: quorum``. Every tunable (delivery limit,
dead-letter exchange and key, dead-letter strategy, overflow, max length, tier TTL) is a policy,
because a declare argument can never change on a live queue (406 PRECONDITION_FAILED) while a
policy changes in place. One policy per queue, named ``fleet.<queue>``, pattern ``^<queue>$``:
RabbitMQ applies only the highest-priority matching policy, so each carries all of its keys.

The declarations are values, kept apart from the act of declaring:

- ``names``        the domains, the exchanges, how queues, routing keys and policies are named
- ``entities``     ``Exchange``, ``Queue``, ``Binding``, ``Policy``, ``TopologyConfig`` and
                   ``desired_topology(config)``, the whole vhost as one value
- ``export``       the description as RabbitMQ definitions JSON (deploy/rabbitmq/definitions.json)
- ``state``        what the broker has (``BrokerState``) and the ``BrokerAdmin`` interface
- ``management``   the management HTTP API as an admin backend
- ``rabbitmqctl``  ``rabbitmqctl`` on the broker's own machine as an admin backend
- ``admin``        which backend a broker URL gets
- ``differences``  how a ``BrokerState`` differs from a ``Topology`` (pure)
- ``reconcile``    ``apply`` (idempotent) and ``check`` against a live vhost, over AMQP (pika)

Every name is importable from ``queues.topology``. The values load with the package; the admin
backends and reconcile (pika, subprocess, urllib) load on first use, so a caller that only needs
a queue's name loads no broker client. The package imports only pika, the standard library and
``queues``.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from queues.topology.entities import (
    Binding,
    Exchange,
    ExchangeType,
    Policy,
    Queue,
    Topology,
    TopologyConfig,
    TopologyError,
    TopologySettings,
    desired_topology,
)
from queues.topology.export import definitions, render_definitions
from queues.topology.names import (
    DEAD_EXCHANGE,
    DEFAULT_EXCHANGE,
    DOMAINS,
    FAN_OUTS,
    FLEET_EXCHANGE,
    POLICY_PREFIX,
    POLICY_PRIORITY,
    QUEUE_ARGUMENTS,
    REPLAY_EXCHANGE,
    RETRY_EXCHANGE,
    UNROUTABLE_EXCHANGE,
    UNROUTABLE_QUEUE,
    dead_queue,
    policy_name,
    queues_of,
    retry_queue,
    retry_routing_key,
    suspect_queue,
    suspect_routing_key,
    tier_name,
)

if TYPE_CHECKING:
    from queues.topology.admin import MANAGEMENT_PORT, BrokerAddress, PolicyVia, broker_admin
    from queues.topology.differences import APPLY, Finding, compare
    from queues.topology.management import HttpAdmin
    from queues.topology.rabbitmqctl import Rabbitmqctl, RabbitmqctlAdmin
    from queues.topology.reconcile import Action, ApplyReport, Change, CheckReport, apply, check
    from queues.topology.state import (
        BrokerAdmin,
        BrokerState,
        ExchangeState,
        QueueState,
        serves_amqp,
    )

# Loaded on first use: the name ▶ its module.
_LAZY = {
    **dict.fromkeys(("MANAGEMENT_PORT", "BrokerAddress", "PolicyVia", "broker_admin"), "admin"),
    **dict.fromkeys(("APPLY", "Finding", "compare"), "differences"),
    "HttpAdmin": "management",
    **dict.fromkeys(("Rabbitmqctl", "RabbitmqctlAdmin"), "rabbitmqctl"),
    **dict.fromkeys(
        ("Action", "ApplyReport", "Change", "CheckReport", "apply", "check"), "reconcile"
    ),
    **dict.fromkeys(
        ("BrokerAdmin", "BrokerState", "ExchangeState", "QueueState", "serves_amqp"), "state"
    ),
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


__all__ = [
    "APPLY",
    "DEAD_EXCHANGE",
    "DEFAULT_EXCHANGE",
    "DOMAINS",
    "FAN_OUTS",
    "FLEET_EXCHANGE",
    "MANAGEMENT_PORT",
    "POLICY_PREFIX",
    "POLICY_PRIORITY",
    "QUEUE_ARGUMENTS",
    "REPLAY_EXCHANGE",
    "RETRY_EXCHANGE",
    "UNROUTABLE_EXCHANGE",
    "UNROUTABLE_QUEUE",
    "Action",
    "ApplyReport",
    "Binding",
    "BrokerAddress",
    "BrokerAdmin",
    "BrokerState",
    "Change",
    "CheckReport",
    "Exchange",
    "ExchangeState",
    "ExchangeType",
    "Finding",
    "HttpAdmin",
    "Policy",
    "PolicyVia",
    "Queue",
    "QueueState",
    "Rabbitmqctl",
    "RabbitmqctlAdmin",
    "Topology",
    "TopologyConfig",
    "TopologyError",
    "TopologySettings",
    "apply",
    "broker_admin",
    "check",
    "compare",
    "dead_queue",
    "definitions",
    "desired_topology",
    "policy_name",
    "queues_of",
    "render_definitions",
    "retry_queue",
    "retry_routing_key",
    "serves_amqp",
    "suspect_queue",
    "suspect_routing_key",
    "tier_name",
]
