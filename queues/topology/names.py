"""The topology's names: the domains, the exchanges, and how every queue, key and policy is named.

Plain values and string functions, no I/O: what a publisher, a worker or the archiver needs to
know where a message goes, without loading anything that talks to a broker.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

DOMAINS: tuple[str, ...] = ("billing", "provisioning", "crm")

FLEET_EXCHANGE = "fleet"
UNROUTABLE_EXCHANGE = "fleet.unroutable"
RETRY_EXCHANGE = "fleet.retry"
DEAD_EXCHANGE = "fleet.dead"
REPLAY_EXCHANGE = "fleet.replay"
UNROUTABLE_QUEUE = "unroutable"
DEFAULT_EXCHANGE = ""

QUEUE_ARGUMENTS: Mapping[str, Any] = {"x-queue-type": "quorum"}
POLICY_PREFIX = "fleet."
# Above the 0 of a stray catch-all policy: RabbitMQ applies only the highest-priority match.
POLICY_PRIORITY = 10

# Types that fan out beyond their own domain's queue: billing mirrors the account holder.
FAN_OUTS: Mapping[str, tuple[str, ...]] = {"crm.customer.upsert": ("billing",)}


def tier_name(seconds: int) -> str:
    """The name of a retry tier: 5 ▶ ``5s``, 120 ▶ ``2m``, 3600 ▶ ``1h``, 90 ▶ ``90s``."""
    if seconds % 3600 == 0:
        return f"{seconds // 3600}h"
    if seconds % 60 == 0:
        return f"{seconds // 60}m"
    return f"{seconds}s"


def suspect_queue(domain: str) -> str:
    return f"{domain}.suspect"


def retry_queue(domain: str, seconds: int) -> str:
    return f"{domain}.retry.{tier_name(seconds)}"


def retry_routing_key(domain: str, seconds: int) -> str:
    """The key on ``fleet.retry`` that parks a message of ``domain`` in a tier."""
    return f"{domain}.{tier_name(seconds)}"


def suspect_routing_key(domain: str) -> str:
    """The key on ``fleet.retry`` that moves a crash suspect to its lane."""
    return f"{domain}.suspect"


def dead_queue(domain: str) -> str:
    return f"{domain}.dead"


def policy_name(queue: str) -> str:
    return f"{POLICY_PREFIX}{queue}"


def queues_of(message_type: str) -> tuple[str, ...]:
    """The work queues a type published to ``fleet`` lands in (its domain's, then fan-outs)."""
    domain = message_type.split(".", 1)[0]
    own = (domain,) if domain in DOMAINS else ()
    return own + tuple(q for q in FAN_OUTS.get(message_type, ()) if q not in own)
