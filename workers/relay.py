"""The outbox relay: publishes follow-up messages that handlers committed with their effects.

Each pass locks a batch of unsent rows with ``FOR UPDATE SKIP LOCKED`` (so several relays never
take the same row), seals them under the fleet's producer key with **the row's message id**,
publishes them with streaming confirms, and marks ``sent_at`` only for confirmed ones — in the
same transaction that holds the locks. A crash between publish and commit re-publishes the
batch with the same ids; consumers absorb the copies in their inbox.

Every ``outbox_lag_interval_s`` the relay reports the outbox lag (age of the oldest unsent row)
and its publisher's counters to the metrics (``workers.observability.metrics``).
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from types import FrameType

from pydantic import ValidationError
from sqlalchemy import Engine, func, select, text

from handlers.store.models import Outbox
from queues.contracts import CATALOGUE
from queues.envelope import OpenedMessage, SealedMessage
from queues.errors import FleetError
from queues.publisher import Publisher
from workers.observability.metrics import fleet_metrics, forget_this_process
from workers.runtime import Runtime, close_runtime, current_runtime

log = logging.getLogger(__name__)

DEFAULT_BATCH = 200
IDLE_SLEEP_S = 0.2
FAULT_AFTER_CLAIM = "relay_after_claim_before_publish"
FAULT_AFTER_PUBLISH = "relay_after_publish_before_commit"


# Built once: the relay runs a pass every IDLE_SLEEP_S, and one per batch under load.
_CLAIM = text(
    "SELECT id, message_id, message_type, schema_version, payload, correlation_id FROM outbox "
    "WHERE sent_at IS NULL ORDER BY id LIMIT :batch FOR UPDATE SKIP LOCKED"
)
_COUNT_ATTEMPT = text(
    "UPDATE outbox SET attempts = attempts + 1 WHERE id = ANY(CAST(:ids AS bigint[]))"
)
_MARK_SENT = text("UPDATE outbox SET sent_at = :now WHERE id = ANY(CAST(:ids AS bigint[]))")


def relay_once(
    engine: Engine,
    publisher: Publisher,
    batch: int = DEFAULT_BATCH,
    fault_hook: Callable[[str, OpenedMessage | None], None] | None = None,
) -> int:
    """Publish one batch of unsent follow-ups; return how many were confirmed."""
    with engine.begin() as connection:
        rows = connection.execute(_CLAIM, {"batch": batch}).all()
        if not rows:
            return 0
        connection.execute(_COUNT_ATTEMPT, {"ids": [row.id for row in rows]})
        sealed: list[tuple[int, SealedMessage]] = []
        for row in rows:
            model = CATALOGUE.get((row.message_type, row.schema_version))
            if model is None:
                log.error(
                    "outbox row %s: %s v%s is not in the catalogue",
                    row.id,
                    row.message_type,
                    row.schema_version,
                )
                continue
            try:
                payload = model.model_validate(row.payload)
                sealed.append(
                    (
                        row.id,
                        publisher.seal(
                            payload, message_id=row.message_id, correlation_id=row.correlation_id
                        ),
                    )
                )
            except (ValidationError, FleetError) as exc:
                log.error("outbox row %s cannot be sealed: %s", row.id, type(exc).__name__)
        if fault_hook is not None:
            fault_hook(FAULT_AFTER_CLAIM, None)
        results = publisher.publish_batch([s for _, s in sealed])
        if fault_hook is not None:
            fault_hook(FAULT_AFTER_PUBLISH, None)
        sent = []
        for (row_id, message), result in zip(sealed, results, strict=True):
            if result.ok:
                sent.append(row_id)
            else:
                log.warning(
                    "outbox %s not published: %s %s",
                    message.message_id,
                    result.status,
                    result.detail,
                )
        if sent:
            connection.execute(_MARK_SENT, {"now": datetime.now(UTC), "ids": sent})
        return len(sent)


def outbox_lag_s(engine: Engine) -> float:
    """Age of the oldest unsent outbox row in seconds (database clock); 0 when drained."""
    with engine.connect() as connection:
        age = connection.execute(
            select(func.extract("epoch", func.now() - Outbox.created_at))
            .where(Outbox.sent_at.is_(None))
            .order_by(Outbox.id)
            .limit(1)
        ).scalar()
    return max(float(age or 0), 0.0)


def report_to_metrics(runtime: Runtime) -> None:
    """The outbox lag and the relay publisher's counters, for Prometheus."""
    metrics = fleet_metrics()
    metrics.outbox_lag.set(outbox_lag_s(runtime.engine))
    metrics.mirror_publisher("relay", runtime.publisher.stats)
    metrics.mirror_sealed(runtime.keys.sealed_counts())


def run_relay(runtime: Runtime, stopping: threading.Event, batch: int = DEFAULT_BATCH) -> None:
    """Relay until ``stopping`` is set."""
    next_report = 0.0
    while not stopping.is_set():
        try:
            sent = relay_once(runtime.engine, runtime.publisher, batch, runtime.faults)
        except Exception:
            log.exception("outbox relay pass failed; trying again")
            sent = 0
        if time.monotonic() >= next_report:
            next_report = time.monotonic() + runtime.settings.outbox_lag_interval_s
            try:
                report_to_metrics(runtime)
            except Exception:
                log.exception("cannot measure the outbox lag; trying again")
        if sent == 0:
            stopping.wait(IDLE_SLEEP_S)


def run_outbox_relay() -> int:
    """The relay as a process of its own (a child of ``fleet worker`` or ``fleet outbox relay``)."""
    stopping = threading.Event()

    def stop(_signum: int, _frame: FrameType | None) -> None:
        stopping.set()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    run_relay(current_runtime(), stopping)
    close_runtime()
    forget_this_process()
    return 0
