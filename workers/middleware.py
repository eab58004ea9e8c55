"""Dramatiq middleware of the fleet: start-up and shutdown of a worker process's runtime.

Shutdown order (DESIGN §8): cancel the consumers first (no new deliveries), let the worker
threads finish in-flight messages within the shutdown timeout, then Dramatiq returns what was
prefetched but not started, and the runtime (publisher, engine) closes last.
"""

from __future__ import annotations

import logging
import os
import signal
from typing import Any

import dramatiq

from workers.broker import FleetBroker
from workers.runtime import close_runtime, current_runtime
from workers.supervisor import die_with_parent

log = logging.getLogger(__name__)

EXIT_RUNTIME_FAILED = 3


class FleetLifecycleMiddleware(dramatiq.Middleware):
    """Builds the runtime when a worker boots (fails the process loudly if it cannot)."""

    def after_process_boot(self, broker: dramatiq.Broker) -> None:
        # A worker process whose Dramatiq master was SIGKILLed stops too, instead of consuming
        # on beside the master's replacement.
        die_with_parent(signal.SIGTERM)

    def after_worker_boot(self, broker: dramatiq.Broker, worker: Any) -> None:
        try:
            current_runtime()
        except Exception:
            # Dramatiq swallows middleware errors; a worker without keys or database must not
            # sit there requeueing every message, so the process dies: `fleet worker` restarts
            # it, and gives up (CRITICAL, exit 1) when it keeps dying.
            log.error("cannot build the worker runtime; stopping", exc_info=True)
            os._exit(EXIT_RUNTIME_FAILED)

    def before_worker_shutdown(self, broker: dramatiq.Broker, worker: Any) -> None:
        if isinstance(broker, FleetBroker):
            broker.cancel_consumers()

    def before_worker_thread_shutdown(self, broker: dramatiq.Broker, thread: Any) -> None:
        """Each worker thread, on its way out, waits for the deferred (batched) messages to be
        decided and settled — while the consumers still run, so their acks reach the broker."""
        runtime = current_runtime()
        if not runtime.flush(runtime.settings.shutdown_timeout_s):
            log.warning("batched messages still undecided at shutdown: the broker returns them")

    def after_worker_shutdown(self, broker: dramatiq.Broker, worker: Any) -> None:
        close_runtime()
