"""Prometheus metrics of the fleet, fed by the outcome events and safe across processes.

**Multiprocess.** ``fleet worker`` points ``PROMETHEUS_MULTIPROC_DIR`` at an empty directory
before it forks (``prepare_multiprocess_dir``); every worker, suspect-lane and relay process
then keeps its samples in memory-mapped files there, and the exposition — a child of
``fleet worker`` running ``serve_metrics`` — adds them up with ``MultiProcessCollector``. Without
the variable (a single process, a test) the metrics live in the process's own default registry.

**Fed by events, not by a second copy of the decisions.** The lifecycle emits one outcome event
per message (``workers.events``); ``FleetMetrics.record`` turns each into samples. Publisher
counters are mirrored from ``PublisherStats``; the relay reports the outbox lag.

**Bounded labels.** ``queue`` is a consumed lane, ``type`` a catalogue type or ``unknown`` (an
upstream's AMQP ``type`` property must not mint series), ``reason`` and ``tier`` are the fleet's
own codes, ``kid`` only a registered key's id.
"""

from __future__ import annotations

import glob
import logging
import os
import re
import shutil
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterable
from datetime import datetime
from pathlib import Path
from types import FrameType
from typing import Any

import dramatiq
from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import start_http_server
from prometheus_client.metrics_core import Metric
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead

from queues.contracts import MESSAGE_TYPES
from queues.errors import ENVELOPE_ERRORS
from queues.publisher import PublisherStats
from workers.observability.context import MessageContext, current_message
from workers.observability.health import pid_alive

log = logging.getLogger(__name__)

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
UNKNOWN = "unknown"
OUTCOMES = ("ok", "duplicate", "stale", "retried", "dead", "suspect", "requeued")
COMPLETED = frozenset({"ok", "duplicate", "stale", "dead"})
HANDLED = frozenset({"ok", "duplicate", "stale"})
ENVELOPE_REASONS = frozenset(error.reason for error in ENVELOPE_ERRORS)
PUBLISHER_COUNTERS = ("published", "confirmed", "nacked", "returned", "failed", "republished")

DURATION_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
AGE_BUCKETS_S = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, 7200, 21600)

_LIVE_GAUGE_FILE = re.compile(r"^gauge_live[a-z]+_(\d+)\.db$")


class FleetMetrics:
    """The fleet's metrics in one registry (the process default unless told otherwise)."""

    def __init__(self, registry: CollectorRegistry | None = REGISTRY) -> None:
        self.messages = Counter(
            "fleet_messages",
            "Messages settled, by lane, type and outcome",
            ["queue", "type", "outcome"],
            registry=registry,
        )
        self.handler_duration = Histogram(
            "fleet_handler_duration_seconds",
            "Time from taking a delivery to its outcome (open, validate, handle, settle)",
            ["queue", "type", "outcome"],
            buckets=DURATION_BUCKETS_S,
            registry=registry,
        )
        self.message_age = Histogram(
            "fleet_message_age_seconds",
            "Age at completion, now - created_at of the envelope (the SLA metric)",
            ["queue", "type", "outcome"],
            buckets=AGE_BUCKETS_S,
            registry=registry,
        )
        self.retries = Counter(
            "fleet_retries",
            "Messages parked on a retry tier, by tier and reason",
            ["queue", "tier", "reason"],
            registry=registry,
        )
        self.dead_letters = Counter(
            "fleet_dead_letters",
            "Messages dead-lettered, by reason",
            ["queue", "type", "reason"],
            registry=registry,
        )
        self.envelope_failures = Counter(
            "fleet_envelope_failures",
            "Envelopes that failed to open, by reason (retried or dead-lettered)",
            ["queue", "reason"],
            registry=registry,
        )
        self.envelopes_opened = Counter(
            "fleet_envelope_opened",
            "Envelopes opened per key id (fan-out and retries open one message again)",
            ["kid", "producer"],
            registry=registry,
        )
        self.envelopes_sealed = Counter(
            "fleet_envelope_sealed",
            "Envelopes sealed by this fleet's publishers per key id (the nonce budget)",
            ["kid"],
            registry=registry,
        )
        self.publisher = Counter(
            "fleet_publisher_messages",
            "Publisher results of the fleet's own publishers (retries, dead letters, follow-ups)",
            ["role", "result"],
            registry=registry,
        )
        self.publisher_reconnects = Counter(
            "fleet_publisher_reconnects",
            "Reconnections of the fleet's own publishers",
            ["role"],
            registry=registry,
        )
        self.publisher_blocked = Counter(
            "fleet_publisher_blocked",
            "Times the broker blocked the fleet's own publishers (connection.blocked: memory or "
            "disk alarm)",
            ["role"],
            registry=registry,
        )
        self.outbox_lag = Gauge(
            "fleet_outbox_lag_seconds",
            "Age of the oldest unsent outbox row (0 when drained), as the relay last saw it",
            registry=registry,
            multiprocess_mode="livemax",
        )
        self._mirrored: dict[tuple[str, str], int] = {}
        self._mirrored_snapshots: dict[str, tuple[int, ...]] = {}
        self._lock = threading.Lock()

    # -- from outcome events -------------------------------------------------------------------

    def record(
        self,
        event: dict[str, Any],
        context: MessageContext | None = None,
        *,
        known_kid: Callable[[str], bool] = lambda kid: False,
    ) -> None:
        """Samples for one outcome event (``context``: the message in hand, for kid and timing)."""
        kind = str(event.get("event"))
        if kind not in OUTCOMES:
            return
        queue = str(event.get("queue") or UNKNOWN)
        message_type = _bounded_type(event.get("type"))
        reason = event.get("reason")
        self.messages.labels(queue, message_type, kind).inc()
        duration = event.get("duration_s")
        if duration is None and context is not None:
            duration = time.monotonic() - context.started
        if duration is not None:
            self.handler_duration.labels(queue, message_type, kind).observe(float(duration))
        if kind in COMPLETED:
            age = _age_s(event)
            if age is not None:
                self.message_age.labels(queue, message_type, kind).observe(age)
        if kind == "retried":
            self.retries.labels(queue, str(event.get("tier")), str(reason)).inc()
        if kind == "dead":
            self.dead_letters.labels(queue, message_type, str(reason)).inc()
        envelope_failed = kind in ("retried", "dead") and reason in ENVELOPE_REASONS
        if envelope_failed:
            self.envelope_failures.labels(queue, str(reason)).inc()
        opened = kind in HANDLED or (kind in ("retried", "dead") and not envelope_failed)
        if opened and context is not None and context.kid and known_kid(context.kid):
            self.envelopes_opened.labels(context.kid, str(context.producer)).inc()

    # -- mirrored counters ---------------------------------------------------------------------

    def mirror_publisher(self, role: str, stats: PublisherStats) -> None:
        """Add what a publisher counted since the last call (its stats only ever grow).

        Called after every message, so a publisher that counted nothing new costs one compare.
        """
        names = (*PUBLISHER_COUNTERS, "reconnects", "blocked")
        snapshot = tuple(getattr(stats, name) for name in names)
        if self._mirrored_snapshots.get(role) == snapshot:
            return
        self._mirrored_snapshots[role] = snapshot
        counts = dict(zip(names, snapshot, strict=True))
        for name, delta in self._deltas(f"publisher.{role}", counts).items():
            if name == "reconnects":
                self.publisher_reconnects.labels(role).inc(delta)
            elif name == "blocked":
                self.publisher_blocked.labels(role).inc(delta)
            else:
                self.publisher.labels(role, name).inc(delta)

    def mirror_sealed(self, counts: dict[str, int]) -> None:
        """Add the seals per kid counted since the last call (``KeyRegistry.sealed_counts``)."""
        for kid, delta in self._deltas("sealed", counts).items():
            self.envelopes_sealed.labels(kid).inc(delta)

    def _deltas(self, scope: str, counts: dict[str, int]) -> dict[str, int]:
        deltas = {}
        with self._lock:
            for name, value in counts.items():
                seen = self._mirrored.get((scope, name), 0)
                if value > seen:
                    deltas[name] = value - seen
                self._mirrored[(scope, name)] = value
        return deltas


def _bounded_type(value: Any) -> str:
    return value if value in MESSAGE_TYPES else UNKNOWN


def _age_s(event: dict[str, Any]) -> float | None:
    age = event.get("age_s")
    if age is None and isinstance(event.get("created_at"), str):
        try:
            created = datetime.fromisoformat(str(event["created_at"]).replace("Z", "+00:00"))
        except ValueError:
            return None
        age = float(event.get("at") or time.time()) - created.timestamp()
    return None if age is None else max(float(age), 0.0)


_metrics: FleetMetrics | None = None
_metrics_lock = threading.Lock()


def fleet_metrics() -> FleetMetrics:
    """This process's metrics (created on first use: after fork, after the multiprocess env)."""
    global _metrics
    with _metrics_lock:
        if _metrics is None:
            _metrics = FleetMetrics()
        return _metrics


class MetricsMiddleware(dramatiq.Middleware):
    """Subscribes the metrics to the runtime's outcome events; mirrors publisher counters."""

    def __init__(self) -> None:
        self._publisher_stats: PublisherStats | None = None

    def after_worker_boot(self, broker: dramatiq.Broker, worker: Any) -> None:
        from workers.runtime import current_runtime

        runtime = current_runtime()
        metrics = fleet_metrics()

        def known_kid(kid: str) -> bool:
            return runtime.keys.get(kid) is not None

        runtime.events.subscribe(
            lambda event: metrics.record(event, current_message(), known_kid=known_kid)
        )
        self._publisher_stats = runtime.publisher.stats

    def after_process_message(
        self,
        broker: dramatiq.Broker,
        message: Any,
        *,
        result: Any | None = None,
        exception: BaseException | None = None,
    ) -> None:
        if self._publisher_stats is not None:
            fleet_metrics().mirror_publisher("worker", self._publisher_stats)


# -- the multiprocess directory and the exposition ------------------------------------------------


def prepare_multiprocess_dir(configured: Path | None) -> tuple[Path, bool]:
    """Point ``PROMETHEUS_MULTIPROC_DIR`` at an empty directory; call it before forking.

    A configured directory (a Kubernetes emptyDir) is emptied of sample files from an earlier
    run; without one, a fresh temporary directory is made. Returns (directory, made here).
    """
    if configured is None:
        import tempfile

        directory, made = Path(tempfile.mkdtemp(prefix="fleet-metrics-")), True
    else:
        directory, made = configured, False
        directory.mkdir(parents=True, exist_ok=True)
        for stale in directory.glob("*.db"):
            stale.unlink(missing_ok=True)
    os.environ[MULTIPROC_ENV] = str(directory)
    values = sys.modules.get("prometheus_client.values")
    if values is not None:
        # prometheus_client picks its value class when first imported; a process that imported
        # it before the variable was set would hand every forked child in-memory values.
        values.ValueClass = values.get_value_class()  # type: ignore[attr-defined]
    return directory, made


def remove_multiprocess_dir(directory: Path) -> None:
    """Remove a directory made by ``prepare_multiprocess_dir`` (the fleet has stopped)."""
    shutil.rmtree(directory, ignore_errors=True)


def forget_this_process() -> None:
    """Drop this process's live gauges (the outbox lag) when it stops cleanly."""
    directory = os.environ.get(MULTIPROC_ENV)
    if directory:
        mark_process_dead(os.getpid(), directory)


class _LiveProcessesCollector:
    """``MultiProcessCollector`` that first forgets live gauges of processes that died."""

    def __init__(self, directory: str) -> None:
        self._directory = directory
        self._collector = MultiProcessCollector(None, directory)

    def collect(self) -> Iterable[Metric]:
        for path in glob.glob(os.path.join(self._directory, "gauge_live*_*.db")):
            match = _LIVE_GAUGE_FILE.match(os.path.basename(path))
            if match and not pid_alive(int(match.group(1))):
                mark_process_dead(int(match.group(1)), self._directory)
        collected: Iterable[Metric] = self._collector.collect()
        return collected


def exposition_registry() -> CollectorRegistry:
    """The registry to serve: all processes' samples in multiprocess mode, else this process's."""
    directory = os.environ.get(MULTIPROC_ENV)
    if not directory:
        return REGISTRY
    registry = CollectorRegistry()
    registry.register(_LiveProcessesCollector(directory))
    return registry


def start_metrics_server(port: int, bind: str) -> None:
    """Serve ``/metrics`` on a daemon thread of this process."""
    start_http_server(port, bind, registry=exposition_registry())
    log.info("serving metrics on %s:%s", bind or "*", port)


def serve_metrics() -> int:
    """The exposition as a child process of ``fleet worker`` (port from the settings)."""
    from workers.settings import get_settings

    settings = get_settings()
    stopping = threading.Event()

    def stop(_signum: int, _frame: FrameType | None) -> None:
        stopping.set()

    signal.signal(signal.SIGTERM, stop)
    start_metrics_server(settings.metrics_port, settings.metrics_bind)
    stopping.wait()
    return 0
