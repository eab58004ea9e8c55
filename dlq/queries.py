"""Reading the archive: filters, ``ls``, ``groups``, ``show``, ``export`` — never a payload.

Every function returns plain dicts whose keys are the documented ``--json`` fields
(``LIST_FIELDS``, ``GROUP_FIELDS``, ``SHOW_FIELDS``, ``EXPORT_FIELDS``; docs/operations.md).
Bodies stay encrypted: ``export`` writes the JWE compact text as archived, and withholds a body
that is not a JWE envelope at all (a foreign publisher's plaintext must not leak that way).
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from sqlalchemy import ColumnElement, Engine, and_, case, func, literal, or_, select

from dlq.audit import audit_rows
from dlq.models import DeadLetter
from queues.errors import FleetError
from queues.wire import peek_raw_header

Status = Literal["open", "replayed", "resolved", "all"]

LIST_FIELDS = (
    "id",
    "status",
    "died_at",
    "queue",
    "lane",
    "message_id",
    "type",
    "producer",
    "reason",
    "last_reason",
    "error_class",
    "error",
    "attempts",
    "group",
    "previous_id",
    "replayed_at",
    "replayed_by",
    "replay_count",
    "resolved_at",
    "resolved_by",
)
GROUP_FIELDS = (
    "group",
    "reason",
    "error_class",
    "type",
    "count",
    "queues",
    "first_seen",
    "last_seen",
)
SHOW_FIELDS = (
    *LIST_FIELDS,
    "death_id",
    "death_key",
    "archived_at",
    "dead_queue",
    "exchange",
    "routing_key",
    "schema_version",
    "kid",
    "created_at",
    "correlation_id",
    "first_failure_at",
    "last_failure_at",
    "worker_host",
    "worker_pid",
    "traceback",
    "x_death",
    "headers",
    "body_bytes",
    "body_sha256",
    "encrypted",
    "original_kid",
    "original_producer",
    "reencrypted_at",
    "resolution_note",
    "history",
)
EXPORT_FIELDS = (*(f for f in SHOW_FIELDS if f != "history"), "body")

# When a dead letter died: its last failure, else when it was archived.
died_at = func.coalesce(DeadLetter.last_failure_at, DeadLetter.archived_at)
# A failure group: same reason, error class and type. Stable across runs and replicas.
group_id = func.substr(
    func.md5(
        func.concat_ws(
            "|",
            DeadLetter.reason,
            func.coalesce(DeadLetter.error_class, ""),
            func.coalesce(DeadLetter.message_type, ""),
        )
    ),
    1,
    10,
)
status_of = case(
    (DeadLetter.resolved_at.is_not(None), literal("resolved")),
    (DeadLetter.replayed_at.is_not(None), literal("replayed")),
    else_=literal("open"),
)

_DURATION = re.compile(r"^(\d+(?:\.\d+)?)\s*([smhdw])$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_duration(value: str) -> timedelta:
    """``90s``, ``15m``, ``2h``, ``30d``, ``1w`` ▶ a timedelta.

    Raises:
        ValueError: not a number followed by one of s, m, h, d, w.
    """
    match = _DURATION.match(value.strip())
    if match is None:
        raise ValueError(f"{value!r} is not a duration like 90s, 15m, 2h, 30d or 1w")
    return timedelta(seconds=float(match.group(1)) * _UNITS[match.group(2)])


def parse_moment(value: str, now: datetime | None = None) -> datetime:
    """An RFC 3339 time, or a duration meaning that long ago (``2h`` = two hours ago).

    Raises:
        ValueError: neither.
    """
    try:
        return (now or datetime.now(UTC)) - parse_duration(value)
    except ValueError:
        pass
    try:
        moment = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"{value!r} is neither a time (RFC 3339) nor a duration (2h)") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


@dataclass(frozen=True)
class Filter:
    """Which dead letters an operator means. Empty = every open one."""

    ids: tuple[int, ...] = ()
    queue: str | None = None
    message_type: str | None = None
    producer: str | None = None
    reason: str | None = None
    error_class: str | None = None
    group: str | None = None
    message_id: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    text: str | None = None
    status: Status = "open"
    extra: tuple[ColumnElement[bool], ...] = field(default=(), compare=False)

    def clauses(self) -> list[ColumnElement[bool]]:
        clauses: list[ColumnElement[bool]] = list(self.extra)
        if self.ids:
            clauses.append(DeadLetter.id.in_(self.ids))
        for column, value in (
            (DeadLetter.queue, self.queue),
            (DeadLetter.message_type, self.message_type),
            (DeadLetter.producer, self.producer),
            (DeadLetter.reason, self.reason),
            (DeadLetter.error_class, self.error_class),
            (DeadLetter.message_id, self.message_id),
        ):
            if value is not None:
                clauses.append(column == value)
        if self.group is not None:
            clauses.append(group_id == self.group)
        if self.since is not None:
            clauses.append(died_at >= self.since)
        if self.until is not None:
            clauses.append(died_at < self.until)
        if self.text:
            pattern = "%" + self.text.replace("\\", "\\\\").replace("%", r"\%").replace("_", r"\_")
            clauses.append(
                or_(
                    DeadLetter.error.ilike(pattern + "%"),
                    DeadLetter.error_class.ilike(pattern + "%"),
                    DeadLetter.traceback.ilike(pattern + "%"),
                )
            )
        if self.status != "all":
            clauses.append(status_of == self.status)
        return clauses

    def where(self) -> ColumnElement[bool]:
        clauses = self.clauses()
        return and_(*clauses) if clauses else literal(True)


def _summary(row: Mapping[Any, Any]) -> dict[str, Any]:
    return {
        "id": row["id"],
        "status": row["status"],
        "died_at": row["died_at"],
        "queue": row["queue"],
        "lane": row["lane"],
        "message_id": row["message_id"],
        "type": row["message_type"],
        "producer": row["producer"],
        "reason": row["reason"],
        "last_reason": row["last_reason"],
        "error_class": row["error_class"],
        "error": row["error"],
        "attempts": row["attempts"],
        "group": row["group"],
        "previous_id": row["previous_id"],
        "replayed_at": row["replayed_at"],
        "replayed_by": row["replayed_by"],
        "replay_count": row["replay_count"],
        "resolved_at": row["resolved_at"],
        "resolved_by": row["resolved_by"],
    }


def _columns(*, with_body: bool = False) -> list[Any]:
    table = DeadLetter.__table__
    columns = [c for c in table.columns if with_body or c.name != "body"]
    return [
        *columns,
        status_of.label("status"),
        died_at.label("died_at"),
        group_id.label("group"),
        func.octet_length(DeadLetter.body).label("body_bytes"),
    ]


def is_jwe(body: bytes) -> bool:
    """Whether the body is a JWE compact serialization (so it stays encrypted when shown)."""
    try:
        peek_raw_header(body)
    except FleetError:
        return False
    return True


def count(engine: Engine, flt: Filter) -> int:
    with engine.connect() as connection:
        return int(
            connection.execute(
                select(func.count()).select_from(DeadLetter).where(flt.where())
            ).scalar_one()
        )


def list_letters(
    engine: Engine, flt: Filter, *, limit: int = 50, offset: int = 0
) -> list[dict[str, Any]]:
    """Dead letters matching ``flt``, newest death first, as ``LIST_FIELDS`` dicts."""
    query = (
        select(*_columns())
        .where(flt.where())
        .order_by(died_at.desc(), DeadLetter.id.desc())
        .limit(limit)
        .offset(offset)
    )
    with engine.connect() as connection:
        return [_summary(row) for row in connection.execute(query).mappings()]


def matching_ids(engine: Engine, flt: Filter) -> list[int]:
    """Ids matching ``flt``, oldest first (the order a replay goes in)."""
    with engine.connect() as connection:
        return [
            int(i)
            for i in connection.execute(
                select(DeadLetter.id).where(flt.where()).order_by(DeadLetter.id)
            ).scalars()
        ]


def groups(engine: Engine, flt: Filter) -> list[dict[str, Any]]:
    """Failure groups (reason + error class + type), biggest first, as ``GROUP_FIELDS`` dicts."""
    query = (
        select(
            group_id.label("group"),
            DeadLetter.reason,
            DeadLetter.error_class,
            DeadLetter.message_type,
            func.count().label("count"),
            func.array_agg(func.distinct(DeadLetter.queue)).label("queues"),
            func.min(died_at).label("first_seen"),
            func.max(died_at).label("last_seen"),
        )
        .where(flt.where())
        .group_by(group_id, DeadLetter.reason, DeadLetter.error_class, DeadLetter.message_type)
        .order_by(func.count().desc(), func.max(died_at).desc())
    )
    with engine.connect() as connection:
        return [
            {
                "group": row["group"],
                "reason": row["reason"],
                "error_class": row["error_class"],
                "type": row["message_type"],
                "count": int(row["count"]),
                "queues": sorted(row["queues"]),
                "first_seen": row["first_seen"],
                "last_seen": row["last_seen"],
            }
            for row in connection.execute(query).mappings()
        ]


def _detail(row: Mapping[Any, Any]) -> dict[str, Any]:
    detail = _summary(row)
    for name in SHOW_FIELDS:
        if name not in detail and name in row:
            detail[name] = row[name]
    return detail


def show(engine: Engine, letter_id: int) -> dict[str, Any] | None:
    """One dead letter with its failure history (``SHOW_FIELDS``), or None. No payload."""
    with engine.connect() as connection:
        row = (
            connection.execute(select(*_columns(with_body=True)).where(DeadLetter.id == letter_id))
            .mappings()
            .first()
        )
        if row is None:
            return None
        deaths = (
            connection.execute(
                select(
                    DeadLetter.id,
                    DeadLetter.queue,
                    DeadLetter.reason,
                    died_at.label("died_at"),
                    status_of.label("status"),
                    DeadLetter.previous_id,
                )
                .where(DeadLetter.message_id == row["message_id"])
                .order_by(DeadLetter.id)
            )
            .mappings()
            .all()
            if row["message_id"] is not None
            else []
        )
    detail = _detail(row)
    detail["encrypted"] = is_jwe(row["body"])
    ids = sorted({int(d["id"]) for d in deaths} | {letter_id})
    actions = [
        a
        for i in ids
        for a in audit_rows(engine, dead_letter_id=i, limit=50)
        if a["action"] != "export"
    ]
    unique_actions = {a["id"]: a for a in actions}.values()
    detail["history"] = sorted(
        [
            {
                "at": d["died_at"],
                "event": "died",
                "dead_letter_id": d["id"],
                "queue": d["queue"],
                "detail": d["reason"],
                "by": None,
            }
            for d in deaths
        ]
        + [
            {
                "at": a["at"],
                "event": a["action"],
                "dead_letter_id": None,
                "queue": None,
                "detail": a["result"],
                "by": a["operator"],
            }
            for a in unique_actions
        ],
        key=lambda event: event["at"],
    )
    return {name: detail.get(name) for name in SHOW_FIELDS}


def export_rows(engine: Engine, flt: Filter, *, batch: int = 500) -> Iterator[dict[str, Any]]:
    """Every matching dead letter as an ``EXPORT_FIELDS`` dict, oldest first, body still sealed."""
    last_id = 0
    while True:
        query = (
            select(*_columns(with_body=True))
            .where(flt.where(), DeadLetter.id > last_id)
            .order_by(DeadLetter.id)
            .limit(batch)
        )
        with engine.connect() as connection:
            rows = connection.execute(query).mappings().all()
        if not rows:
            return
        for row in rows:
            last_id = int(row["id"])
            detail = _detail(row)
            encrypted = is_jwe(row["body"])
            detail["encrypted"] = encrypted
            detail["body"] = bytes(row["body"]).decode("ascii") if encrypted else None
            yield {name: detail.get(name) for name in EXPORT_FIELDS}


def lookup(engine: Engine, ids: Sequence[int]) -> dict[int, dict[str, Any]]:
    """Status fields of the given ids (to tell an operator why a row was not taken)."""
    with engine.connect() as connection:
        rows = connection.execute(
            select(
                DeadLetter.id,
                status_of.label("status"),
                DeadLetter.replayed_at,
                DeadLetter.replayed_by,
                DeadLetter.resolved_at,
                DeadLetter.resolved_by,
            ).where(DeadLetter.id.in_(list(ids)))
        ).mappings()
        return {int(r["id"]): dict(r) for r in rows}


__all__ = [
    "EXPORT_FIELDS",
    "GROUP_FIELDS",
    "LIST_FIELDS",
    "SHOW_FIELDS",
    "Filter",
    "count",
    "export_rows",
    "groups",
    "list_letters",
    "lookup",
    "matching_ids",
    "parse_duration",
    "parse_moment",
    "show",
]
