"""One delivery from a dead-letter queue ▶ one ``dead_letters`` row (the archiver stores it).

Three kinds of dead letter, told apart by who wrote them:

- **fleet** — a worker published it to ``fleet.dead`` with ``x-fleet-*`` headers (reason, error,
  attempts, death id…). Key ``fleet:<x-fleet-death-id>``.
- **broker** — RabbitMQ dead-lettered it (delivery limit of a work queue or suspect lane); it
  carries ``x-death``. Any ``x-fleet-*`` header is trusted only when the death did not happen
  straight after a publisher's delivery (exchange ``fleet``), so an upstream cannot forge a death
  id or a reason (``queues.deadletter``). Key ``broker:<sha256 of x-death (queue, reason, count,
  time), message id, body hash>``.
- **unroutable** — published to ``fleet`` with a routing key no queue is bound for; no headers
  are trusted. Key ``unroutable:<sha256 of message id, body hash, publish timestamp>``.

The envelope is stored exactly as received, still encrypted; only its readable header is parsed.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from queues.deadletter import (
    H_ATTEMPTS,
    H_DEATH_ID,
    H_ERROR,
    H_ERROR_CLASS,
    H_EXCHANGE,
    H_FIRST_FAILURE,
    H_LANE,
    H_LAST_FAILURE,
    H_LAST_REASON,
    H_QUEUE,
    H_REASON,
    H_ROUTING_KEY,
    H_SUSPECT_DELIVERIES,
    H_TRACEBACK,
    H_WORKER_HOST,
    H_WORKER_PID,
    fleet_headers,
    trusted_fleet_headers,
)
from queues.envelope import peek_header, peek_raw_header
from queues.errors import FleetError
from queues.topology import UNROUTABLE_QUEUE

log = logging.getLogger(__name__)

# Headers that say nothing about the death, or have columns of their own.
_SKIPPED_HEADERS = frozenset({"x-death", "x-delivery-count", H_TRACEBACK})


@dataclass(frozen=True)
class Received:
    """One delivery from a dead-letter queue, as the archiver got it."""

    source: str
    exchange: str
    routing_key: str
    body: bytes
    headers: Mapping[str, Any] = field(default_factory=dict)
    message_id: str | None = None
    message_type: str | None = None
    timestamp: int | None = None


def json_safe(value: Any) -> Any:
    """AMQP header values as JSON (bytes as UTF-8 or base64, times as RFC 3339, no NULs)."""
    if isinstance(value, bytes):
        try:
            return json_safe(value.decode())
        except UnicodeDecodeError:
            return "base64:" + base64.b64encode(value).decode()
    if isinstance(value, str):
        return value.replace("\x00", "\ufffd")
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)  # JSON (and PostgreSQL's jsonb) has no NaN or infinity
    if isinstance(value, bool | int | float) or value is None:
        return value
    if isinstance(value, datetime):
        return _iso(value)
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, Mapping):
        return {str(json_safe(str(k))): json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    return str(value)


def _iso(moment: datetime) -> str:
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _digest(*parts: Any) -> str:
    canonical = json.dumps(json_safe(list(parts)), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def _time(value: Any) -> datetime | None:
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    if isinstance(value, bytes):
        value = value.decode(errors="replace")
    if isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            return None
        return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
    return None


def _text(value: Any) -> str | None:
    if value is None:
        return None
    safe = json_safe(value)
    return safe if isinstance(safe, str) else json.dumps(safe)


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def domain_of(queue: str) -> str:
    """``billing.suspect`` / ``billing.dead`` ▶ ``billing``."""
    return queue.split(".", 1)[0]


def describe(received: Received) -> dict[str, Any]:
    """The ``dead_letters`` row for one delivery (without ``id``; see the module docstring)."""
    body = received.body
    body_sha256 = hashlib.sha256(body).hexdigest()
    headers = dict(received.headers)
    row: dict[str, Any] = {
        "dead_queue": received.source,
        "body": body,
        "body_sha256": body_sha256,
        "message_id": received.message_id,
        "message_type": received.message_type,
    }
    try:
        row["kid"] = _text(peek_raw_header(body).get("kid"))
        header = peek_header(body)
    except FleetError:
        header = None
    if header is not None:
        row.update(
            message_id=str(header.message_id),
            message_type=header.message_type,
            schema_version=header.schema_version,
            producer=header.producer,
            created_at=header.created_at,
            correlation_id=str(header.correlation_id) if header.correlation_id else None,
        )
    deaths = headers.get("x-death")
    if received.source == UNROUTABLE_QUEUE:
        row.update(_unroutable(received, row["message_id"], body_sha256))
        fleet: dict[str, Any] = {}
    elif isinstance(deaths, list) and deaths:
        broker, fleet = _broker_death(received, deaths, row["message_id"], body_sha256)
        row.update(broker)
    else:
        fleet = fleet_headers(headers)
        row.update(_fleet_death(received, fleet, row["message_id"], body_sha256))
    if fleet:
        row.update(
            error_class=row.get("error_class") or _text(fleet.get(H_ERROR_CLASS)),
            last_reason=_text(fleet.get(H_LAST_REASON)),
            attempts=row.get("attempts") or _int(fleet.get(H_ATTEMPTS)),
            traceback=_text(fleet.get(H_TRACEBACK)),
        )
    row["headers"] = json_safe({k: v for k, v in headers.items() if str(k) not in _SKIPPED_HEADERS})
    for key in ("message_id", "message_type"):
        row[key] = _text(row.get(key)) or None
    return row


def safe_describe(received: Received) -> dict[str, Any]:
    """``describe``, or — should it ever fail on a strange delivery — a minimal row that still
    keeps the body, so that one odd message can never stall the archive."""
    try:
        return describe(received)
    except Exception:
        log.exception("cannot describe a dead letter from %s; archiving it raw", received.source)
        body_sha256 = hashlib.sha256(received.body).hexdigest()
        return {
            "death_key": "raw:" + _digest(received.source, repr(received.headers), body_sha256),
            "dead_queue": received.source,
            "queue": domain_of(received.source),
            "reason": "unknown",
            "error": "the archiver could not read this dead letter's headers",
            "message_id": _text(received.message_id),
            "message_type": _text(received.message_type),
            "body": received.body,
            "body_sha256": body_sha256,
            "headers": {},
        }


def _unroutable(received: Received, message_id: str | None, body_sha256: str) -> dict[str, Any]:
    published = (
        datetime.fromtimestamp(received.timestamp, UTC) if received.timestamp is not None else None
    )
    return {
        "death_key": "unroutable:"
        + _digest(message_id, body_sha256, received.routing_key, received.timestamp),
        "queue": UNROUTABLE_QUEUE,
        "lane": UNROUTABLE_QUEUE,
        "exchange": received.exchange,
        "routing_key": received.routing_key,
        "reason": "unroutable",
        "error": "no queue is bound for this routing key on the fleet exchange",
        "first_failure_at": published,
        "last_failure_at": published,
    }


def _broker_death(
    received: Received, deaths: list[Any], message_id: str | None, body_sha256: str
) -> tuple[dict[str, Any], dict[str, Any]]:
    entries = [d for d in deaths if isinstance(d, Mapping)]
    latest = entries[0] if entries else {}
    lane = _text(latest.get("queue")) or received.source
    exchange = _text(latest.get("exchange"))
    keys = latest.get("routing-keys")
    routing_key = _text(keys[0]) if isinstance(keys, list) and keys else None
    times = [t for t in (_time(d.get("time")) for d in entries) if t is not None]
    # Dead straight after a publisher's delivery: its x-fleet-* are the publisher's, not ours.
    fleet = trusted_fleet_headers(received.headers, exchange)
    reason = _text(latest.get("reason")) or "unknown"
    # One copy of a message dies here once, however often it came back: the key leaves out when
    # and after how many deliveries (x-death's time and count, the suspect lane's delivery
    # count) — a worker that crashed after its suspect-lane copy was confirmed, before the ack,
    # made two copies of one suspect. A retry's or a replay's copy differs in its x-fleet-*.
    stable = {k: v for k, v in fleet.items() if k != H_SUSPECT_DELIVERIES}
    return (
        {
            "death_key": "broker:" + _digest(lane, reason, stable, message_id, body_sha256),
            "queue": domain_of(received.source),
            "lane": lane,
            "exchange": exchange,
            "routing_key": routing_key,
            "reason": reason,
            "error": f"RabbitMQ dead-lettered it from {lane} ({reason})",
            "attempts": _int(latest.get("count")) if reason != "delivery_limit" else None,
            "first_failure_at": _time(fleet.get(H_FIRST_FAILURE))
            or (min(times) if times else None),
            "last_failure_at": max(times) if times else None,
            "x_death": json_safe(entries),
        },
        fleet,
    )


def _fleet_death(
    received: Received, fleet: Mapping[str, Any], message_id: str | None, body_sha256: str
) -> dict[str, Any]:
    death_id = _text(fleet.get(H_DEATH_ID))
    key = (
        f"fleet:{death_id}"
        if death_id
        else "fleet-headers:"
        + _digest({k: v for k, v in fleet.items() if k != H_TRACEBACK}, message_id, body_sha256)
    )
    return {
        "death_key": key,
        "death_id": death_id,
        "queue": _text(fleet.get(H_QUEUE)) or domain_of(received.source),
        "lane": _text(fleet.get(H_LANE)),
        "exchange": _text(fleet.get(H_EXCHANGE)),
        "routing_key": _text(fleet.get(H_ROUTING_KEY)),
        "reason": _text(fleet.get(H_REASON)) or "unknown",
        "error_class": _text(fleet.get(H_ERROR_CLASS)),
        "error": _text(fleet.get(H_ERROR)),
        "attempts": _int(fleet.get(H_ATTEMPTS)),
        "first_failure_at": _time(fleet.get(H_FIRST_FAILURE)),
        "last_failure_at": _time(fleet.get(H_LAST_FAILURE)),
        "worker_host": _text(fleet.get(H_WORKER_HOST)),
        "worker_pid": _int(fleet.get(H_WORKER_PID)),
    }
