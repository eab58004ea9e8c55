"""One process's runtime, built after fork: engine, network element, publisher, lifecycle.

This is the one place that wires dependencies (cosmicpython's bootstrap). Worker processes,
the suspect lane and the outbox relay each build their own on first use.
"""

from __future__ import annotations

import contextvars
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from sqlalchemy import Engine

from handlers import bus
from handlers.batch import batchable
from handlers.context import Outcome
from handlers.network import HttpNetworkElement
from handlers.store.db import make_engine
from handlers.store.uow import UnitOfWork
from queues.envelope import OpenedMessage
from queues.keys import KeyRegistry
from queues.publisher import Publisher
from queues.topology import DOMAINS, tier_name
from workers.breaker import Breakers, CircuitBreaker, QueueControl
from workers.events import EventSink
from workers.lifecycle import Lifecycle, RetryPolicy
from workers.settings import Settings, get_settings
from workers.writer import BatchWriter

FAULT_POINTS = frozenset(
    {
        "before_commit",
        "mid_batch",
        "after_commit_before_ack",
        "after_retry_publish_before_ack",
        "after_suspect_publish_before_ack",
        "after_dead_publish_before_ack",
        "relay_after_claim_before_publish",
        "relay_after_publish_before_commit",
    }
)
KILLED_EXIT_CODE = 137


class Faults:
    """Deterministic crash points, for tests only (``FLEET_FAULT_*``; off by default)."""

    def __init__(self, settings: Settings) -> None:
        if settings.fault_at is not None and settings.fault_at not in FAULT_POINTS:
            raise ValueError(f"FLEET_FAULT_AT must be one of {sorted(FAULT_POINTS)}")
        self.point = settings.fault_at
        self.marker = settings.fault_marker
        self.poison = frozenset(settings.fault_crash_message_ids)

    def before_batch_commit(self, size: int) -> None:
        """The batch writer's hook: ``before_commit`` for any batch, ``mid_batch`` for 2 or more."""
        self("before_commit", None)
        if size >= 2:
            self("mid_batch", None)

    def __call__(self, point: str, opened: OpenedMessage | None) -> None:
        if (
            point == "before_handle"
            and opened is not None
            and str(opened.header.message_id) in (self.poison)
        ):
            os._exit(KILLED_EXIT_CODE)
        if point != self.point:
            return
        if self.marker is not None:
            try:
                os.close(os.open(self.marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
            except FileExistsError:
                return  # crashed here once already
        os._exit(KILLED_EXIT_CODE)


class _FaultyUnitOfWork(UnitOfWork):
    def __init__(self, engine: Engine, faults: Faults) -> None:
        super().__init__(engine)
        self._faults = faults

    def commit(self) -> None:
        self._faults("before_commit", None)
        super().commit()


class Batcher:
    """The lifecycle's way to the batch writer (``workers.lifecycle.Batcher``).

    Answers run in the writer thread, in the context (log and metrics fields) of the worker
    thread that handed the message over; a message the batch cannot take runs on the one-message
    path in a thread of its own, so the writer never waits for one. One thread: with the
    writer's connection and the worker threads' that is ``worker_threads + 2`` connections at
    most, the process's pool (``pool_size`` + ``max_overflow``: the connection budget).
    """

    def __init__(self, writer: BatchWriter) -> None:
        self.writer = writer
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="fleet-alone")
        self._idle = threading.Condition()
        self._running = 0

    def accepts(self, queue: str, opened: OpenedMessage) -> bool:
        return batchable(queue, opened.header.message_type)

    def submit(
        self, queue: str, opened: OpenedMessage, then: Callable[[Outcome | None], None]
    ) -> None:
        context = contextvars.copy_context()
        self.writer.submit(queue, opened, lambda outcome: context.run(then, outcome))

    def alone(self, work: Callable[[], None]) -> None:
        context = contextvars.copy_context()
        with self._idle:
            self._running += 1

        def run() -> None:
            try:
                context.run(work)
            finally:
                with self._idle:
                    self._running -= 1
                    self._idle.notify_all()

        self._pool.submit(run)

    def flush(self, timeout_s: float) -> bool:
        """Wait until the writer has answered everything and the one-message runs are done."""
        deadline = time.monotonic() + timeout_s
        if not self.writer.flush(timeout_s):
            return False
        with self._idle:
            return self._idle.wait_for(
                lambda: self._running == 0, timeout=max(0.0, deadline - time.monotonic())
            )

    def close(self) -> None:
        self.writer.close()
        self._pool.shutdown(wait=True)


@dataclass
class Runtime:
    settings: Settings
    keys: KeyRegistry
    engine: Engine
    network: HttpNetworkElement
    publisher: Publisher
    events: EventSink
    lifecycle: Lifecycle
    breakers: Breakers
    faults: Faults
    batcher: Batcher | None = None

    def flush(self, timeout_s: float) -> bool:
        """Wait until every deferred message is decided and settled; False on timeout."""
        return self.batcher is None or self.batcher.flush(timeout_s)

    def close(self) -> None:
        self.breakers.close()
        if self.batcher is not None:
            self.batcher.close()
        if self.settings.keys_file is not None:
            self.keys.flush_usage(self.settings.keys_file)  # for `fleet keys list`
        self.publisher.close()
        self.network.close()
        self.engine.dispose()
        self.events.close()


def retry_policy(settings: Settings) -> RetryPolicy:
    return RetryPolicy(
        tiers=tuple((tier_name(s), s) for s in settings.retry_tiers_s),
        max_attempts=settings.max_attempts,
        skew_max_attempts=settings.skew_max_attempts,
        not_yet_horizon_s=settings.not_yet_horizon_s,
    )


def build_runtime(settings: Settings | None = None) -> Runtime:
    """Everything a worker process needs, connected (call it after fork)."""
    settings = settings or get_settings()
    keys = settings.key_registry()
    engine = make_engine(
        settings.database_url.get_secret_value(),
        settings.db_schema,
        pool_size=settings.worker_threads,
        pre_ping=False,  # a dead connection is a transient failure, not a round trip per message
    )
    network = HttpNetworkElement(
        settings.network_url,
        timeout_s=settings.network_timeout_s,
        attempts=settings.network_attempts,
    )
    publisher = Publisher(
        settings.amqp_url.get_secret_value(),
        keys,
        settings.producer,
        window=settings.publish_window,
        confirm_timeout_s=settings.publish_timeout_s,
        max_body_bytes=settings.max_body_bytes,
        heartbeat_s=settings.amqp_heartbeat_s,
    )
    events = EventSink(settings.events_file)
    faults = Faults(settings)

    def new_uow() -> UnitOfWork:
        return (
            _FaultyUnitOfWork(engine, faults)
            if faults.point == "before_commit"
            else UnitOfWork(engine)
        )

    writer = (
        BatchWriter(
            engine,
            max_messages=settings.batch_max_messages,
            max_wait_s=settings.batch_wait_ms / 1000,
            events=events,
            before_commit=faults.before_batch_commit,
        )
        if settings.batch_max_messages > 1
        else None
    )

    def apply(queue: str, opened: OpenedMessage) -> str:
        header = opened.header
        return str(bus.handle(queue, header.message_id, header, opened.payload, new_uow, network))

    batcher = Batcher(writer) if writer is not None else None

    breakers = Breakers(
        CircuitBreaker(
            name,
            domains,
            pause=_consumer_control.pause,
            resume=_consumer_control.resume,
            restore=_consumer_control.restore,
            failure_threshold=settings.breaker_failure_threshold,
            open_s=settings.breaker_open_s,
        )
        for name, domains in (("database", tuple(DOMAINS)), ("network", ("provisioning",)))
    )
    lifecycle = Lifecycle(
        keys=keys,
        publisher=publisher,
        apply=apply,
        policy=retry_policy(settings),
        events=events,
        max_body_bytes=settings.max_body_bytes,
        fault_hook=faults,
        breakers=breakers,
        batcher=batcher,
    )
    return Runtime(
        settings, keys, engine, network, publisher, events, lifecycle, breakers, faults, batcher
    )


@dataclass
class ConsumerControl:
    """How breakers pause and resume consumption; the app wires its broker in."""

    pause: QueueControl = lambda _domains: None
    resume: QueueControl = lambda _domains: None
    restore: QueueControl = lambda _domains: None


_consumer_control = ConsumerControl()


def set_consumer_control(
    pause: QueueControl, resume: QueueControl, restore: QueueControl = lambda _domains: None
) -> None:
    """Let circuit breakers pause and resume this process's consumers (``workers.app``)."""
    _consumer_control.pause = pause
    _consumer_control.resume = resume
    _consumer_control.restore = restore


_runtime: Runtime | None = None
_runtime_pid: int | None = None
_lock = threading.Lock()


def current_runtime() -> Runtime:
    """This process's runtime, built on first use (never inherited across fork)."""
    global _runtime, _runtime_pid
    with _lock:
        if _runtime is None or _runtime_pid != os.getpid():
            _runtime = build_runtime()
            _runtime_pid = os.getpid()
        return _runtime


def close_runtime() -> None:
    global _runtime
    with _lock:
        if _runtime is not None and _runtime_pid == os.getpid():
            _runtime.close()
        _runtime = None
