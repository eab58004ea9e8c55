"""The ledger check: every confirmed message was processed once or dead-lettered with a reason.

For each (message id, queue it was routed to) exactly one of: an inbox row of that queue's
handler, or a dead letter from that queue with a known reason. Also: no inbox row or business
effect for an id nobody published; no id with two effects; no ``delivery_limit`` dead letter
except the planted poison. Dead letters are read from the ``<queue>.dead`` queues (drained), or
from the archive when an archiver runs (``archived_dead_letters``).
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import pika
from sqlalchemy import Engine, text

from handlers.registry import handler_for, handler_name
from queues.deadletter import H_DEATH_ID, H_QUEUE, H_REASON
from queues.errors import ENVELOPE_ERRORS, LIFECYCLE_REASONS
from queues.topology import DOMAINS, dead_queue, queues_of

# Business tables that record the message id of the effect: one row per id at most.
EFFECT_TABLES = (
    "billing_charges",
    "billing_invoices",
    "billing_payments",
    "crm_interactions",
)


@dataclass(frozen=True)
class DeadLetter:
    message_id: str
    queue: str
    reason: str
    death_id: str | None


@dataclass
class LedgerReport:
    published: int = 0
    confirmed: int = 0
    expected_deliveries: int = 0
    processed: Counter[str] = field(default_factory=Counter)
    dead_by_reason: Counter[str] = field(default_factory=Counter)
    lost: list[tuple[str, str]] = field(default_factory=list)
    doubled: list[tuple[str, str]] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (self.lost or self.doubled or self.unexpected)

    def summary(self) -> str:
        processed = ", ".join(f"{k} {v}" for k, v in sorted(self.processed.items())) or "none"
        dead = ", ".join(f"{k} {v}" for k, v in sorted(self.dead_by_reason.items())) or "none"
        lines = [
            f"published {self.published}, confirmed {self.confirmed}, "
            f"deliveries expected {self.expected_deliveries}",
            f"processed: {processed}",
            f"dead-lettered by reason: {dead}",
            f"duplicates absorbed (inbox outcome duplicate): {self.processed.get('duplicate', 0)}",
            f"lost {len(self.lost)}, doubled {len(self.doubled)}, "
            f"unexpected {len(self.unexpected)}",
        ]
        for label, rows in (("lost", self.lost), ("doubled", self.doubled)):
            lines += [f"  {label}: {m} on {q}" for m, q in rows[:10]]
        lines += [f"  unexpected: {u}" for u in self.unexpected[:10]]
        return "\n".join(lines)


KNOWN_REASONS = frozenset(
    {e.reason for e in ENVELOPE_ERRORS}
    | set(LIFECYCLE_REASONS)
    | {
        "illegal_transition",
        "currency_mismatch",
        "account_conflict",
        "payment_conflict",
        "account_closed",
        "service_conflict",
        "network_rejected",
        "no_handler",
        "store_rejected",
    }
)


def drain_dead_letters(url: str, domains: Iterable[str] = DOMAINS) -> list[DeadLetter]:
    """Consume every ``<domain>.dead`` queue; a broker dead letter has reason from ``x-death``."""
    connection = pika.BlockingConnection(pika.URLParameters(url))
    letters: list[DeadLetter] = []
    try:
        channel = connection.channel()
        for domain in domains:
            while True:
                method, properties, _body = channel.basic_get(dead_queue(domain), auto_ack=True)
                if method is None:
                    break
                headers: Mapping[str, Any] = properties.headers or {}
                reason = headers.get(H_REASON)
                if reason is None:
                    deaths = headers.get("x-death") or [{}]
                    reason = deaths[0].get("reason", "unknown")
                letters.append(
                    DeadLetter(
                        message_id=str(properties.message_id or ""),
                        queue=str(headers.get(H_QUEUE) or domain),
                        reason=str(reason),
                        death_id=headers.get(H_DEATH_ID),
                    )
                )
    finally:
        connection.close()
    return letters


def archived_dead_letters(engine: Engine, *, include_replayed: bool = False) -> list[DeadLetter]:
    """Dead letters from the archive (``dead_letters``) instead of draining the queues.

    A replayed dead letter is superseded by what its replay led to (an inbox row, or a new
    death), so it is left out unless ``include_replayed``.
    """
    where = "" if include_replayed else " WHERE replayed_at IS NULL"
    with engine.connect() as connection:
        rows = connection.execute(
            text(f"SELECT message_id, queue, reason, death_id FROM dead_letters{where}")  # noqa: S608
        ).all()
    return [
        DeadLetter(message_id=str(m), queue=str(q), reason=str(r), death_id=d)
        for m, q, r, d in rows
    ]


def check_ledger(
    engine: Engine,
    confirmed: Mapping[str, str],
    dead_letters: list[DeadLetter],
    *,
    published: int | None = None,
    poison: Iterable[str] = (),
) -> LedgerReport:
    """Check the run. ``confirmed`` maps every confirmed message id to its type.

    Follow-ups from the outbox count as published by the fleet itself.
    """
    report = LedgerReport(published=published or len(confirmed), confirmed=len(confirmed))
    poison_ids = set(poison)
    with engine.connect() as connection:
        inbox = connection.execute(text("SELECT message_id, handler, outcome FROM inbox")).all()
        outbox = connection.execute(
            text("SELECT message_id, message_type FROM outbox WHERE sent_at IS NOT NULL")
        ).all()
        effects = {
            table: connection.execute(
                text(f"SELECT message_id, count(*) FROM {table} GROUP BY message_id")  # noqa: S608
            ).all()
            for table in EFFECT_TABLES
        }
    expected = dict(confirmed)
    expected.update({str(m): t for m, t in outbox})

    claims: dict[tuple[str, str], str] = {(str(m), h): o for m, h, o in inbox}
    deaths: Counter[tuple[str, str]] = Counter((d.message_id, d.queue) for d in dead_letters)
    for letter in dead_letters:
        report.dead_by_reason[letter.reason] += 1
        if letter.reason not in KNOWN_REASONS:
            report.unexpected.append(
                f"dead letter {letter.message_id} with unknown reason {letter.reason}"
            )
        if letter.reason == "delivery_limit" and letter.message_id not in poison_ids:
            report.unexpected.append(f"innocent delivery_limit dead letter {letter.message_id}")
        if letter.message_id not in expected:
            report.unexpected.append(f"dead letter {letter.message_id} was never published")

    for message_id, message_type in expected.items():
        for queue in queues_of(message_type):
            report.expected_deliveries += 1
            handler = handler_for(queue, message_type)
            name = handler_name(handler) if handler is not None else None
            outcome = claims.get((message_id, name)) if name else None
            dead = deaths.get((message_id, queue), 0)
            if outcome is not None:
                report.processed[outcome] += 1
            if (outcome is not None) + dead == 0:
                report.lost.append((message_id, queue))
            elif (outcome is not None) + dead > 1:
                report.doubled.append((message_id, queue))

    for claimed_id, claimed_by in claims:
        if claimed_id not in expected:
            report.unexpected.append(f"inbox row {claimed_id} ({claimed_by}) was never published")
    for table, rows in effects.items():
        for message_id, count in rows:
            if count > 1:
                report.doubled.append((str(message_id), table))
            if str(message_id) not in expected:
                report.unexpected.append(f"{table} row of {message_id} was never published")
    return report


def report_json(report: LedgerReport) -> str:
    return json.dumps(
        {
            "published": report.published,
            "confirmed": report.confirmed,
            "processed": dict(report.processed),
            "dead_by_reason": dict(report.dead_by_reason),
            "lost": len(report.lost),
            "doubled": len(report.doubled),
            "unexpected": len(report.unexpected),
        }
    )
