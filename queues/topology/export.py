"""The desired topology as RabbitMQ definitions JSON, committed as deploy/rabbitmq/definitions.json
(``fleet topology export``; a unit test fails when the committed file drifts from the code)."""

from __future__ import annotations

import json
from typing import Any

from queues.topology.entities import Policy, TopologyConfig, desired_topology
from queues.topology.names import QUEUE_ARGUMENTS


def definitions(config: TopologyConfig | None = None, vhost: str = "/") -> dict[str, Any]:
    """The desired state as RabbitMQ definitions JSON (``rabbitmqctl import_definitions``).

    No users or permissions: passwords never live in the repository (see queues.roles).
    """
    topology = desired_topology(config)
    return {
        "vhosts": [{"name": vhost}],
        "exchanges": [
            {
                "name": e.name,
                "vhost": vhost,
                "type": e.type,
                "durable": True,
                "auto_delete": False,
                "internal": e.internal,
                "arguments": dict(e.arguments),
            }
            for e in topology.exchanges
        ],
        "queues": [
            {
                "name": q.name,
                "vhost": vhost,
                "durable": True,
                "auto_delete": False,
                "arguments": dict(QUEUE_ARGUMENTS),
            }
            for q in topology.queues
        ],
        "bindings": [
            {
                "source": b.source,
                "vhost": vhost,
                "destination": b.destination,
                "destination_type": "queue",
                "routing_key": b.routing_key,
                "arguments": {},
            }
            for b in topology.bindings
        ],
        "policies": [policy_json(vhost, p) for p in topology.policies],
    }


def render_definitions(config: TopologyConfig | None = None, vhost: str = "/") -> str:
    """``definitions`` as stable text (sorted keys, trailing newline), as committed."""
    return json.dumps(definitions(config, vhost), indent=2, sort_keys=True) + "\n"


def policy_json(vhost: str, policy: Policy) -> dict[str, Any]:
    """One policy as the definitions JSON (and the management API) spell it."""
    return {
        "vhost": vhost,
        "name": policy.name,
        "pattern": policy.pattern,
        "apply-to": policy.apply_to,
        "definition": dict(policy.definition),
        "priority": policy.priority,
    }
