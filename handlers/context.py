"""What a handler knows besides its payload: the message's steering fields, and what it returns."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Protocol


class Outcome(StrEnum):
    """How a message ended without an error; recorded in the inbox and counted in metrics."""

    OK = "ok"
    """The effects were applied (or the message was an idempotent no-op of the state machine)."""
    DUPLICATE = "duplicate"
    """Already done: the same message id, or the same business key under another message id."""
    STALE = "stale"
    """Superseded: the stored entity version is the same or newer; nothing changed."""


@dataclass(frozen=True)
class HandlerContext:
    """The steering fields of the message being handled — never its payload.

    ``handler`` is the name the inbox records, so each handler of a fanned-out type deduplicates
    on its own.
    """

    message_id: uuid.UUID
    message_type: str
    queue: str
    handler: str
    producer: str
    created_at: datetime
    correlation_id: uuid.UUID | None = None

    @property
    def chain_id(self) -> uuid.UUID:
        """The correlation id follow-ups carry: the incoming one, or this message's id."""
        return self.correlation_id or self.message_id

    def follow_up_id(self, purpose: str) -> uuid.UUID:
        """A message id derived from this one, the same on every redelivery."""
        return uuid.uuid5(self.message_id, purpose)


class _Committable(Protocol):
    def record_outcome(self, message_id: uuid.UUID, handler: str, outcome: str) -> None: ...

    def commit(self) -> None: ...


def commit_outcome(uow: _Committable, ctx: HandlerContext, outcome: Outcome) -> Outcome:
    """Note a non-``ok`` outcome on this message's inbox row, commit, and return the outcome."""
    if outcome is not Outcome.OK:
        uow.record_outcome(ctx.message_id, ctx.handler, outcome)
    uow.commit()
    return outcome
