"""Replay: archived envelopes back to their queue, once each, audited.

    claim rows (SELECT … FOR UPDATE SKIP LOCKED) ─▶ publish to fleet.replay, key = the row's
    queue, same body and message id, no attempt headers (a fresh budget) ─▶ confirms
    ─▶ mark the confirmed rows replayed (who = session_user, when) ─▶ audit ─▶ COMMIT

The row locks are held from the claim to the commit, so two operators replaying the same rows at
once never both publish one: the second skips the locked rows and is told who has them. Rows are
marked only after the broker confirmed; an unconfirmed publish leaves the row open (and a later
replay is safe: the inbox absorbs a copy that did arrive). ``fleet.replay`` binds each domain
queue by its own name, so a fanned-out type goes back only to the queue it died on.

Refused: unroutable letters (no queue to go back to), resolved ones, already replayed ones
(unless ``again``), and messages older than the dedup horizon (their inbox row may be gone, so a
replay could apply them twice).

``canary`` waits for each replayed message's outcome: processed (the queue's handler has an
inbox row for the message id), died again (a newer archive row of the same message on the same
queue), or undecided (neither within the bound: still parked on a retry tier, or the archiver is
not running).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Literal, Protocol

from sqlalchemy import Connection, Engine, select, text, update

from dlq import audit
from dlq.crypto import seal_for_replay
from dlq.models import DeadLetter
from handlers.registry import handler_for, handler_name
from queues.deadletter import H_REPLAY_OF, H_REPLAYED_BY
from queues.errors import FleetError
from queues.keys import KeyRegistry
from queues.publisher import Outgoing, PublishResult
from queues.topology import DOMAINS, REPLAY_EXCHANGE

Outcome = Literal["published", "would_publish", "refused", "not_published", "skipped"]
CanaryVerdict = Literal["processed", "died_again", "undecided"]

DEFAULT_BATCH = 500
REPLAY_FIELDS = ("id", "message_id", "queue", "type", "outcome", "detail")
CANARY_FIELDS = ("id", "message_id", "queue", "type", "verdict", "detail", "waited_s")


class Publishes(Protocol):
    def publish_raw(self, items: Sequence[Outgoing]) -> list[PublishResult]: ...


@dataclass
class ReplayItem:
    """What happened to one dead letter in one replay."""

    id: int
    message_id: str | None
    queue: str | None
    type: str | None
    outcome: Outcome
    detail: str = ""

    def to_json(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in REPLAY_FIELDS}


@dataclass
class CanaryResult:
    id: int
    message_id: str | None
    queue: str | None
    type: str | None
    verdict: CanaryVerdict
    detail: str
    waited_s: float

    def to_json(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in CANARY_FIELDS}


@dataclass
class ReplayReport:
    items: list[ReplayItem] = field(default_factory=list)
    canary: list[CanaryResult] = field(default_factory=list)
    stopped: str | None = None
    operator: str | None = None

    def count(self, outcome: Outcome) -> int:
        return sum(1 for item in self.items if item.outcome == outcome)

    def to_json(self) -> dict[str, Any]:
        return {
            "operator": self.operator,
            "published": self.count("published"),
            "would_publish": self.count("would_publish"),
            "refused": self.count("refused") + self.count("skipped"),
            "not_published": self.count("not_published"),
            "stopped": self.stopped,
            "items": [i.to_json() for i in self.items],
            "canary": [c.to_json() for c in self.canary],
        }


def message_age_basis(row: Any) -> datetime:
    """The moment that counts against the dedup horizon: when the message was created."""
    moment: datetime = row.created_at or row.first_failure_at or row.archived_at
    return moment


def _why_not_claimed(connection: Connection, ids: Sequence[int], again: bool) -> dict[int, str]:
    rows = connection.execute(
        select(
            DeadLetter.id,
            DeadLetter.replayed_at,
            DeadLetter.replayed_by,
            DeadLetter.resolved_at,
            DeadLetter.resolved_by,
        ).where(DeadLetter.id.in_(list(ids)))
    ).all()
    found = {int(r.id): r for r in rows}
    reasons: dict[int, str] = {}
    for letter_id in ids:
        row = found.get(letter_id)
        if row is None:
            reasons[letter_id] = "no such dead letter (purged?)"
        elif row.resolved_at is not None:
            reasons[letter_id] = (
                f"resolved by {row.resolved_by} at {row.resolved_at:%Y-%m-%d %H:%M:%S%z}"
            )
        elif row.replayed_at is not None and not again:
            reasons[letter_id] = (
                f"already replayed by {row.replayed_by} at {row.replayed_at:%Y-%m-%d %H:%M:%S%z} "
                "(--again replays it once more; the inbox absorbs it if it was processed)"
            )
        else:
            reasons[letter_id] = "being replayed by another operator right now (row locked)"
    return reasons


def replay(
    engine: Engine,
    publisher: Publishes,
    ids: Sequence[int],
    *,
    horizon: timedelta,
    keys: KeyRegistry | None = None,
    again: bool = False,
    dry_run: bool = False,
    now: datetime | None = None,
    batch: int = DEFAULT_BATCH,
) -> ReplayReport:
    """Replay the dead letters ``ids`` (each at most once per call); see the module docstring.

    Works in batches of ``batch`` rows, each its own transaction and audit row, so that a big
    replay never holds every body in memory nor every row lock for long.
    """
    report = ReplayReport()
    wanted = list(dict.fromkeys(ids))
    for start in range(0, len(wanted), batch):
        part = _replay_batch(
            engine,
            publisher,
            wanted[start : start + batch],
            horizon=horizon,
            keys=keys,
            again=again,
            dry_run=dry_run,
            now=now or datetime.now(UTC),
        )
        report.operator = part.operator
        report.items += part.items
    return report


def _replay_batch(
    engine: Engine,
    publisher: Publishes,
    wanted: list[int],
    *,
    horizon: timedelta,
    keys: KeyRegistry | None,
    again: bool,
    dry_run: bool,
    now: datetime,
) -> ReplayReport:
    report = ReplayReport()
    with engine.connect() as connection, connection.begin() as transaction:
        report.operator = audit.session_user(connection)
        claim = (
            select(DeadLetter.__table__)
            .where(DeadLetter.id.in_(wanted), DeadLetter.resolved_at.is_(None))
            .order_by(DeadLetter.id)
            .with_for_update(skip_locked=True)
        )
        if not again:
            claim = claim.where(DeadLetter.replayed_at.is_(None))
        claimed = connection.execute(claim).all()
        taken = {int(r.id) for r in claimed}
        for letter_id, why in _why_not_claimed(
            connection, [i for i in wanted if i not in taken], again
        ).items():
            report.items.append(ReplayItem(letter_id, None, None, None, "skipped", why))

        outgoing: list[tuple[ReplayItem, Outgoing]] = []
        for row in claimed:
            item = ReplayItem(row.id, row.message_id, row.queue, row.message_type, "refused")
            report.items.append(item)
            if row.queue not in DOMAINS:
                item.detail = (
                    "unroutable: it never reached a queue; fix the routing key or the bindings, "
                    "have the producer send it again, then resolve this row"
                )
                continue
            if message_age_basis(row) < now - horizon:
                item.detail = (
                    f"older than the dedup horizon ({horizon.days} d): its inbox record may be "
                    "gone, so a replay could apply it twice; resolve it and repair by hand"
                )
                continue
            body = bytes(row.body)
            if row.original_kid is not None:
                if keys is None:
                    item.detail = "re-encrypted for the archive: replay needs the key registry"
                    continue
                try:
                    body = seal_for_replay(body, keys)
                except FleetError as exc:
                    item.detail = f"cannot re-seal for replay: {exc.message}"
                    continue
            item.outcome = "would_publish"
            outgoing.append(
                (
                    item,
                    Outgoing(
                        exchange=REPLAY_EXCHANGE,
                        routing_key=row.queue,
                        body=body,
                        message_id=row.message_id or "",
                        message_type=row.message_type or "",
                        correlation_id=row.correlation_id,
                        # Provenance only: no x-fleet-attempt, so the budget starts afresh.
                        headers={
                            H_REPLAY_OF: int(row.id),
                            H_REPLAYED_BY: report.operator,
                        },
                    ),
                )
            )
        if dry_run:
            transaction.rollback()
            return report

        results = publisher.publish_raw([out for _, out in outgoing]) if outgoing else []
        confirmed: list[int] = []
        for (item, _), result in zip(outgoing, results, strict=True):
            if result.ok:
                item.outcome = "published"
                confirmed.append(item.id)
            else:
                item.outcome = "not_published"
                item.detail = f"{result.status}: {result.detail}"
        if confirmed:
            connection.execute(
                update(DeadLetter)
                .where(DeadLetter.id.in_(confirmed))
                .values(
                    replayed_at=text("now()"),
                    replayed_by=text("session_user"),
                    replay_count=DeadLetter.replay_count + 1,
                )
            )
        audit.record(
            connection,
            "replay",
            _result(report),
            [item.id for item in report.items],
            {
                "published": confirmed,
                "again": again,
                "refused": {
                    str(i.id): i.detail
                    for i in report.items
                    if i.outcome in ("refused", "skipped", "not_published")
                },
            },
        )
    return report


def _result(report: ReplayReport) -> str:
    published = report.count("published")
    if published == len(report.items):
        return "ok"
    return "partial" if published else "refused"


# ── canary ─────────────────────────────────────────────────────────────────────────────────────


def _handler(queue: str | None, message_type: str | None) -> str | None:
    if queue is None or message_type is None:
        return None
    handler = handler_for(queue, message_type)
    return handler_name(handler) if handler is not None else None


def _as_uuid(value: str | None) -> uuid.UUID | None:
    try:
        return uuid.UUID(str(value))
    except ValueError:
        return None


def await_outcomes(
    engine: Engine,
    items: Sequence[ReplayItem],
    *,
    wait_s: float,
    poll_s: float = 0.25,
    clock: Callable[[], float] = time.monotonic,
) -> list[CanaryResult]:
    """Wait (up to ``wait_s``) for the outcome of each published item."""
    started = clock()
    pending = [i for i in items if i.outcome == "published"]
    results: dict[int, CanaryResult] = {}
    while True:
        with engine.connect() as connection:
            for item in pending:
                if item.id in results:
                    continue
                verdict = _verdict(connection, item)
                if verdict is not None:
                    results[item.id] = CanaryResult(
                        item.id,
                        item.message_id,
                        item.queue,
                        item.type,
                        verdict[0],
                        verdict[1],
                        round(clock() - started, 2),
                    )
        if len(results) == len(pending) or clock() - started >= wait_s:
            break
        time.sleep(poll_s)
    for item in pending:
        if item.id not in results:
            results[item.id] = CanaryResult(
                item.id,
                item.message_id,
                item.queue,
                item.type,
                "undecided",
                f"neither processed nor dead again after {wait_s:g} s: still parked on a "
                "retry tier, or the archiver is not running",
                round(clock() - started, 2),
            )
    return [results[i.id] for i in pending]


def _verdict(connection: Connection, item: ReplayItem) -> tuple[CanaryVerdict, str] | None:
    again = connection.execute(
        select(DeadLetter.id, DeadLetter.reason, DeadLetter.error_class)
        .where(
            DeadLetter.message_id == item.message_id,
            DeadLetter.queue == item.queue,
            DeadLetter.id > item.id,
        )
        .order_by(DeadLetter.id)
        .limit(1)
    ).first()
    if again is not None:
        return "died_again", f"dead letter {again.id}: {again.reason} ({again.error_class})"
    handler = _handler(item.queue, item.type)
    message_id = _as_uuid(item.message_id)
    if handler is None or message_id is None:
        return None
    outcome = connection.execute(
        text("SELECT outcome FROM inbox WHERE message_id = :m AND handler = :h"),
        {"m": message_id, "h": handler},
    ).scalar()
    if outcome is not None:
        return "processed", f"inbox: {handler} {outcome}"
    return None
