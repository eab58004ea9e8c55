"""Circuit breakers: when a dependency is down, stop consuming what needs it — don't burn retries.

One breaker per dependency and process: ``database`` (every domain needs it) and ``network``
(only provisioning calls the network element). After ``failure_threshold`` consecutive outage
failures the breaker **opens**: the consumers of the affected domains are cancelled (no new
deliveries; the broker keeps the messages), and messages already in hand that fail the same way
are parked on the first retry tier **without using up an attempt**. After ``open_s`` the breaker
goes **half-open**: consumption resumes one message at a time (prefetch 1, so a deep prefetch
does not bring a flood of messages to fail again); the first success closes it and restores the
full prefetch, the first outage failure opens it again for twice as long (up to
``max_open_s``). Billing and CRM keep flowing while the network element is down; nothing is
dead-lettered for an outage shorter than the retry budget.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable
from enum import StrEnum

log = logging.getLogger(__name__)

QueueControl = Callable[[Iterable[str]], None]


class BreakerState(StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class CircuitBreaker:
    """Counts consecutive outage failures of one dependency; pauses and resumes its domains."""

    def __init__(
        self,
        name: str,
        domains: tuple[str, ...],
        *,
        pause: QueueControl,
        resume: QueueControl,
        restore: QueueControl = lambda _domains: None,
        failure_threshold: int = 5,
        open_s: float = 5.0,
        max_open_s: float = 60.0,
    ) -> None:
        self.name = name
        self.domains = domains
        self._pause = pause
        self._resume = resume
        self._restore = restore
        self.failure_threshold = failure_threshold
        self.base_open_s = open_s
        self.max_open_s = max_open_s
        self.state = BreakerState.CLOSED
        self.opened = 0
        self._failures = 0
        self._open_s = open_s
        self._lock = threading.Lock()
        self._timer: threading.Timer | None = None

    @property
    def is_open(self) -> bool:
        """True while the dependency is considered down (open or probing)."""
        return self.state is not BreakerState.CLOSED

    def record_success(self) -> None:
        with self._lock:
            self._failures = 0
            if self.state is BreakerState.CLOSED:
                return
            self.state = BreakerState.CLOSED
            self._open_s = self.base_open_s
        log.warning("breaker %s closed: %s answers again", self.name, self.name)
        self._restore(self.domains)

    def record_failure(self) -> None:
        with self._lock:
            self._failures += 1
            if self.state is BreakerState.OPEN:
                return
            if self.state is BreakerState.HALF_OPEN:
                self._open_s = min(self.max_open_s, self._open_s * 2)
            elif self._failures < self.failure_threshold:
                return
            self.state = BreakerState.OPEN
            self.opened += 1
            delay = self._open_s
            self._timer = threading.Timer(delay, self._half_open)
            self._timer.daemon = True
            self._timer.start()
        log.warning(
            "breaker %s open for %.1f s: pausing %s", self.name, delay, ", ".join(self.domains)
        )
        self._pause(self.domains)

    def _half_open(self) -> None:
        with self._lock:
            if self.state is not BreakerState.OPEN:
                return
            self.state = BreakerState.HALF_OPEN
        log.warning("breaker %s half-open: resuming %s", self.name, ", ".join(self.domains))
        self._resume(self.domains)

    def close(self) -> None:
        timer = self._timer
        if timer is not None:
            timer.cancel()


class Breakers:
    """The process's breakers, by dependency."""

    def __init__(self, breakers: Iterable[CircuitBreaker]) -> None:
        self.by_name = {b.name: b for b in breakers}

    def get(self, name: str) -> CircuitBreaker | None:
        return self.by_name.get(name)

    def for_domain(self, domain: str) -> list[CircuitBreaker]:
        return [b for b in self.by_name.values() if domain in b.domains]

    def close(self) -> None:
        for breaker in self.by_name.values():
            breaker.close()
