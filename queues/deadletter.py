"""The dead-letter headers: the ``x-fleet-*`` history a worker writes on the copies it publishes
(retry, suspect lane, dead letter) and the archiver reads back — and who may be believed.

Not the envelope's protected header (``queues.header``): these are plain AMQP headers, written by
the fleet about a message's failures, outside the sealed envelope.

Trust: a delivery that came straight from a publisher (exchange ``fleet``) carries only what an
upstream wrote, so its ``x-fleet-*`` headers are ignored — an upstream cannot shorten its own
retry budget, fake a history or forge a death id. Only after a fleet hop (a retry tier, the
suspect lane, ``fleet.dead``) are they the fleet's own.

Death ids (``death_id``): one copy of a message dies under one id, however often it is
delivered — a worker that crashes after the dead copy is confirmed and before the ack gets the
copy back, and it dies again (in the suspect lane, perhaps for another reason) under the same
id, which the archive keeps once. A later life of the message dies under another id: a retry's
copy (its attempt) or an operator's replay (its ``x-fleet-replay-of``; a re-sealed body too).
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Mapping
from typing import Any

from queues.topology.names import FLEET_EXCHANGE

PREFIX = "x-fleet-"

# On every retry copy; carried onto later copies and the dead letter.
H_ATTEMPT = "x-fleet-attempt"
H_FIRST_FAILURE = "x-fleet-first-failure"
H_LAST_REASON = "x-fleet-last-reason"
H_LAST_ERROR_CLASS = "x-fleet-last-error-class"
# On a copy moved to the suspect lane: how often the broker had delivered it.
H_SUSPECT_DELIVERIES = "x-fleet-suspect-deliveries"

# On a dead letter the worker publishes to ``fleet.dead``.
H_REASON = "x-fleet-reason"
H_ERROR_CLASS = "x-fleet-error-class"
H_ERROR = "x-fleet-error"
H_ATTEMPTS = "x-fleet-attempts"
H_LAST_FAILURE = "x-fleet-last-failure"
H_WORKER_HOST = "x-fleet-worker-host"
H_WORKER_PID = "x-fleet-worker-pid"
H_DEATH_ID = "x-fleet-death-id"
H_QUEUE = "x-fleet-queue"
H_LANE = "x-fleet-lane"
H_EXCHANGE = "x-fleet-exchange"
H_ROUTING_KEY = "x-fleet-routing-key"
H_TRACEBACK = "x-fleet-traceback"

# On a copy an operator replays from the archive (provenance only).
H_REPLAY_OF = "x-fleet-replay-of"
H_REPLAYED_BY = "x-fleet-replayed-by"


def fleet_headers(headers: Mapping[Any, Any]) -> dict[str, Any]:
    """The ``x-fleet-*`` headers among ``headers``, whoever wrote them."""
    return {k: v for k, v in headers.items() if str(k).startswith(PREFIX)}


def trusted_fleet_headers(headers: Mapping[Any, Any], exchange: str | None) -> dict[str, Any]:
    """The ``x-fleet-*`` headers of a delivery that arrived through ``exchange``; none when that
    is ``fleet``, where only a publisher delivers (see the module docstring)."""
    if exchange == FLEET_EXCHANGE:
        return {}
    return fleet_headers(headers)


# The namespace of death ids (uuid5): fixed, so that every worker derives the same id.
DEATH_ID_NAMESPACE = uuid.UUID("3f0b1c52-7a44-5d7e-9a61-2c1f0e8d4b90")


def death_id(body: bytes, trusted: Mapping[str, Any]) -> str:
    """The death id of the copy with ``body`` and ``trusted`` headers (``trusted_fleet_headers``):
    the same for every delivery of that copy and of its suspect-lane copy (see the module
    docstring)."""
    attempt = trusted.get(H_ATTEMPT)
    replay_of = trusted.get(H_REPLAY_OF)
    name = f"{hashlib.sha256(body).hexdigest()}:{attempt!r}:{replay_of!r}"
    return str(uuid.uuid5(DEATH_ID_NAMESPACE, name))
