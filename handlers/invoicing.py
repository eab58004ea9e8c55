"""``billing.invoice.issue``: an account's uninvoiced charges of a period become one invoice.

The rules (docs/billing.md has the reasoning and a worked example):

- **Charges**: every charge of the account not on an invoice yet and charged before the end of
  the period (its last day, inclusive, in ``BILLING_TIMEZONE``) — late charges of a period that
  was already invoiced included, so they land on the next invoice, never lost, never twice.
- **VAT**: 20 % (Austria's standard rate), computed **once per invoice** on the net total in the
  currency's minor units and rounded **half up** (half away from zero), in integers only. The
  lines carry net amounts. ``vat_minor`` is the one function that knows this.
- **Number**: ``INV-<year>-<sequence>``, one gapless series per year of issue. The sequence comes
  from the series' counter row, incremented inside the issuing transaction: the row lock orders
  concurrent issuers and a rollback (or crash) takes the increment back with the invoice.
- **Dates**: issued when the number is taken (database clock, so numbers and dates ascend
  together); due ``payment_terms_days`` after the day of issue.
- **Credit**: the account's unallocated payments pay the new invoice at once, oldest first.
- **Idempotent** per message id (inbox) and per (account, period): the invoice id is derived from
  them, and a second issue for the same period is a ``duplicate``. Nothing to invoice ▶ ``ok``,
  no invoice and no number used.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from zoneinfo import ZoneInfo

from sqlalchemy import func, insert, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.orm import Session

from handlers.billing import lock_account
from handlers.context import HandlerContext, Outcome, commit_outcome
from handlers.errors import ConcurrentUpdate
from handlers.payments import apply_credit
from handlers.store.models import (
    BillingAccount,
    BillingCharge,
    BillingInvoice,
    BillingInvoiceCounter,
    BillingInvoiceLine,
)
from handlers.store.uow import UnitOfWork
from queues.contracts import IssueInvoice
from queues.errors import NotYet

BILLING_TIMEZONE = ZoneInfo("Europe/Vienna")
"""Where billing periods begin and end, and whose calendar dates invoices."""

VAT_RATE_BASIS_POINTS = 2000
"""20 % — Austria's standard VAT rate (UStG §10(1)), in hundredths of a percent."""

SERIES_PREFIX = "INV"


@dataclass(frozen=True)
class InvoiceTotals:
    """Net, VAT and gross of one invoice, in minor units."""

    net_minor: int
    vat_minor: int

    @property
    def total_minor(self) -> int:
        return self.net_minor + self.vat_minor


def vat_minor(net_minor: int, rate_basis_points: int = VAT_RATE_BASIS_POINTS) -> int:
    """The VAT on ``net_minor`` at ``rate_basis_points``, rounded half up to a whole minor unit.

    Half up means half away from zero (commercial rounding): 0.5 ▶ 1, −0.5 ▶ −1. Integers only;
    the currency's exponent needs no special case because the amount is already in its minor
    units (cents for EUR, yen for JPY, fils for BHD).
    """
    whole, remainder = divmod(abs(net_minor) * rate_basis_points, 10_000)
    if 2 * remainder >= 10_000:
        whole += 1
    return whole if net_minor >= 0 else -whole


def invoice_totals(
    line_amounts_minor: list[int], rate_basis_points: int = VAT_RATE_BASIS_POINTS
) -> InvoiceTotals:
    """The totals of an invoice with these net line amounts: VAT once, on the net total."""
    net = sum(line_amounts_minor)
    return InvoiceTotals(net_minor=net, vat_minor=vat_minor(net, rate_basis_points))


def period_end_instant(period_end: date) -> datetime:
    """The first instant after the period's last day (exclusive bound), in ``BILLING_TIMEZONE``."""
    return datetime.combine(period_end + timedelta(days=1), time.min, tzinfo=BILLING_TIMEZONE)


def invoice_id_for(account_id: uuid.UUID, period_start: date, period_end: date) -> uuid.UUID:
    """The invoice's id, derived from its business key (account, period)."""
    return uuid.uuid5(account_id, f"invoice:{period_start.isoformat()}:{period_end.isoformat()}")


def series_for(issued_on: date) -> str:
    """The invoice series of a day of issue: one per calendar year."""
    return f"{SERIES_PREFIX}-{issued_on.year}"


def invoice_number(series: str, sequence: int) -> str:
    """The printed invoice number, e.g. ``INV-2026-000042``."""
    return f"{series}-{sequence:06d}"


def issue_invoice(cmd: IssueInvoice, ctx: HandlerContext, uow: UnitOfWork) -> Outcome:
    """Invoice the account's uninvoiced charges up to the end of the period.

    Raises:
        NotYet: the account is not open yet (``billing.account.open`` may still be in flight).
        ConcurrentUpdate: the year turned while the transaction waited for its number (the bus
            runs the handler again, in the new year's series).
    """
    with uow:
        if not uow.claim_inbox(ctx.message_id, ctx.handler):
            return Outcome.DUPLICATE
        session = uow.session
        account = lock_account(session, cmd.account_id)
        if account is None:
            raise NotYet("account not open yet")
        invoice_id = invoice_id_for(cmd.account_id, cmd.period_start, cmd.period_end)
        if session.get(BillingInvoice, invoice_id) is not None:
            return commit_outcome(uow, ctx, Outcome.DUPLICATE)
        charges = session.execute(
            select(
                BillingCharge.charge_id,
                BillingCharge.description,
                BillingCharge.charged_at,
                BillingCharge.amount_minor,
            )
            .where(
                BillingCharge.account_id == cmd.account_id,
                BillingCharge.invoice_id.is_(None),
                BillingCharge.charged_at < period_end_instant(cmd.period_end),
            )
            .order_by(BillingCharge.charged_at, BillingCharge.charge_id)
        ).all()
        if not charges:
            return commit_outcome(uow, ctx, Outcome.OK)
        totals = invoice_totals([charge.amount_minor for charge in charges])
        invoice = _new_invoice(session, account, invoice_id, cmd, ctx, totals)
        session.add(invoice)
        session.flush()
        session.execute(
            insert(BillingInvoiceLine),
            [
                {
                    "invoice_id": invoice_id,
                    "line_no": line_no,
                    "charge_id": charge.charge_id,
                    "description": charge.description,
                    "charged_at": charge.charged_at,
                    "amount_minor": charge.amount_minor,
                }
                for line_no, charge in enumerate(charges, start=1)
            ],
        )
        session.execute(
            update(BillingCharge)
            .where(BillingCharge.charge_id.in_([charge.charge_id for charge in charges]))
            .values(invoice_id=invoice_id)
        )
        session.execute(
            update(BillingAccount)
            .where(BillingAccount.account_id == cmd.account_id)
            .values(balance_minor=BillingAccount.balance_minor + totals.vat_minor)
        )
        apply_credit(session, invoice)
        return commit_outcome(uow, ctx, Outcome.OK)


def _new_invoice(
    session: Session,
    account: BillingAccount,
    invoice_id: uuid.UUID,
    cmd: IssueInvoice,
    ctx: HandlerContext,
    totals: InvoiceTotals,
) -> BillingInvoice:
    """The invoice, with the next number of its series taken in this transaction."""
    today = _database_now(session).astimezone(BILLING_TIMEZONE).date()
    series = series_for(today)
    sequence, issued_at = _next_number(session, series)
    issued_on = issued_at.astimezone(BILLING_TIMEZONE).date()
    if series_for(issued_on) != series:
        raise ConcurrentUpdate("the invoice year turned while waiting for a number")
    return BillingInvoice(
        invoice_id=invoice_id,
        account_id=cmd.account_id,
        invoice_number=invoice_number(series, sequence),
        series=series,
        sequence=sequence,
        period_start=cmd.period_start,
        period_end=cmd.period_end,
        issued_at=issued_at,
        issued_on=issued_on,
        due_on=issued_on + timedelta(days=account.payment_terms_days),
        currency=account.currency,
        net_minor=totals.net_minor,
        vat_rate_bp=VAT_RATE_BASIS_POINTS,
        vat_minor=totals.vat_minor,
        total_minor=totals.total_minor,
        paid_minor=0,
        status="open",
        message_id=ctx.message_id,
    )


def _database_now(session: Session) -> datetime:
    now = session.scalar(select(func.clock_timestamp()))
    assert isinstance(now, datetime)
    return now


def _next_number(session: Session, series: str) -> tuple[int, datetime]:
    """Take the next sequence number of ``series`` and the time it was taken.

    The upsert locks the counter row until this transaction ends; ``clock_timestamp()`` is read
    after the lock was granted, so a later number never carries an earlier time.
    """
    statement = pg_insert(BillingInvoiceCounter).values(series=series, last_number=1)
    row = session.execute(
        statement.on_conflict_do_update(
            index_elements=[BillingInvoiceCounter.series],
            set_={
                "last_number": BillingInvoiceCounter.last_number + 1,
                "updated_at": func.now(),
            },
        ).returning(BillingInvoiceCounter.last_number, func.clock_timestamp())
    ).one()
    return int(row[0]), row[1]
