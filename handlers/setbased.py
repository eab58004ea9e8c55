"""Set-based effects, one function per batched (queue, type): many messages in one statement.

Each function here does for a group of messages what its one-message handler (``handlers.billing``,
``handlers.crm``) does for one, and answers per message: an ``Outcome``, or ``UNROLL`` when the
message must run alone on the one-message path (its handler would raise, or a set-based
statement cannot express it). ``handlers.batch`` claims the inbox, runs the groups in registry
order in one transaction and commits; tests/integration/test_batch.py holds the two paths equal.
Statements are built once, at import.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Any, TypeVar

from sqlalchemy import Connection, TextClause, text

from handlers.billing import charge_id_for
from handlers.context import HandlerContext, Outcome
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


GroupHandler = Callable[[Connection, Sequence[Item]], list[Decision]]
"""Applies one (queue, type) group of claimed messages; one decision per item, in order."""


def _payload(item: Item, model: type[_T]) -> _T:
    payload = item.payload
    if not isinstance(payload, model):
        raise TypeError(f"{item.ctx.message_type} carries {type(payload).__name__}")
    return payload


def _inserted(connection: Connection, statement: TextClause, params: dict[str, Any]) -> set[Any]:
    """The message ids whose rows ``statement`` (``INSERT … RETURNING message_id``) inserted."""
    return {row.message_id for row in connection.execute(statement, params)}


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
    inserted = _inserted(
        connection,
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
    inserted = _inserted(
        connection,
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


@dataclass(frozen=True)
class _Upsert:
    """``INSERT … ON CONFLICT DO UPDATE … WHERE stored version < new`` for many customers."""

    statement: TextClause
    columns: tuple[str, ...]  # besides customer_id and entity_version

    @classmethod
    def of(cls, table: str, columns: tuple[str, ...]) -> _Upsert:
        names = ("customer_id", "entity_version", *columns)
        casts = {"customer_id": "uuid[]", "entity_version": "bigint[]"}
        arrays = ", ".join(f"CAST(:{n} AS {casts.get(n, 'text[]')})" for n in names)
        changes = ", ".join(f"{n} = excluded.{n}" for n in names if n != "customer_id")
        return cls(
            text(
                f"INSERT INTO {table} ({', '.join(names)}) SELECT * FROM unnest({arrays}) "  # noqa: S608 — fixed names
                f"ON CONFLICT (customer_id) DO UPDATE SET {changes}, updated_at = now() "
                f"WHERE {table}.entity_version < excluded.entity_version "
                "RETURNING customer_id"
            ),
            columns,
        )


_UPSERT_CUSTOMERS = {
    1: _Upsert.of("crm_customers", _CRM_COLUMNS),
    2: _Upsert.of("crm_customers", (*_CRM_COLUMNS, "preferred_language")),
}
_UPSERT_HOLDERS = _Upsert.of("billing_account_holders", _HOLDER_COLUMNS)


def _customer_field(cmd: UpsertCustomer, name: str) -> Any:
    if name in ("street", "postal_code", "city", "country"):
        return getattr(cmd.address, name)
    return getattr(cmd, name)


def _upsert_group(
    connection: Connection, items: Sequence[Item], upsert_for: Callable[[UpsertCustomer], _Upsert]
) -> list[Decision]:
    """An entity version not newer than the stored one is stale (as one by one). A customer
    twice in one batch is unrolled after its first: one statement cannot update a row twice."""
    customers = [_payload(item, UpsertCustomer) for item in items]
    decisions: list[Decision] = [UNROLL] * len(items)
    seen: set[uuid.UUID] = set()
    by_upsert: dict[_Upsert, list[int]] = {}
    for index, cmd in enumerate(customers):
        if cmd.customer_id not in seen:
            seen.add(cmd.customer_id)
            by_upsert.setdefault(upsert_for(cmd), []).append(index)
    for upsert, members in by_upsert.items():
        params = {
            name: [_customer_field(customers[i], name) for i in members]
            for name in ("customer_id", "entity_version", *upsert.columns)
        }
        applied = {row.customer_id for row in connection.execute(upsert.statement, params)}
        for index in members:
            applied_here = customers[index].customer_id in applied
            decisions[index] = Outcome.OK if applied_here else Outcome.STALE
    return decisions


def upsert_customers(connection: Connection, items: Sequence[Item]) -> list[Decision]:
    """``handlers.crm.upsert_customer`` for many (a schema-1 message leaves the preferred
    language as stored: schema versions go in statements of their own)."""
    return _upsert_group(
        connection,
        items,
        lambda cmd: _UPSERT_CUSTOMERS[2 if isinstance(cmd, UpsertCustomerV2) else 1],
    )


def mirror_holders(connection: Connection, items: Sequence[Item]) -> list[Decision]:
    """``handlers.billing.mirror_account_holder`` for many."""
    return _upsert_group(connection, items, lambda cmd: _UPSERT_HOLDERS)


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
