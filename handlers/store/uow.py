"""The unit of work: every write of one message commits together or not at all.

    with uow:
        if not uow.claim_inbox(ctx.message_id, ctx.handler):
            return Outcome.DUPLICATE
        ...effects, uow.add_outbox(...)...
        uow.commit()

Leaving the block without ``commit()`` rolls everything back (cosmicpython's pattern). Each
``with`` opens a fresh session, so one unit of work can run a cheap read, let the handler call the
network with no transaction open, and then run the writing transaction.
"""

from __future__ import annotations

import uuid
from types import TracebackType
from typing import Literal, Self

from sqlalchemy import Engine, text
from sqlalchemy.orm import Session

from queues.contracts import Contract

IsolationLevel = Literal["READ COMMITTED", "REPEATABLE READ", "SERIALIZABLE"]


class UnitOfWork:
    """One database transaction per ``with`` block, on the process's engine."""

    def __init__(self, engine: Engine, *, isolation_level: IsolationLevel | None = None) -> None:
        bind = (
            engine
            if isolation_level is None
            else engine.execution_options(isolation_level=isolation_level)
        )
        self._bind = bind
        self._session: Session | None = None
        self.committed_claims: set[tuple[uuid.UUID, str]] = set()
        self._pending_claims: set[tuple[uuid.UUID, str]] = set()

    @property
    def session(self) -> Session:
        """The session of the open block.

        Raises:
            RuntimeError: used outside ``with uow:``.
        """
        if self._session is None:
            raise RuntimeError("the unit of work is used outside its `with` block")
        return self._session

    def __enter__(self) -> Self:
        if self._session is not None:
            raise RuntimeError("the unit of work is already open")
        self._session = Session(bind=self._bind, expire_on_commit=False, autoflush=True)
        self._pending_claims = set()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        session, self._session = self.session, None
        try:
            session.rollback()
        finally:
            session.close()
            self._pending_claims = set()

    def commit(self) -> None:
        """Commit the block's transaction (inbox rows, effects and outbox rows together)."""
        self.session.commit()
        self.committed_claims |= self._pending_claims
        self._pending_claims = set()

    def rollback(self) -> None:
        """Discard the block's writes so far."""
        self.session.rollback()
        self._pending_claims = set()

    def already_processed(self, message_id: uuid.UUID, handler: str) -> bool:
        """Whether this handler already committed this message (a cheap read, no lock)."""
        found = self.session.execute(_PROCESSED, {"m": message_id, "h": handler}).first()
        return found is not None

    def claim_inbox(self, message_id: uuid.UUID, handler: str, outcome: str = "ok") -> bool:
        """Record that ``handler`` processes ``message_id`` in this transaction.

        False when the row already exists: the message is a duplicate and the caller must stop.
        A concurrent transaction holding the same claim makes this wait until it ends (the
        primary key serializes duplicates), so at most one of them ever commits effects.
        """
        inserted = self.session.execute(
            _CLAIM, {"m": message_id, "h": handler, "o": outcome}
        ).first()
        if inserted is None:
            return False
        self._pending_claims.add((message_id, handler))
        return True

    def record_outcome(self, message_id: uuid.UUID, handler: str, outcome: str) -> None:
        """Change the outcome of a claim made in this transaction (e.g. ``stale``)."""
        self.session.execute(_RECORD, {"m": message_id, "h": handler, "o": outcome})

    def add_outbox(
        self, payload: Contract, message_id: uuid.UUID, correlation_id: uuid.UUID | None
    ) -> bool:
        """Queue a follow-up message, sent by the outbox relay after this transaction commits.

        The payload is stored as JSON and sealed at publish time. A message id that is already in
        the outbox is left alone (returns False): follow-up ids are derived deterministically.
        """
        inserted = self.session.execute(
            _OUTBOX,
            {
                "m": message_id,
                "t": payload.message_type,
                "v": payload.schema_version,
                "p": payload.model_dump_json(),
                "c": correlation_id,
            },
        ).first()
        return inserted is not None


# The bookkeeping every handler does, built once (a statement built per call costs more than
# the round trip). Table and columns as in handlers.store.models.Inbox / Outbox.
_PROCESSED = text("SELECT outcome FROM inbox WHERE message_id = :m AND handler = :h")
_CLAIM = text(
    "INSERT INTO inbox (message_id, handler, outcome) VALUES (:m, :h, :o) "
    "ON CONFLICT (message_id, handler) DO NOTHING RETURNING message_id"
)
_RECORD = text("UPDATE inbox SET outcome = :o WHERE message_id = :m AND handler = :h")
_OUTBOX = text(
    "INSERT INTO outbox (message_id, message_type, schema_version, payload, correlation_id) "
    "VALUES (:m, :t, :v, CAST(:p AS jsonb), :c) "
    "ON CONFLICT (message_id) DO NOTHING RETURNING id"
)
