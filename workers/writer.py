"""The batch writer: one per worker process, it commits many messages' effects in one transaction.

    writer.submit(queue, opened, then)   # returns at once; then(outcome) from the writer thread

Worker threads open, authorize and validate their own deliveries, then hand a message of a
batched type (``handlers.batch``) to the writer and go on with the next delivery. The writer
takes what is waiting — up to ``max_messages``, or what arrived within ``max_wait_s`` of the
first — and applies it with ``handlers.batch.settle_batch``: one inbox claim, set-based
effects, one commit. It then answers each message (``then(outcome)``), and the lifecycle
settles its delivery: the ack follows the commit, as on the one-message path.

Nothing is decided for a message that the one-message path would decide differently: a message
the batch answers ``UNROLL`` leaves the batch without a trace (its claim released, the rest
committed) and is answered None: apply it alone. Any exception — a deadlock, a lost connection, a
bug — rolls the batch back and answers every message of it None. So a failure costs the batch
its sharing, never a message its precise outcome, and exactly-once rests on the same inbox claim
as before.
"""

from __future__ import annotations

import contextlib
import logging
import queue as queue_module
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy import Connection, Engine

from handlers import batch
from handlers.context import Outcome
from queues.envelope import OpenedMessage
from workers.events import BATCH_KIND, EventSink

log = logging.getLogger(__name__)


Answer = Callable[[Outcome | None], None]
"""Receives a message's outcome (None: apply it alone), in the writer thread."""


@dataclass(eq=False)
class _Waiting:
    item: batch.Item
    then: Answer
    answered: bool = False

    def answer(self, outcome: Outcome | None) -> None:
        if self.answered:
            return
        self.answered = True
        try:
            self.then(outcome)
        except Exception:  # the writer must outlive any one answer
            log.exception("answering a batched message failed")


class BatchWriter:
    """Applies the batched types of one process's deliveries in shared transactions."""

    def __init__(
        self,
        engine: Engine,
        *,
        max_messages: int,
        max_wait_s: float,
        events: EventSink,
        before_commit: batch.BeforeCommit = lambda size: None,
    ) -> None:
        if max_messages < 2:
            raise ValueError("a batch writer needs max_messages of at least 2")
        self.engine = engine
        self.max_messages = max_messages
        self.max_wait_s = max_wait_s
        self.events = events
        self.before_commit = before_commit
        self._waiting: queue_module.SimpleQueue[_Waiting | None] = queue_module.SimpleQueue()
        self._closed = False
        self._connection: Connection | None = None  # the writer thread's own, kept between batches
        self._idle = threading.Condition()
        self._in_hand = 0  # handed over, not answered yet
        self._thread = threading.Thread(target=self._run, name="fleet-batch-writer", daemon=True)
        self._thread.start()

    def submit(self, queue: str, opened: OpenedMessage, then: Answer) -> None:
        """Apply ``opened`` in a batch and call ``then(outcome)`` — or ``then(None)``: apply it
        alone — from the writer thread (or at once, from this one, if the writer is closed)."""
        if self._closed or not self._thread.is_alive():
            then(None)
            return
        header = opened.header
        ctx = batch.context_for(
            queue,
            header.message_id,
            header.message_type,
            header.producer,
            header.created_at,
            header.correlation_id,
        )
        with self._idle:
            self._in_hand += 1
        self._waiting.put(_Waiting(batch.Item(ctx, opened.payload), then))

    def flush(self, timeout_s: float) -> bool:
        """Wait until every message handed over so far is answered; False on timeout."""
        with self._idle:
            return self._idle.wait_for(lambda: self._in_hand == 0, timeout=timeout_s)

    def close(self) -> None:
        """Finish the batch in hand, answer every later submission with None, stop."""
        self._closed = True
        self._waiting.put(None)
        self._thread.join(timeout=30)

    # -- the writer thread ---------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            first = self._waiting.get()
            if first is None:
                break
            taken = [first]
            stop = self._gather(taken)
            try:
                self._apply(taken)
            except BaseException:  # never leave a message unanswered
                log.exception("batch writer failed; its messages run alone")
                self._answer([(waiting, None) for waiting in taken if not waiting.answered])
            if stop:
                break
        self._drain()
        self._discard_connection()

    def _gather(self, taken: list[_Waiting]) -> bool:
        """Add what is waiting (or arrives within max_wait_s) to ``taken``; True: stop after."""
        deadline = time.monotonic() + self.max_wait_s
        while len(taken) < self.max_messages:
            remaining = deadline - time.monotonic()
            try:
                waiting = (
                    self._waiting.get(timeout=remaining)
                    if remaining > 0
                    else self._waiting.get_nowait()
                )
            except queue_module.Empty:
                return False
            if waiting is None:
                return True
            taken.append(waiting)
        return False

    def _answer(self, answers: list[tuple[_Waiting, Outcome | None]]) -> None:
        for waiting, outcome in answers:
            waiting.answer(outcome)
        with self._idle:
            self._in_hand -= len(answers)
            if self._in_hand == 0:
                self._idle.notify_all()

    def _discard_connection(self) -> None:
        """After a failure the connection may be dead or mid-transaction: never reuse it."""
        connection, self._connection = self._connection, None
        if connection is not None:
            with contextlib.suppress(Exception):
                connection.invalidate()
            with contextlib.suppress(Exception):
                connection.close()

    def _drain(self) -> None:
        while True:
            try:
                waiting = self._waiting.get_nowait()
            except queue_module.Empty:
                return
            if waiting is not None:
                self._answer([(waiting, None)])

    def _apply(self, taken: list[_Waiting]) -> None:
        try:
            if self._connection is None:
                self._connection = self.engine.connect()
            settled = batch.settle_batch(
                self._connection,
                [waiting.item for waiting in taken],
                before_commit=self.before_commit,
            )
        except Exception as exc:
            self._discard_connection()
            log.warning(
                "a batch of %d failed (%s); its messages run alone", len(taken), type(exc).__name__
            )
            settled = batch.Settled([None] * len(taken), committed=0)
        self._answer(
            [(waiting, outcome) for waiting, outcome in zip(taken, settled.outcomes, strict=True)]
        )
        self.events.emit(
            BATCH_KIND,
            size=len(taken),
            committed=settled.committed,
            alone=len(taken) - settled.committed,
        )
