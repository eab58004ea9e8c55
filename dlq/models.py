"""The archive's tables: one row per death (``dead_letters``) and the operators' audit trail.

Both live on the store's ``Base`` so that Alembic (migration 0002) and ``alembic check`` see them.

``dead_letters`` keeps the envelope exactly as received — still encrypted — with everything the
dead-letter headers and the broker's ``x-death`` say about the death. ``death_key`` makes a death
unique: ``fleet:<x-fleet-death-id>`` for the fleet's own dead letters, ``broker:<sha256>`` of the
broker's ``x-death`` data, message id and body hash for broker dead letters (delivery limit), and
``unroutable:<sha256>`` for messages no queue was bound for. The same message dying again after a
replay is a new row whose ``previous_id`` points at the death it follows.

``operator_audit`` is insert-only for every application role (deploy/postgres/roles.sql); a
trigger stamps ``operator`` with ``session_user`` and ``at`` with the transaction time, so the
identity comes from the database session, never from the client.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    Text,
    text,
)
from sqlalchemy.dialects.postgresql import ARRAY, JSONB
from sqlalchemy.orm import Mapped, mapped_column

from handlers.store.models import Base

STATUSES = ("open", "replayed", "resolved")


class DeadLetter(Base):
    """One death of one message on one queue, archived from ``<queue>.dead`` or ``unroutable``."""

    __tablename__ = "dead_letters"
    __table_args__ = (
        Index(None, "message_id"),
        Index(None, "archived_at"),
        Index(None, "reason", "error_class", "message_type"),
    )

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    death_key: Mapped[str] = mapped_column(Text, unique=True)
    death_id: Mapped[str | None] = mapped_column(Text)
    archived_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=text("now()")
    )
    dead_queue: Mapped[str] = mapped_column(Text)
    queue: Mapped[str] = mapped_column(Text)
    lane: Mapped[str | None] = mapped_column(Text)
    exchange: Mapped[str | None] = mapped_column(Text)
    routing_key: Mapped[str | None] = mapped_column(Text)
    # Text, not uuid: a foreign publisher's unroutable message may carry any message id.
    message_id: Mapped[str | None] = mapped_column(Text)
    message_type: Mapped[str | None] = mapped_column(Text)
    schema_version: Mapped[int | None] = mapped_column(Integer)
    producer: Mapped[str | None] = mapped_column(Text)
    kid: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    correlation_id: Mapped[str | None] = mapped_column(Text)
    reason: Mapped[str] = mapped_column(Text)
    last_reason: Mapped[str | None] = mapped_column(Text)
    error_class: Mapped[str | None] = mapped_column(Text)
    error: Mapped[str | None] = mapped_column(Text)
    attempts: Mapped[int | None] = mapped_column(Integer)
    first_failure_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    last_failure_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    worker_host: Mapped[str | None] = mapped_column(Text)
    worker_pid: Mapped[int | None] = mapped_column(Integer)
    traceback: Mapped[str | None] = mapped_column(Text)
    x_death: Mapped[list[dict[str, Any]] | None] = mapped_column(JSONB)
    headers: Mapped[dict[str, Any]] = mapped_column(JSONB, server_default=text("'{}'::jsonb"))
    body: Mapped[bytes] = mapped_column(LargeBinary)
    body_sha256: Mapped[str] = mapped_column(Text)
    previous_id: Mapped[int | None] = mapped_column(
        BigInteger, ForeignKey("dead_letters.id", ondelete="SET NULL")
    )
    replayed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    replayed_by: Mapped[str | None] = mapped_column(Text)
    replay_count: Mapped[int] = mapped_column(Integer, server_default=text("0"))
    resolved_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    resolved_by: Mapped[str | None] = mapped_column(Text)
    resolution_note: Mapped[str | None] = mapped_column(Text)
    original_kid: Mapped[str | None] = mapped_column(Text)
    original_producer: Mapped[str | None] = mapped_column(Text)
    reencrypted_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class OperatorAudit(Base):
    """One operator action: who (``session_user``), what, on which dead letters, the result."""

    __tablename__ = "operator_audit"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=text("now()"), index=True
    )
    operator: Mapped[str] = mapped_column(Text, server_default=text("SESSION_USER"))
    action: Mapped[str] = mapped_column(Text)
    result: Mapped[str] = mapped_column(Text)
    dead_letter_ids: Mapped[list[int]] = mapped_column(
        ARRAY(BigInteger), server_default=text("'{}'::bigint[]")
    )
    detail: Mapped[dict[str, Any]] = mapped_column(JSONB, server_default=text("'{}'::jsonb"))
