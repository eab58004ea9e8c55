"""Billing handlers: the account holder mirror, accounts and charges.

Invoices (``billing.invoice.issue``) are in ``handlers.invoicing``, payments
(``billing.payment.record``) in ``handlers.payments``; docs/billing.md describes both.
"""

from __future__ import annotations

import uuid

from sqlalchemy import func, select, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.orm import Session

from handlers.context import HandlerContext, Outcome, commit_outcome
from handlers.errors import AccountClosed, AccountConflict, CurrencyMismatch
from handlers.store.models import BillingAccount, BillingAccountHolder, BillingCharge
from handlers.store.uow import UnitOfWork
from queues.contracts import OpenAccount, PostCharge, UpsertCustomer
from queues.errors import NotYet


def mirror_account_holder(cmd: UpsertCustomer, ctx: HandlerContext, uow: UnitOfWork) -> Outcome:
    """Keep billing's copy of the holder's name and address; same stale rule as CRM's profile.

    Fed by the ``crm.customer.upsert`` fan-out; it may arrive before the account is opened.
    """
    values = {
        "customer_id": cmd.customer_id,
        "entity_version": cmd.entity_version,
        "name": cmd.name,
        "street": cmd.address.street,
        "postal_code": cmd.address.postal_code,
        "city": cmd.address.city,
        "country": cmd.address.country,
    }
    with uow:
        if not uow.claim_inbox(ctx.message_id, ctx.handler):
            return Outcome.DUPLICATE
        statement = insert(BillingAccountHolder).values(**values)
        changes = {name: statement.excluded[name] for name in values if name != "customer_id"}
        applied = uow.session.execute(
            statement.on_conflict_do_update(
                index_elements=[BillingAccountHolder.customer_id],
                set_={**changes, "updated_at": func.now()},
                where=BillingAccountHolder.entity_version < statement.excluded.entity_version,
            ).returning(BillingAccountHolder.customer_id)
        ).first()
        return commit_outcome(uow, ctx, Outcome.OK if applied is not None else Outcome.STALE)


def open_account(cmd: OpenAccount, ctx: HandlerContext, uow: UnitOfWork) -> Outcome:
    """Open the account; the same account again with the same data is a duplicate.

    Raises:
        AccountConflict: the account id is already open for another customer, currency,
            cycle day or payment terms.
    """
    with uow:
        if not uow.claim_inbox(ctx.message_id, ctx.handler):
            return Outcome.DUPLICATE
        opened = uow.session.execute(
            insert(BillingAccount)
            .values(
                account_id=cmd.account_id,
                customer_id=cmd.customer_id,
                currency=cmd.currency,
                cycle_day=cmd.cycle_day,
                payment_terms_days=cmd.payment_terms_days,
                message_id=ctx.message_id,
            )
            .on_conflict_do_nothing(index_elements=[BillingAccount.account_id])
            .returning(BillingAccount.account_id)
        ).first()
        if opened is not None:
            return commit_outcome(uow, ctx, Outcome.OK)
        existing = uow.session.get_one(BillingAccount, cmd.account_id)
        differing = [
            name
            for name in ("customer_id", "currency", "cycle_day", "payment_terms_days")
            if getattr(existing, name) != getattr(cmd, name)
        ]
        if differing:
            raise AccountConflict(f"account already open with other {', '.join(differing)}")
        return commit_outcome(uow, ctx, Outcome.DUPLICATE)


def lock_account(session: Session, account_id: uuid.UUID) -> BillingAccount | None:
    """The account, its row locked until the transaction ends (None: not open yet).

    Invoices and payments of one account take this lock first, so they run one at a time and
    always see each other's committed effects; a charge queues on the same row when it adds to
    the balance.
    """
    return session.scalars(
        select(BillingAccount).where(BillingAccount.account_id == account_id).with_for_update()
    ).one_or_none()


def charge_id_for(account_id: uuid.UUID, source_reference: str) -> uuid.UUID:
    """The charge's id, derived from its business key."""
    return uuid.uuid5(account_id, source_reference)


def post_charge(cmd: PostCharge, ctx: HandlerContext, uow: UnitOfWork) -> Outcome:
    """Post the charge and add it to the account's balance; a source reference charged before on
    this account is a duplicate (business-key idempotency).

    Raises:
        NotYet: the account is not open yet (``billing.account.open`` may still be in flight).
        AccountClosed: the account is closed.
        CurrencyMismatch: the charge's currency is not the account's.
    """
    with uow:
        if not uow.claim_inbox(ctx.message_id, ctx.handler):
            return Outcome.DUPLICATE
        account = uow.session.execute(
            select(BillingAccount.currency, BillingAccount.status).where(
                BillingAccount.account_id == cmd.account_id
            )
        ).first()
        if account is None:
            raise NotYet("account not open yet")
        if account.status != "open":
            raise AccountClosed("account is closed")
        if cmd.amount.currency != account.currency:
            raise CurrencyMismatch("charge currency differs from the account currency")
        posted = uow.session.execute(
            insert(BillingCharge)
            .values(
                charge_id=charge_id_for(cmd.account_id, cmd.source_reference),
                account_id=cmd.account_id,
                source_reference=cmd.source_reference,
                amount_minor=cmd.amount.amount_minor,
                currency=cmd.amount.currency,
                description=cmd.description,
                charged_at=cmd.charged_at,
                service_id=cmd.service_id,
                message_id=ctx.message_id,
            )
            .on_conflict_do_nothing(
                index_elements=[BillingCharge.account_id, BillingCharge.source_reference]
            )
            .returning(BillingCharge.charge_id)
        ).first()
        if posted is None:
            return commit_outcome(uow, ctx, Outcome.DUPLICATE)
        uow.session.execute(
            update(BillingAccount)
            .where(BillingAccount.account_id == cmd.account_id)
            .values(balance_minor=BillingAccount.balance_minor + cmd.amount.amount_minor)
        )
        return commit_outcome(uow, ctx, Outcome.OK)
