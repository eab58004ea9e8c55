"""Outcome events: one structured record per message outcome.

Kinds: ``ok``, ``duplicate``, ``stale``, ``retried``, ``dead``, ``suspect``, ``requeued``;
and ``batch``, not a message's: the size of one batch writer transaction (``EventLog.batches``).
Every event is a JSON log line (failures at WARNING, successes at DEBUG) and, when
``FLEET_EVENTS_FILE`` is set, a line appended to that file (one ``write`` of one line with
``O_APPEND``, so several processes can share it); the demo builds its summary from that file.
Subscribers (metrics, Sentry: ``workers.observability``) receive each event as it is emitted.
Events carry ids, types, reasons and timings — never payload values.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

log = logging.getLogger("fleet.events")

FAILURE_KINDS = frozenset({"retried", "dead", "suspect", "requeued"})
# A delivery is finished: its effects committed or absorbed (handled), or it was dead-lettered.
HANDLED_KINDS = frozenset({"ok", "duplicate", "stale"})
FINAL_KINDS = HANDLED_KINDS | {"dead"}
# Not a message's outcome: what one batch writer transaction took (size, committed, alone).
BATCH_KIND = "batch"

Subscriber = Callable[[dict[str, Any]], None]


class EventSink:
    """Writes outcome events to the log and, optionally, to a shared JSON-lines file."""

    def __init__(self, path: Path | None = None) -> None:
        self._fd: int | None = None
        self._subscribers: list[Subscriber] = []
        if path is not None:
            self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)

    def subscribe(self, subscriber: Subscriber) -> None:
        """Call ``subscriber(event)`` for every event from now on (in the emitting thread)."""
        self._subscribers.append(subscriber)

    def emit(self, kind: str, **fields: Any) -> dict[str, Any]:
        event = {"event": kind, "at": round(time.time(), 6), "pid": os.getpid(), **fields}
        level = logging.WARNING if kind in FAILURE_KINDS else logging.DEBUG
        logged = log.isEnabledFor(level)
        if logged or self._fd is not None:  # the hot path skips the JSON when nobody reads it
            line = json.dumps(event, default=str, separators=(",", ":"))
            if logged:
                log.log(level, line, extra={"fleet_event": event})
            if self._fd is not None:
                os.write(self._fd, (line + "\n").encode())
        for subscriber in self._subscribers:
            try:
                subscriber(event)
            except Exception:
                # The outcome is decided and recorded already; observing it must not undo that.
                log.exception("event subscriber %r failed", subscriber)
        return event

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


class EventLog:
    """An events file read incrementally, for whoever watches a fleet (tests, demo, bench).

    Each ``refresh`` reads only the bytes appended since the last one and parses only whole
    lines (a line another process is still writing waits for its end), so polling costs what
    is new, not the whole file. It keeps the tallies watchers ask for and, unless
    ``keep_events`` is false (a long demo), every event.
    """

    def __init__(self, path: Path, *, keep_events: bool = True) -> None:
        self.path = path
        self.keep_events = keep_events
        self.events: list[dict[str, Any]] = []
        self.kinds: Counter[str] = Counter()
        self.by_id: defaultdict[str, list[dict[str, Any]]] = defaultdict(list)
        #: (message id, work queue) of each delivery that reached a final outcome.
        self.settled: set[tuple[str, str]] = set()
        #: The batch writers' ``batch`` events (sizes), kept apart from the message outcomes.
        self.batches: list[dict[str, Any]] = []
        self._offset = 0
        self._partial = b""
        self._lock = threading.Lock()

    @property
    def handled(self) -> int:
        """Deliveries handled so far (effects committed, or absorbed by the inbox)."""
        return sum(self.kinds[kind] for kind in HANDLED_KINDS)

    def refresh(self) -> list[dict[str, Any]]:
        """Read what was appended since the last call; returns the new events."""
        with self._lock:
            try:
                with self.path.open("rb") as handle:
                    handle.seek(self._offset)
                    data = handle.read()
            except FileNotFoundError:
                return []
            self._offset += len(data)
            lines = (self._partial + data).split(b"\n")
            self._partial = lines.pop()
            fresh = []
            for line in lines:
                try:
                    event = json.loads(line)
                except ValueError:
                    continue
                if isinstance(event, dict) and "event" in event:
                    fresh.append(event)
            if self.keep_events:
                self.batches += [event for event in fresh if event["event"] == BATCH_KIND]
            fresh = [event for event in fresh if event["event"] != BATCH_KIND]
            for event in fresh:
                kind = event["event"]
                self.kinds[kind] += 1
                message_id = str(event.get("message_id"))
                if self.keep_events:
                    self.by_id[message_id].append(event)
                if kind in FINAL_KINDS:
                    self.settled.add((message_id, str(event.get("queue", "")).split(".")[0]))
            if self.keep_events:
                self.events.extend(fresh)
            return fresh
