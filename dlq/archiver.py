"""The archiver: every ``<queue>.dead`` and ``unroutable`` into the ``dead_letters`` table.

    <domain>.dead, unroutable ─▶ batch (≤ prefetch) ─▶ INSERT … ON CONFLICT (death_key) DO NOTHING
                                                     ─▶ COMMIT ─▶ basic.ack (multiple)

Acks only after the commit: a crash before the ack returns the batch to its queues, and the
redelivered copies hit the same ``death_key`` and are skipped — nothing lost, nothing twice.
Several archivers may run at once (each gets its own deliveries; the unique key settles races).

Which row a delivery becomes, and its ``death_key``, is ``dlq.deaths``. This module takes the
broker URL, the engine and its tunables as arguments; the process that reads them from the
settings is ``workers.processes.run_archiver``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pika
import pika.adapters.blocking_connection
import pika.spec
from pika.exceptions import AMQPError
from sqlalchemy import Engine, text
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.exc import SQLAlchemyError

from dlq.deaths import Received, safe_describe
from dlq.models import DeadLetter
from queues.topology import DOMAINS, UNROUTABLE_QUEUE, dead_queue

log = logging.getLogger(__name__)

ARCHIVED_QUEUES: tuple[str, ...] = (*(dead_queue(d) for d in DOMAINS), UNROUTABLE_QUEUE)
DEFAULT_BATCH = 100
DEFAULT_LINGER_S = 0.2
# The archiver's one crash point, for tests: stored but not yet acked.
FAULT_AFTER_COMMIT = "archive_after_commit_before_ack"

FaultHook = Callable[[str], None]
"""Called at each crash point with its name; the process main decides whether to crash there."""


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
