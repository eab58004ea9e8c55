"""``billing.payment.record``: a payment pays the account's open invoices, oldest first.

- **Idempotent** per message id (inbox) and per gateway reference: a gateway that resends the
  same payment under a new message id gets ``duplicate`` and no second credit. The same reference
  with another account, amount or currency is ``payment_conflict`` (an operator looks at it).
- **Allocation**: oldest open invoice first (by time of issue), each up to what it still owes;
  one allocation row per (payment, invoice), so partial payments stay traceable.
- **Credit**: what no open invoice takes stays on the payment as ``unallocated_minor``; the
  account's credit is its sum, consumed by the next invoice (``apply_credit``, called by
  ``handlers.invoicing``) oldest payment first.
- The account's balance goes down by the payment; currency must be the account's.

Invariant (both handlers lock the account row first): after every commit an account has either
no credit or no open invoice.
"""

from __future__ import annotations

import uuid

from sqlalchemy import select, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.orm import Session

from handlers.billing import lock_account
from handlers.context import HandlerContext, Outcome, commit_outcome
from handlers.errors import CurrencyMismatch, PaymentConflict
from handlers.store.models import (
    BillingAccount,
    BillingInvoice,
    BillingPayment,
    BillingPaymentAllocation,
)
from handlers.store.uow import UnitOfWork
from queues.contracts import RecordPayment
from queues.errors import NotYet

PAYMENT_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "urn:telco-fleet:billing.payment")


def payment_id_for(gateway_reference: str) -> uuid.UUID:
    """The payment's id, derived from its business key (the gateway reference)."""
    return uuid.uuid5(PAYMENT_NAMESPACE, gateway_reference)


def record_payment(cmd: RecordPayment, ctx: HandlerContext, uow: UnitOfWork) -> Outcome:
    """Record the payment and allocate it to open invoices; the rest becomes credit.

    Raises:
        NotYet: the account is not open yet (``billing.account.open`` may still be in flight).
        CurrencyMismatch: the payment's currency is not the account's.
        PaymentConflict: the gateway reference was recorded with another account or amount.
    """
    with uow:
        if not uow.claim_inbox(ctx.message_id, ctx.handler):
            return Outcome.DUPLICATE
        session = uow.session
        account = lock_account(session, cmd.account_id)
        if account is None:
            raise NotYet("account not open yet")
        if cmd.amount.currency != account.currency:
            raise CurrencyMismatch("payment currency differs from the account currency")
        payment_id = payment_id_for(cmd.gateway_reference)
        recorded = session.execute(
            insert(BillingPayment)
            .values(
                payment_id=payment_id,
                account_id=cmd.account_id,
                gateway_reference=cmd.gateway_reference,
                amount_minor=cmd.amount.amount_minor,
                currency=cmd.amount.currency,
                received_at=cmd.received_at,
                unallocated_minor=cmd.amount.amount_minor,
                message_id=ctx.message_id,
            )
            .on_conflict_do_nothing(index_elements=[BillingPayment.gateway_reference])
            .returning(BillingPayment.payment_id)
        ).first()
        payment = session.get_one(BillingPayment, payment_id)
        if recorded is None:
            if (payment.account_id, payment.amount_minor, payment.currency) != (
                cmd.account_id,
                cmd.amount.amount_minor,
                cmd.amount.currency,
            ):
                raise PaymentConflict("gateway reference already recorded with other data")
            return commit_outcome(uow, ctx, Outcome.DUPLICATE)
        open_invoices = session.scalars(
            select(BillingInvoice)
            .where(BillingInvoice.account_id == cmd.account_id, BillingInvoice.status == "open")
            .order_by(BillingInvoice.issued_at, BillingInvoice.invoice_number)
        ).all()
        for invoice in open_invoices:
            if payment.unallocated_minor == 0:
                break
            _allocate(session, payment, invoice, "payment")
        session.execute(
            update(BillingAccount)
            .where(BillingAccount.account_id == cmd.account_id)
            .values(balance_minor=BillingAccount.balance_minor - cmd.amount.amount_minor)
        )
        return commit_outcome(uow, ctx, Outcome.OK)


def apply_credit(session: Session, invoice: BillingInvoice) -> None:
    """Pay a newly issued invoice from the account's credit, oldest payment first.

    The caller holds the account's lock (``lock_account``).
    """
    with_credit = session.scalars(
        select(BillingPayment)
        .where(
            BillingPayment.account_id == invoice.account_id,
            BillingPayment.unallocated_minor > 0,
        )
        .order_by(BillingPayment.received_at, BillingPayment.payment_id)
    ).all()
    for payment in with_credit:
        if invoice.status == "paid":
            break
        _allocate(session, payment, invoice, "credit")


def _allocate(
    session: Session, payment: BillingPayment, invoice: BillingInvoice, source: str
) -> None:
    """Move as much of the payment's unallocated money onto the invoice as it still owes."""
    amount = min(payment.unallocated_minor, invoice.total_minor - invoice.paid_minor)
    if amount <= 0:
        return
    session.add(
        BillingPaymentAllocation(
            payment_id=payment.payment_id,
            invoice_id=invoice.invoice_id,
            amount_minor=amount,
            source=source,
        )
    )
    payment.unallocated_minor -= amount
    invoice.paid_minor += amount
    if invoice.paid_minor == invoice.total_minor:
        invoice.status = "paid"
