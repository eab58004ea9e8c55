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
same entity twice in one batch) — is answered ``UNROLL``: the caller rolls the transaction back,
applies the batch again without it, and runs it through the one-message path, which raises the
precise error. Any exception from here means the same for the whole batch. So a poison message,
a ``NotYet``, a ``PermanentError``, a duplicate or a deadlock affects only its own message.

Only the types below are batched; every other (queue, type) — and everything that calls the
network element — takes the one-message path. Statements are built once, at import.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Any, TypeVar

from sqlalchemy import Connection, Engine, text

from handlers.billing import charge_id_for
from handlers.context import HandlerContext, Outcome
from handlers.registry import HANDLERS, handler_name
from queues.contracts import (
    Contract,
    LogInteraction,
    OpenAccount,
    PostCharge,
    UpsertCustomer,
    UpsertCustomerV2,
)

_T = TypeVar("_T")


class Unroll(Enum):
    """This message must be applied alone, on the one-message path."""

    UNROLL = "unroll"


UNROLL = Unroll.UNROLL

Decision = Outcome | Unroll


@dataclass(frozen=True)
class Item:
    """One opened message, as the batch sees it: its steering fields and its payload."""

    ctx: HandlerContext
    payload: Contract


BeforeCommit = Callable[[int], None]
"""Called with the batch's size right before its commit (the fault hook, in tests)."""

GroupHandler = Callable[[Connection, Sequence[Item]], list[Decision]]
"""Applies one (queue, type) group of claimed messages; one decision per item, in order."""


# -- the bookkeeping ------------------------------------------------------------------------------

_CLAIM = text(
    "INSERT INTO inbox (message_id, handler, outcome) "
    "SELECT m, h, 'ok' FROM unnest(CAST(:ids AS uuid[]), CAST(:handlers AS text[])) AS t(m, h) "
    "ON CONFLICT (message_id, handler) DO NOTHING "
    "RETURNING message_id, handler"
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


# -- billing.charge.post --------------------------------------------------------------------------

_POST_CHARGES = text(
    "WITH input AS (SELECT * FROM unnest(CAST(:ords AS int[]), CAST(:charge_ids AS uuid[]), "
    "CAST(:account_ids AS uuid[]), CAST(:references AS text[]), CAST(:amounts AS bigint[]), "
    "CAST(:currencies AS text[]), CAST(:descriptions AS text[]), "
    "CAST(:charged_at AS timestamptz[]), CAST(:service_ids AS uuid[]), "
    "CAST(:message_ids AS uuid[])) AS t(ord, charge_id, account_id, source_reference, "
    "amount_minor, currency, description, charged_at, service_id, message_id)), "
    # The accounts, locked in key order: two batches never deadlock on them.
    "accounts AS (SELECT account_id, currency, status FROM billing_accounts "
    "WHERE account_id IN (SELECT account_id FROM input) ORDER BY account_id "
    "FOR NO KEY UPDATE), "
    "accepted AS (SELECT i.* FROM input i JOIN accounts a ON a.account_id = i.account_id "
    "AND a.status = 'open' AND a.currency = i.currency), "
    # In arrival order: a business key taken twice in one batch goes to the first, as one by one.
    "posted AS (INSERT INTO billing_charges (charge_id, account_id, source_reference, "
    "amount_minor, currency, description, charged_at, service_id, message_id) "
    "SELECT charge_id, account_id, source_reference, amount_minor, currency, description, "
    "charged_at, service_id, message_id FROM accepted ORDER BY ord "
    "ON CONFLICT (account_id, source_reference) DO NOTHING "
    "RETURNING message_id, account_id, amount_minor), "
    "added AS (UPDATE billing_accounts AS b SET balance_minor = b.balance_minor + t.total "
    "FROM (SELECT account_id, CAST(sum(amount_minor) AS bigint) AS total FROM posted "
    "GROUP BY account_id) AS t WHERE b.account_id = t.account_id RETURNING b.account_id) "
    "SELECT i.ord, a.account_id IS NOT NULL AND a.status = 'open' AND a.currency = i.currency "
    "AS accepted, p.message_id IS NOT NULL AS posted "
    "FROM input i LEFT JOIN accounts a ON a.account_id = i.account_id "
    "LEFT JOIN posted p ON p.message_id = i.message_id"
)


def post_charges(connection: Connection, items: Sequence[Item]) -> list[Decision]:
    """``handlers.billing.post_charge`` for many charges, in one statement.

    The accounts are locked in key order (so two batches never deadlock on them); a charge
    whose account is missing, closed or in another currency is unrolled (its handler raises
    ``NotYet``, ``AccountClosed`` or ``CurrencyMismatch`` on the one-message path); a source
    reference charged before on the account is a duplicate (business-key idempotency).
    """
    charges = [_payload(item, PostCharge) for item in items]
    rows = connection.execute(
        _POST_CHARGES,
        {
            "ords": list(range(len(items))),
            "charge_ids": [charge_id_for(c.account_id, c.source_reference) for c in charges],
            "account_ids": [c.account_id for c in charges],
            "references": [c.source_reference for c in charges],
            "amounts": [c.amount.amount_minor for c in charges],
            "currencies": [c.amount.currency for c in charges],
            "descriptions": [c.description for c in charges],
            "charged_at": [c.charged_at for c in charges],
            "service_ids": [c.service_id for c in charges],
            "message_ids": [item.ctx.message_id for item in items],
        },
    )
    decisions: list[Decision] = [UNROLL] * len(items)
    for row in rows:
        if row.accepted:
            decisions[row.ord] = Outcome.OK if row.posted else Outcome.DUPLICATE
    return decisions


# -- crm.interaction.log --------------------------------------------------------------------------

_INSERT_INTERACTIONS = text(
    "INSERT INTO crm_interactions (interaction_id, customer_id, channel, topic, note, "
    "occurred_at, message_id) "
    "SELECT * FROM unnest(CAST(:interaction_ids AS uuid[]), CAST(:customer_ids AS uuid[]), "
    "CAST(:channels AS text[]), CAST(:topics AS text[]), CAST(:notes AS text[]), "
    "CAST(:occurred_at AS timestamptz[]), CAST(:message_ids AS uuid[])) "
    "ON CONFLICT (interaction_id) DO NOTHING "
    "RETURNING message_id"
)


def log_interactions(connection: Connection, items: Sequence[Item]) -> list[Decision]:
    """``handlers.crm.log_interaction`` for many: an interaction id logged before is a duplicate."""
    notes = [_payload(item, LogInteraction) for item in items]
    inserted = {
        row.message_id
        for row in connection.execute(
            _INSERT_INTERACTIONS,
            {
                "interaction_ids": [n.interaction_id for n in notes],
                "customer_ids": [n.customer_id for n in notes],
                "channels": [n.channel.value for n in notes],
                "topics": [n.topic for n in notes],
                "notes": [n.note for n in notes],
                "occurred_at": [n.occurred_at for n in notes],
                "message_ids": [item.ctx.message_id for item in items],
            },
        )
    }
    return [Outcome.OK if item.ctx.message_id in inserted else Outcome.DUPLICATE for item in items]


# -- billing.account.open -------------------------------------------------------------------------

_INSERT_ACCOUNTS = text(
    "INSERT INTO billing_accounts (account_id, customer_id, currency, cycle_day, "
    "payment_terms_days, message_id) "
    "SELECT * FROM unnest(CAST(:account_ids AS uuid[]), CAST(:customer_ids AS uuid[]), "
    "CAST(:currencies AS text[]), CAST(:cycle_days AS smallint[]), "
    "CAST(:terms AS smallint[]), CAST(:message_ids AS uuid[])) "
    "ON CONFLICT (account_id) DO NOTHING "
    "RETURNING message_id"
)

_READ_ACCOUNTS = text(
    "SELECT account_id, customer_id, currency, cycle_day, payment_terms_days "
    "FROM billing_accounts WHERE account_id = ANY(CAST(:ids AS uuid[]))"
)

_ACCOUNT_FIELDS = ("customer_id", "currency", "cycle_day", "payment_terms_days")


def open_accounts(connection: Connection, items: Sequence[Item]) -> list[Decision]:
    """``handlers.billing.open_account`` for many: the same account again with the same data is
    a duplicate; with other data it is unrolled (``AccountConflict`` on the one-message path)."""
    opens = [_payload(item, OpenAccount) for item in items]
    inserted = {
        row.message_id
        for row in connection.execute(
            _INSERT_ACCOUNTS,
            {
                "account_ids": [o.account_id for o in opens],
                "customer_ids": [o.customer_id for o in opens],
                "currencies": [o.currency for o in opens],
                "cycle_days": [o.cycle_day for o in opens],
                "terms": [o.payment_terms_days for o in opens],
                "message_ids": [item.ctx.message_id for item in items],
            },
        )
    }
    existing: dict[uuid.UUID, Any] = {}
    if len(inserted) < len(items):
        existing = {
            row.account_id: row
            for row in connection.execute(
                _READ_ACCOUNTS,
                {
                    "ids": [
                        o.account_id
                        for i, o in zip(items, opens, strict=True)
                        if i.ctx.message_id not in inserted
                    ]
                },
            )
        }
    decisions: list[Decision] = []
    for item, account in zip(items, opens, strict=True):
        if item.ctx.message_id in inserted:
            decisions.append(Outcome.OK)
            continue
        row = existing[account.account_id]
        same = all(getattr(row, name) == getattr(account, name) for name in _ACCOUNT_FIELDS)
        decisions.append(Outcome.DUPLICATE if same else UNROLL)
    return decisions


# -- crm.customer.upsert (CRM's profile, billing's mirror of the holder) ------------------------

_CRM_COLUMNS = ("name", "email", "msisdn", "street", "postal_code", "city", "country")
_HOLDER_COLUMNS = ("name", "street", "postal_code", "city", "country")


def _upsert(table: str, columns: tuple[str, ...]) -> Any:
    """``INSERT … ON CONFLICT DO UPDATE … WHERE stored version < new`` for many customers."""
    names = ("customer_id", "entity_version", *columns)
    casts = {"customer_id": "uuid[]", "entity_version": "bigint[]"}
    arrays = ", ".join(f"CAST(:{n} AS {casts.get(n, 'text[]')})" for n in names)
    changes = ", ".join(f"{n} = excluded.{n}" for n in names if n != "customer_id")
    return text(
        f"INSERT INTO {table} ({', '.join(names)}) SELECT * FROM unnest({arrays}) "  # noqa: S608 — fixed names
        f"ON CONFLICT (customer_id) DO UPDATE SET {changes}, updated_at = now() "
        f"WHERE {table}.entity_version < excluded.entity_version "
        "RETURNING customer_id"
    )


_UPSERT_CUSTOMERS = {
    1: _upsert("crm_customers", _CRM_COLUMNS),
    2: _upsert("crm_customers", (*_CRM_COLUMNS, "preferred_language")),
}
_UPSERT_HOLDERS = _upsert("billing_account_holders", _HOLDER_COLUMNS)


def _customer_fields(cmd: UpsertCustomer, name: str) -> Any:
    if name in ("street", "postal_code", "city", "country"):
        return getattr(cmd.address, name)
    return getattr(cmd, name)


def _upsert_group(
    connection: Connection,
    items: Sequence[Item],
    statement_for: Callable[[UpsertCustomer], Any],
    columns_for: Callable[[UpsertCustomer], tuple[str, ...]],
) -> list[Decision]:
    """An entity version not newer than the stored one is stale (as one by one). A customer
    twice in one batch is unrolled after its first: one statement cannot update a row twice."""
    customers = [_payload(item, UpsertCustomer) for item in items]
    decisions: list[Decision] = [UNROLL] * len(items)
    seen: set[uuid.UUID] = set()
    statements: dict[int, list[int]] = {}
    for index, cmd in enumerate(customers):
        if cmd.customer_id in seen:
            continue
        seen.add(cmd.customer_id)
        statements.setdefault(id(statement_for(cmd)), []).append(index)
    for members in statements.values():
        first = customers[members[0]]
        params = {
            name: [_customer_fields(customers[i], name) for i in members]
            for name in ("customer_id", "entity_version", *columns_for(first))
        }
        applied = {row.customer_id for row in connection.execute(statement_for(first), params)}
        for index in members:
            ok = customers[index].customer_id in applied
            decisions[index] = Outcome.OK if ok else Outcome.STALE
    return decisions


def upsert_customers(connection: Connection, items: Sequence[Item]) -> list[Decision]:
    """``handlers.crm.upsert_customer`` for many (a schema-1 message leaves the preferred
    language as stored: schema versions go in statements of their own)."""

    def version(cmd: UpsertCustomer) -> int:
        return 2 if isinstance(cmd, UpsertCustomerV2) else 1

    return _upsert_group(
        connection,
        items,
        lambda cmd: _UPSERT_CUSTOMERS[version(cmd)],
        lambda cmd: (*_CRM_COLUMNS, "preferred_language") if version(cmd) == 2 else _CRM_COLUMNS,
    )


def mirror_holders(connection: Connection, items: Sequence[Item]) -> list[Decision]:
    """``handlers.billing.mirror_account_holder`` for many."""
    return _upsert_group(
        connection, items, lambda cmd: _UPSERT_HOLDERS, lambda cmd: _HOLDER_COLUMNS
    )


# -- the registry ---------------------------------------------------------------------------------

GROUP_HANDLERS: dict[tuple[str, str], GroupHandler] = {
    ("crm", "crm.customer.upsert"): upsert_customers,
    ("billing", "crm.customer.upsert"): mirror_holders,
    ("billing", "billing.account.open"): open_accounts,
    ("billing", "billing.charge.post"): post_charges,
    ("crm", "crm.interaction.log"): log_interactions,
}
"""The batched (queue, type)s, applied in this order within a batch."""

_ORDER = {key: rank for rank, key in enumerate(GROUP_HANDLERS)}


def group_rank(item: Item) -> int:
    """Where the item's group comes in a batch (groups are applied in registry order)."""
    return _ORDER[(item.ctx.queue, item.ctx.message_type)]


def batchable(queue: str, message_type: str) -> bool:
    """Whether (queue, type) may take the batch path."""
    return (queue, message_type) in GROUP_HANDLERS


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

    If any decision is ``UNROLL``, nothing is committed: the caller applies the batch again
    without those items (``apply_batch`` is the same for any subset) and runs them one by one.
    Raises whatever the database raises; the transaction is then rolled back.
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
        for group in sorted(groups, key=_ORDER.__getitem__):
            members = groups[group]
            for index, decision in zip(
                members,
                GROUP_HANDLERS[group](connection, [items[i] for i in members]),
                strict=True,
            ):
                decisions[index] = decision
        final = [d if d is not None else UNROLL for d in decisions]
        if any(d is UNROLL for d in final):
            transaction.rollback()
            return final
        record_outcomes(connection, [(items[i], _decided(final[i])) for i in ours])
        before_commit(len(ours))
    return final


def _decided(decision: Decision) -> Outcome:
    assert isinstance(decision, Outcome)
    return decision


def _payload(item: Item, model: type[_T]) -> _T:
    payload = item.payload
    if not isinstance(payload, model):
        raise TypeError(f"{item.ctx.message_type} carries {type(payload).__name__}")
    return payload


MAX_PASSES = 3
"""How often ``apply_until_settled`` applies a batch again without what it unrolled."""


@dataclass
class Settled:
    """What ``apply_until_settled`` did: an outcome per item, None for the ones to run alone."""

    outcomes: list[Outcome | None]
    committed: int
    """Items whose outcome was committed in the final, shared transaction."""


def apply_until_settled(
    bind: Engine | Connection,
    items: Sequence[Item],
    *,
    before_commit: BeforeCommit = lambda size: None,
) -> Settled:
    """Apply ``items`` in one transaction, dropping what it unrolls and applying the rest again.

    ``bind``: a connection the caller keeps between batches (no pool checkout per batch), or
    an engine to take one from. An item answered None runs on the one-message path (which
    raises its precise error); so do all items when the database raises (a deadlock, a lost
    connection, a bug: the exception propagates), or when ``MAX_PASSES`` passes still unroll.
    """
    if isinstance(bind, Engine):
        with bind.connect() as connection:
            return apply_until_settled(connection, items, before_commit=before_commit)
    outcomes: list[Outcome | None] = [None] * len(items)
    pending = list(range(len(items)))
    for _ in range(MAX_PASSES):
        decisions = apply_batch(bind, [items[i] for i in pending], before_commit=before_commit)
        unrolled = [i for i, d in zip(pending, decisions, strict=True) if d is UNROLL]
        if not unrolled:
            for index, decision in zip(pending, decisions, strict=True):
                outcomes[index] = _decided(decision)
            return Settled(outcomes, committed=len(pending))
        pending = [i for i, d in zip(pending, decisions, strict=True) if d is not UNROLL]
        if not pending:
            break
    return Settled(outcomes, committed=0)
