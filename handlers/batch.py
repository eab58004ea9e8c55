"""Set-based handlers: many messages of the hot types in one transaction, rows as one by one.

    outcomes = apply_batch(connection, items)    # one transaction: claim ▶ effects ▶ outcomes

The one-message handlers (``handlers.billing``, ``handlers.crm``, …, run by ``handlers.bus``)
are the reference semantics; this module produces the same rows and outcomes for a batch, with
a handful of statements instead of a handful per message (DESIGN §4a):

1. one ``INSERT … SELECT FROM unnest(…) ON CONFLICT DO NOTHING RETURNING`` claims the inbox for
   every message of the batch — a message whose claim exists is a ``duplicate``, exactly as
   ``UnitOfWork.claim_inbox`` decides it one by one;
2. each type's effects as set-based statements, groups in registry order, messages in arrival
   order within a group (a business key taken twice in one batch: the first wins, as one by one);
3. one statement records the outcomes other than ``ok`` on their inbox rows.

A message the batch cannot decide alone — its handler would raise (account not open yet, a
conflict, a closed account…), or it needs something a set-based statement cannot express (the
same entity twice in one batch) — is answered ``UNROLL``: its group's statement wrote nothing for
it, so its inbox claim is released in the same transaction and the rest commits, as if it had
never been in the batch; it then runs through the one-message path, which raises the precise
error. Any exception from here means the same for the whole batch. So a poison message,
a ``NotYet``, a ``PermanentError``, a duplicate or a deadlock affects only its own message.

The types' set-based effects are in ``handlers.setbased`` (its ``GROUP_HANDLERS``); every other
(queue, type) — and everything that calls the network element — takes the one-message path.
Statements are built once, at import.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, Engine, text

from handlers.context import HandlerContext, Outcome
from handlers.registry import HANDLERS, handler_name
from handlers.setbased import (
    GROUP_HANDLERS,
    UNROLL,
    Decision,
    Item,
    Unroll,
    batchable,
    group_rank,
)

__all__ = [
    "UNROLL",
    "BeforeCommit",
    "Decision",
    "Item",
    "Settled",
    "Unroll",
    "apply_batch",
    "batchable",
    "context_for",
    "group_rank",
    "settle_batch",
]

BeforeCommit = Callable[[int], None]
"""Called with the batch's size right before its commit (the fault hook, in tests)."""

# -- the bookkeeping ------------------------------------------------------------------------------

_CLAIM = text(
    "INSERT INTO inbox (message_id, handler, outcome) "
    "SELECT m, h, 'ok' FROM unnest(CAST(:ids AS uuid[]), CAST(:handlers AS text[])) AS t(m, h) "
    "ON CONFLICT (message_id, handler) DO NOTHING "
    "RETURNING message_id, handler"
)

_RELEASE = text(
    "DELETE FROM inbox USING unnest(CAST(:ids AS uuid[]), CAST(:handlers AS text[])) "
    "AS t(message_id, handler) "
    "WHERE inbox.message_id = t.message_id AND inbox.handler = t.handler"
)

_RECORD_OUTCOMES = text(
    "UPDATE inbox SET outcome = t.outcome "
    "FROM unnest(CAST(:ids AS uuid[]), CAST(:handlers AS text[]), CAST(:outcomes AS text[])) "
    "AS t(message_id, handler, outcome) "
    "WHERE inbox.message_id = t.message_id AND inbox.handler = t.handler"
)


def claim(connection: Connection, items: Sequence[Item]) -> set[tuple[uuid.UUID, str]]:
    """Claim the inbox for every item at once; returns the (message id, handler) pairs claimed."""
    rows = connection.execute(
        _CLAIM,
        {
            "ids": [item.ctx.message_id for item in items],
            "handlers": [item.ctx.handler for item in items],
        },
    )
    return {(row.message_id, row.handler) for row in rows}


def release(connection: Connection, items: Sequence[Item]) -> None:
    """Drop the inbox claims this transaction made for ``items``: as if never claimed."""
    connection.execute(
        _RELEASE,
        {
            "ids": [item.ctx.message_id for item in items],
            "handlers": [item.ctx.handler for item in items],
        },
    )


def record_outcomes(connection: Connection, decided: Sequence[tuple[Item, Outcome]]) -> None:
    """Note each outcome other than ``ok`` on its inbox row (as ``commit_outcome`` does)."""
    marked = [(item, outcome) for item, outcome in decided if outcome is not Outcome.OK]
    if not marked:
        return
    connection.execute(
        _RECORD_OUTCOMES,
        {
            "ids": [item.ctx.message_id for item, _ in marked],
            "handlers": [item.ctx.handler for item, _ in marked],
            "outcomes": [str(outcome) for _, outcome in marked],
        },
    )


def context_for(
    queue: str,
    message_id: uuid.UUID,
    message_type: str,
    producer: str,
    created_at: Any,
    correlation_id: uuid.UUID | None,
) -> HandlerContext:
    """The ``HandlerContext`` the one-message path would give this message's handler."""
    return HandlerContext(
        message_id=message_id,
        message_type=message_type,
        queue=queue,
        handler=handler_name(HANDLERS[(queue, message_type)]),
        producer=producer,
        created_at=created_at,
        correlation_id=correlation_id,
    )


def apply_batch(
    connection: Connection,
    items: Sequence[Item],
    *,
    before_commit: BeforeCommit = lambda size: None,
) -> list[Decision]:
    """Apply ``items`` in one transaction on ``connection`` and commit; one decision per item.

    An item decided ``UNROLL`` leaves no trace: its group wrote nothing for it and its claim is
    released, so the commit holds what the batch without it would have (``apply_batch`` is the
    same for any subset); the caller runs it one by one. Raises whatever the database raises;
    the transaction is then rolled back.
    """
    decisions: list[Decision | None] = [None] * len(items)
    seen: set[tuple[uuid.UUID, str]] = set()
    unique: list[int] = []
    for index, item in enumerate(items):
        claim_key = (item.ctx.message_id, item.ctx.handler)
        if claim_key in seen:
            decisions[index] = UNROLL  # the same claim twice: let the second run alone
        else:
            seen.add(claim_key)
            unique.append(index)
    with connection.begin() as transaction:
        claimed = claim(connection, [items[i] for i in unique])
        groups: dict[tuple[str, str], list[int]] = {}
        ours: list[int] = []
        for index in unique:
            item = items[index]
            if (item.ctx.message_id, item.ctx.handler) not in claimed:
                decisions[index] = Outcome.DUPLICATE  # no claim, no effect: as one by one
            else:
                ours.append(index)
                groups.setdefault((item.ctx.queue, item.ctx.message_type), []).append(index)
        for group in GROUP_HANDLERS:  # registry order
            members = groups.get(group)
            if not members:
                continue
            for index, decision in zip(
                members,
                GROUP_HANDLERS[group](connection, [items[i] for i in members]),
                strict=True,
            ):
                decisions[index] = decision
        final = [d if d is not None else UNROLL for d in decisions]
        decided = [i for i in ours if final[i] is not UNROLL]
        if not decided:
            transaction.rollback()
            return final
        if len(decided) < len(ours):
            release(connection, [items[i] for i in ours if final[i] is UNROLL])
        record_outcomes(connection, [(items[i], _decided(final[i])) for i in decided])
        before_commit(len(decided))
    return final


def _decided(decision: Decision) -> Outcome:
    assert isinstance(decision, Outcome)
    return decision


@dataclass
class Settled:
    """What ``settle_batch`` did: an outcome per item, None for the ones to run alone."""

    outcomes: list[Outcome | None]
    committed: int
    """Items the batch answered (committed, or found duplicates by their claim)."""


def settle_batch(
    bind: Engine | Connection,
    items: Sequence[Item],
    *,
    before_commit: BeforeCommit = lambda size: None,
) -> Settled:
    """Apply ``items`` in one transaction; what it unrolls is answered None.

    ``bind``: a connection the caller keeps between batches (no pool checkout per batch), or
    an engine to take one from. An item answered None runs on the one-message path (which
    raises its precise error); so do all items when the database raises (a deadlock, a lost
    connection, a bug: the exception propagates).
    """
    if isinstance(bind, Engine):
        with bind.connect() as connection:
            return settle_batch(connection, items, before_commit=before_commit)
    decisions = apply_batch(bind, items, before_commit=before_commit)
    outcomes = [None if d is UNROLL else _decided(d) for d in decisions]
    return Settled(outcomes, committed=sum(o is not None for o in outcomes))
