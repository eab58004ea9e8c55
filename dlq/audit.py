"""The operators' audit trail: one insert-only row per decrypt, replay, flush, resolve, purge,
re-encrypt and export.

Who did it is never taken from the client: the row's ``operator`` is the ``session_user`` of the
database connection (a trigger stamps it, migration 0002), so every operator connects as their
own PostgreSQL role (deploy/postgres/roles.sql). ``detail`` holds ids, counts, reasons and
outcomes — never a payload value.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Engine, select, text
from sqlalchemy.dialects.postgresql import insert

from dlq.models import OperatorAudit

ACTIONS = (
    "decrypt",
    "replay",
    "canary",
    "flush",
    "resolve",
    "purge",
    "reencrypt",
    "export",
)

AUDIT_FIELDS = ("id", "at", "operator", "action", "result", "dead_letter_ids", "detail")


def session_user(connection: Connection) -> str:
    """The database identity of this connection: the operator."""
    return str(connection.execute(text("SELECT session_user")).scalar_one())


def record(
    connection: Connection,
    action: str,
    result: str,
    dead_letter_ids: Iterable[int] = (),
    detail: Mapping[str, Any] | None = None,
) -> tuple[int, str]:
    """Insert one audit row in the connection's transaction; its id and the recorded operator."""
    if action not in ACTIONS:
        raise ValueError(f"unknown audit action {action!r}")
    row = connection.execute(
        insert(OperatorAudit)
        .values(
            action=action,
            result=result,
            dead_letter_ids=sorted(set(dead_letter_ids)),
            detail=dict(detail or {}),
        )
        .returning(OperatorAudit.id, OperatorAudit.operator)
    ).one()
    return int(row.id), str(row.operator)


def record_now(
    engine: Engine,
    action: str,
    result: str,
    dead_letter_ids: Iterable[int] = (),
    detail: Mapping[str, Any] | None = None,
) -> tuple[int, str]:
    """``record`` in a transaction of its own."""
    with engine.begin() as connection:
        return record(connection, action, result, dead_letter_ids, detail)


def audit_rows(
    engine: Engine,
    *,
    action: str | None = None,
    operator: str | None = None,
    dead_letter_id: int | None = None,
    since: datetime | None = None,
    limit: int = 100,
) -> list[dict[str, Any]]:
    """Audit rows, newest first, as ``AUDIT_FIELDS`` dicts."""
    query = select(OperatorAudit.__table__).order_by(OperatorAudit.id.desc()).limit(limit)
    if action is not None:
        query = query.where(OperatorAudit.action == action)
    if operator is not None:
        query = query.where(OperatorAudit.operator == operator)
    if dead_letter_id is not None:
        query = query.where(OperatorAudit.dead_letter_ids.contains([dead_letter_id]))
    if since is not None:
        query = query.where(OperatorAudit.at >= since)
    with engine.connect() as connection:
        rows = connection.execute(query).mappings().all()
    return [{field: row[field] for field in AUDIT_FIELDS} for row in rows]
