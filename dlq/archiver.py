"""The archiver: every ``<queue>.dead`` and ``unroutable`` into the ``dead_letters`` table.

    <domain>.dead, unroutable ─▶ batch (≤ prefetch) ─▶ INSERT … ON CONFLICT (death_key) DO NOTHING
                                                     ─▶ COMMIT ─▶ basic.ack (multiple)

Acks only after the commit: a crash before the ack returns the batch to its queues, and the
redelivered copies hit the same ``death_key`` and are skipped — nothing lost, nothing twice.
Several archivers may run at once (each gets its own deliveries; the unique key settles races).

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
import os
import signal
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from types import FrameType
from typing import Any

import pika
import pika.adapters.blocking_connection
import pika.spec
from pika.exceptions import AMQPError
from sqlalchemy import Engine, text
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.exc import SQLAlchemyError

from dlq.models import DeadLetter
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
    H_TRACEBACK,
    H_WORKER_HOST,
    H_WORKER_PID,
    fleet_headers,
    trusted_fleet_headers,
)
from queues.envelope import peek_header, peek_raw_header
from queues.errors import FleetError
from queues.topology import DOMAINS, UNROUTABLE_QUEUE, dead_queue

log = logging.getLogger(__name__)

ARCHIVED_QUEUES: tuple[str, ...] = (*(dead_queue(d) for d in DOMAINS), UNROUTABLE_QUEUE)
DEFAULT_BATCH = 100
DEFAULT_LINGER_S = 0.2
FAULT_AFTER_COMMIT = "archive_after_commit_before_ack"
# Headers that say nothing about the death, or have columns of their own.
_SKIPPED_HEADERS = frozenset({"x-death", "x-delivery-count", H_TRACEBACK})

FaultHook = Callable[[str], None]


# ── one delivery ▶ one row ─────────────────────────────────────────────────────────────────────


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
    identity = [
        {k: d.get(k) for k in ("queue", "reason", "count", "time", "exchange")} for d in entries
    ]
    # Dead straight after a publisher's delivery: its x-fleet-* are the publisher's, not ours.
    fleet = trusted_fleet_headers(received.headers, exchange)
    reason = _text(latest.get("reason")) or "unknown"
    return (
        {
            "death_key": "broker:" + _digest(identity, message_id, body_sha256),
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


# ── storing ────────────────────────────────────────────────────────────────────────────────────

_COLUMNS = frozenset(c.name for c in DeadLetter.__table__.columns) - {"id"}

_LINK_PREVIOUS = text(
    """
    UPDATE dead_letters AS d
       SET previous_id = (SELECT max(p.id) FROM dead_letters AS p
                           WHERE p.message_id = d.message_id AND p.queue = d.queue
                             AND p.id < d.id)
     WHERE d.id = ANY(:ids) AND d.message_id IS NOT NULL AND d.previous_id IS NULL
    """
)


def store(engine: Engine, rows: Sequence[Mapping[str, Any]]) -> list[int]:
    """Insert rows in one transaction, skipping deaths already archived; the new ids.

    A death that follows an earlier one of the same message on the same queue (a replay that
    died again) is linked to it through ``previous_id``.
    """
    if not rows:
        return []
    # One statement for the batch: every row names the same columns (absent ▶ NULL).
    names = sorted({k for row in rows for k in row} & _COLUMNS)
    values = [{name: row.get(name) for name in names} for row in rows]
    statement = (
        insert(DeadLetter)
        .on_conflict_do_nothing(index_elements=[DeadLetter.death_key])
        .returning(DeadLetter.id)
    )
    with engine.begin() as connection:
        ids = [int(i) for i in connection.execute(statement, values).scalars().all()]
        if ids:
            connection.execute(_LINK_PREVIOUS, {"ids": ids})
    return ids


# ── consuming ──────────────────────────────────────────────────────────────────────────────────


@dataclass
class ArchiverStats:
    received: int = 0
    archived: int = 0
    already_archived: int = 0
    batches: int = 0
    failures: int = 0


class Archiver:
    """Consumes the dead-letter queues into the archive until told to stop."""

    def __init__(
        self,
        url: str,
        engine: Engine,
        *,
        queues: Iterable[str] = ARCHIVED_QUEUES,
        batch_size: int = DEFAULT_BATCH,
        linger_s: float = DEFAULT_LINGER_S,
        fault_hook: FaultHook | None = None,
        heartbeat_s: int = 30,
    ) -> None:
        self.parameters = pika.URLParameters(url)
        self.parameters.heartbeat = heartbeat_s
        self.parameters.connection_attempts = 1
        self.engine = engine
        self.queues = tuple(queues)
        self.batch_size = batch_size
        self.linger_s = linger_s
        self.fault_hook = fault_hook or (lambda point: None)
        self.stats = ArchiverStats()
        self._pending: list[tuple[int, Received]] = []
        self._first_pending_at = 0.0
        self._queue_of_tag: dict[str, str] = {}

    def run(self, stopping: threading.Event) -> None:
        """Archive until ``stopping`` is set; reconnects (with backoff) on broker or DB trouble."""
        delay = 0.5
        while not stopping.is_set():
            started = time.monotonic()
            try:
                self._consume(stopping)
                continue
            except AMQPError as exc:
                log.warning("archiver lost the broker (%s); reconnecting", type(exc).__name__)
            except SQLAlchemyError as exc:
                log.warning("archiver cannot store (%s); retrying", type(exc).__name__)
            self.stats.failures += 1
            delay = 0.5 if time.monotonic() - started > 30 else min(delay * 2, 10.0)
            stopping.wait(delay)

    def drain(self, idle_s: float = 1.0, timeout_s: float = 60.0) -> None:
        """Archive until the queues stay empty for ``idle_s`` (tests, one-shot runs)."""
        stopping = threading.Event()
        last = [time.monotonic(), 0]

        def watch() -> None:
            deadline = time.monotonic() + timeout_s
            while not stopping.wait(0.1):
                if self.stats.received != last[1]:
                    last[:] = [time.monotonic(), self.stats.received]
                if time.monotonic() - last[0] > idle_s and not self._pending:
                    stopping.set()
                if time.monotonic() > deadline:
                    stopping.set()

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        self._consume(stopping)
        watcher.join()

    def _consume(self, stopping: threading.Event) -> None:
        connection = pika.BlockingConnection(self.parameters)
        try:
            channel = connection.channel()
            channel.basic_qos(prefetch_count=self.batch_size)
            self._pending = []
            self._queue_of_tag = {
                channel.basic_consume(q, self._on_message): q for q in self.queues
            }
            log.info("archiving %s", ", ".join(self.queues))
            while not stopping.is_set():
                connection.process_data_events(time_limit=self.linger_s)
                if self._pending and (
                    len(self._pending) >= self.batch_size
                    or time.monotonic() - self._first_pending_at >= self.linger_s
                ):
                    self._flush(channel)
            for tag in self._queue_of_tag:
                channel.basic_cancel(tag)
            connection.process_data_events(time_limit=0)
            self._flush(channel)
        finally:
            self._pending = []
            if connection.is_open:
                connection.close()

    def _on_message(
        self,
        _channel: pika.adapters.blocking_connection.BlockingChannel,
        method: pika.spec.Basic.Deliver,
        properties: pika.BasicProperties,
        body: bytes,
    ) -> None:
        if not self._pending:
            self._first_pending_at = time.monotonic()
        self.stats.received += 1
        self._pending.append(
            (
                method.delivery_tag,
                Received(
                    source=self._queue_of_tag.get(str(method.consumer_tag), ""),
                    exchange=method.exchange,
                    routing_key=method.routing_key,
                    body=body,
                    headers=dict(properties.headers or {}),
                    message_id=properties.message_id,
                    message_type=properties.type,
                    timestamp=properties.timestamp,
                ),
            )
        )

    def _flush(self, channel: pika.adapters.blocking_connection.BlockingChannel) -> None:
        if not self._pending:
            return
        batch, self._pending = self._pending, []
        last_tag = batch[-1][0]
        try:
            ids = store(self.engine, [safe_describe(received) for _, received in batch])
        except SQLAlchemyError:
            # Not stored: give the batch back; it comes again, and ON CONFLICT absorbs
            # any part that did commit before the error was reported.
            channel.basic_nack(delivery_tag=last_tag, multiple=True, requeue=True)
            raise
        self.fault_hook(FAULT_AFTER_COMMIT)
        channel.basic_ack(delivery_tag=last_tag, multiple=True)
        self.stats.batches += 1
        self.stats.archived += len(ids)
        self.stats.already_archived += len(batch) - len(ids)
        log.info("archived %d dead letters (%d already archived)", len(ids), len(batch) - len(ids))


# ── the process ────────────────────────────────────────────────────────────────────────────────


def run_archiver() -> int:
    """The archiver as a process of its own (``fleet dlq archive``, or a Dramatiq fork function
    of ``fleet worker --archiver``): settings from the environment, stops on SIGTERM / SIGINT."""
    from handlers.store.db import make_engine
    from workers.settings import get_settings

    settings = get_settings()
    stopping = threading.Event()

    def stop(_signum: int, _frame: FrameType | None) -> None:
        stopping.set()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    engine = make_engine(
        settings.database_url.get_secret_value(),
        settings.db_schema,
        pool_size=1,
        max_overflow=1,
        application_name="fleet-archiver",
    )
    fault = settings.fault_at
    marker = settings.fault_marker

    def fault_hook(point: str) -> None:
        if point != fault:
            return
        if marker is not None:
            try:
                os.close(os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
            except FileExistsError:
                return
        os._exit(137)

    archiver = Archiver(
        settings.amqp_url.get_secret_value(),
        engine,
        batch_size=settings.archiver_batch_size,
        fault_hook=fault_hook if fault == FAULT_AFTER_COMMIT else None,
        heartbeat_s=settings.amqp_heartbeat_s,
    )
    try:
        archiver.run(stopping)
    finally:
        engine.dispose()
    return 0
