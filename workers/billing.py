"""The operator's side of billing: the bill run, its daily schedule, and account statements.

The bill run writes one ``billing.invoice.issue`` per account of a cycle day **into the outbox**;
the outbox relay publishes them and the billing workers issue the invoices. It is resumable and
idempotent per (account, period) three times over: the run keeps its place in ``billing_runs``
(one batch of accounts per transaction), each message id is derived from (account, period) and the
outbox keeps message ids unique, and the handler issues at most one invoice per (account, period).
docs/billing.md describes periods, the schedule and the statement.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import date, datetime, time, timedelta
from decimal import Decimal
from typing import Any

from sqlalchemy import ColumnElement, Engine, exists, func, select
from sqlalchemy.dialects.postgresql import insert

from handlers.invoicing import BILLING_TIMEZONE, period_end_instant
from handlers.store.models import (
    BillingAccount,
    BillingCharge,
    BillingInvoice,
    BillingPayment,
    BillingPaymentAllocation,
    BillingRun,
)
from handlers.store.uow import UnitOfWork
from queues.contracts import IssueInvoice
from queues.contracts.money import currency_exponent

BILLRUN_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "urn:telco-fleet:billing.billrun")
DEFAULT_BATCH_SIZE = 500
MAX_CYCLE_DAY = 28

# -- periods --------------------------------------------------------------------------------------


def _add_months(day: date, months: int) -> date:
    month_index = day.year * 12 + day.month - 1 + months
    return day.replace(year=month_index // 12, month=month_index % 12 + 1)


def billing_period(cycle_day: int, start_month: date) -> tuple[date, date]:
    """The period of ``cycle_day`` that starts in ``start_month``: from the cycle day to the day
    before the next month's cycle day, inclusive (cycle day 1: the calendar month).

    Raises:
        ValueError: the cycle day is not 1-28.
    """
    if not 1 <= cycle_day <= MAX_CYCLE_DAY:
        raise ValueError(f"cycle day must be 1-{MAX_CYCLE_DAY}")
    start = start_month.replace(day=cycle_day)
    return start, _add_months(start, 1) - timedelta(days=1)


def last_complete_period(cycle_day: int, today: date) -> tuple[date, date]:
    """The latest period of ``cycle_day`` that ended before ``today``.

    On the cycle day itself that is the period that ended yesterday.
    """
    months_back = 1 if today.day >= cycle_day else 2
    return billing_period(cycle_day, _add_months(today.replace(day=1), -months_back))


def parse_month(text: str) -> date:
    """``YYYY-MM`` as the first day of that month.

    Raises:
        ValueError: not a month in that form.
    """
    try:
        return datetime.strptime(text, "%Y-%m").date()
    except ValueError:
        raise ValueError("a period is written YYYY-MM, e.g. 2026-10") from None


def billing_today() -> date:
    """Today's date where billing lives (``BILLING_TIMEZONE``)."""
    return datetime.now(BILLING_TIMEZONE).date()


def run_id_for(cycle_day: int, period_start: date, period_end: date) -> uuid.UUID:
    """The bill run's id: one run per (cycle day, period), whoever starts it and how often."""
    return uuid.uuid5(BILLRUN_NAMESPACE, f"run:{cycle_day}:{period_start}:{period_end}")


def issue_message_id(account_id: uuid.UUID, period_start: date, period_end: date) -> uuid.UUID:
    """The message id of an account's ``billing.invoice.issue`` for a period (same every run)."""
    return uuid.uuid5(BILLRUN_NAMESPACE, f"issue:{account_id}:{period_start}:{period_end}")


# -- the bill run ---------------------------------------------------------------------------------


@dataclass
class BillRunReport:
    """What one pass of a bill run did; ``queued_total`` counts over every pass of the run."""

    run_id: uuid.UUID
    cycle_day: int
    period_start: date
    period_end: date
    status: str
    passes: int
    resumed: bool
    accounts: int = 0
    queued: int = 0
    already_queued: int = 0
    queued_total: int = 0

    def to_json(self) -> dict[str, Any]:
        document = asdict(self)
        document.update(
            run_id=str(self.run_id),
            period_start=self.period_start.isoformat(),
            period_end=self.period_end.isoformat(),
        )
        return document


Progress = Callable[[int, int], None]
"""``progress(accounts_done, accounts_total)`` after each committed batch."""


def _accounts_of(cycle_day: int, period_end: date) -> ColumnElement[bool]:
    """Accounts the run invoices: open ones of the cycle day, and closed ones of the cycle day
    that still hold uninvoiced charges (their final invoice)."""
    uninvoiced = exists().where(
        BillingCharge.account_id == BillingAccount.account_id,
        BillingCharge.invoice_id.is_(None),
        BillingCharge.charged_at < period_end_instant(period_end),
    )
    return (BillingAccount.cycle_day == cycle_day) & (
        (BillingAccount.status == "open") | uninvoiced
    )


def run_billrun(
    engine: Engine,
    cycle_day: int,
    period: tuple[date, date],
    *,
    batch_size: int = DEFAULT_BATCH_SIZE,
    pause_s: float = 0.0,
    progress: Progress | None = None,
    stopping: threading.Event | None = None,
) -> BillRunReport:
    """Queue one ``billing.invoice.issue`` per account of ``cycle_day`` for ``period``.

    A run that was interrupted resumes after its last committed batch; a finished run walks its
    accounts again and queues only what is missing (accounts opened since). Several runners of the
    same run at once take turns batch by batch on the run's row. ``stopping`` ends the pass after
    the current batch, leaving the run resumable.
    """
    if batch_size < 1:
        raise ValueError("batch size must be at least 1")
    period_start, period_end = period
    run_id = run_id_for(cycle_day, period_start, period_end)
    selected = _accounts_of(cycle_day, period_end)
    with UnitOfWork(engine) as uow:
        session = uow.session
        session.execute(
            insert(BillingRun)
            .values(
                run_id=run_id,
                cycle_day=cycle_day,
                period_start=period_start,
                period_end=period_end,
                passes=0,
            )
            .on_conflict_do_nothing(index_elements=[BillingRun.run_id])
        )
        run = session.scalars(
            select(BillingRun).where(BillingRun.run_id == run_id).with_for_update()
        ).one()
        resumed = run.status == "running" and run.passes > 0
        if run.status == "done":
            run.status, run.cursor_account_id, run.accounts_seen = "running", None, 0
            run.finished_at = None
        run.passes += 1
        run.updated_at = func.now()
        done = run.accounts_seen
        total = session.scalar(select(func.count()).where(selected)) or 0
        report = BillRunReport(
            run_id=run_id,
            cycle_day=cycle_day,
            period_start=period_start,
            period_end=period_end,
            status=run.status,
            passes=run.passes,
            resumed=resumed,
        )
        uow.commit()
    if progress is not None:
        progress(done, max(total, done))
    while stopping is None or not stopping.is_set():
        with UnitOfWork(engine) as uow:
            session = uow.session
            run = session.scalars(
                select(BillingRun).where(BillingRun.run_id == run_id).with_for_update()
            ).one()
            if run.status == "done":  # another runner finished it
                report.status, report.queued_total = run.status, run.messages_queued
                break
            query = select(BillingAccount.account_id).where(selected)
            if run.cursor_account_id is not None:
                query = query.where(BillingAccount.account_id > run.cursor_account_id)
            batch = session.scalars(query.order_by(BillingAccount.account_id).limit(batch_size))
            account_ids = list(batch)
            queued = sum(
                uow.add_outbox(
                    IssueInvoice(
                        account_id=account_id, period_start=period_start, period_end=period_end
                    ),
                    issue_message_id(account_id, period_start, period_end),
                    run_id,
                )
                for account_id in account_ids
            )
            if account_ids:
                run.cursor_account_id = account_ids[-1]
                run.accounts_seen += len(account_ids)
                run.messages_queued += queued
            else:
                run.status, run.finished_at = "done", func.now()
            run.updated_at = func.now()
            done = run.accounts_seen
            report.status, report.queued_total = run.status, run.messages_queued
            uow.commit()
        report.accounts += len(account_ids)
        report.queued += queued
        report.already_queued += len(account_ids) - queued
        if not account_ids:
            break
        if progress is not None:
            progress(done, max(total, done))
        if pause_s > 0:
            (stopping or threading.Event()).wait(pause_s)
    return report


def run_status(engine: Engine, cycle_day: int, period: tuple[date, date]) -> str | None:
    """``running``, ``done``, or None when the run never started."""
    with engine.connect() as connection:
        return connection.scalar(
            select(BillingRun.status).where(BillingRun.run_id == run_id_for(cycle_day, *period))
        )


def due_runs(now: datetime, at: time, catch_up_days: int) -> list[tuple[int, tuple[date, date]]]:
    """The (cycle day, period) runs the schedule owes at ``now``, oldest first.

    Each of the last ``catch_up_days`` days (today included once ``at`` has passed) owes the run
    of its own cycle day for the period that ended the day before; days 29-31 owe nothing.
    """
    local = now.astimezone(BILLING_TIMEZONE)
    today = local.date()
    owed = []
    for back in range(catch_up_days - 1, -1, -1):
        day = today - timedelta(days=back)
        if day.day > MAX_CYCLE_DAY or (day == today and local.time() < at):
            continue
        owed.append((day.day, last_complete_period(day.day, day)))
    return owed


def schedule_billruns(
    engine: Engine,
    stopping: threading.Event,
    *,
    at: time = time(2, 0),
    catch_up_days: int = 3,
    check_every_s: float = 60.0,
    on_report: Callable[[BillRunReport], None] | None = None,
    clock: Callable[[], datetime] = lambda: datetime.now(BILLING_TIMEZONE),
    **options: Any,
) -> None:
    """Until ``stopping``: every ``check_every_s``, start or resume each owed run not done yet.

    Safe with several schedulers running (they take turns on the run's row); a scheduler that was
    down catches up the last ``catch_up_days`` days. ``options`` go to ``run_billrun``.
    """
    while not stopping.is_set():
        for cycle_day, period in due_runs(clock(), at, catch_up_days):
            if stopping.is_set():
                break
            if run_status(engine, cycle_day, period) != "done":
                report = run_billrun(engine, cycle_day, period, stopping=stopping, **options)
                if on_report is not None:
                    on_report(report)
        stopping.wait(check_every_s)


# -- statements -----------------------------------------------------------------------------------


def format_money(amount_minor: int, currency: str) -> str:
    """``1234, "EUR"`` ▶ ``12.34 EUR``; ``1234, "JPY"`` ▶ ``1,234 JPY`` (the ISO-4217 exponent)."""
    exponent = currency_exponent(currency)
    return f"{Decimal(amount_minor).scaleb(-exponent):,.{exponent}f} {currency}"


@dataclass
class Statement:
    """An account's invoices, payments, credit and balance; amounts in minor units."""

    account_id: uuid.UUID
    customer_id: uuid.UUID
    currency: str
    exponent: int
    status: str
    cycle_day: int
    payment_terms_days: int
    balance_minor: int
    invoices: list[dict[str, Any]] = field(default_factory=list)
    payments: list[dict[str, Any]] = field(default_factory=list)
    unbilled_minor: int = 0

    @property
    def outstanding_minor(self) -> int:
        """What open invoices still ask for."""
        return sum(i["total_minor"] - i["paid_minor"] for i in self.invoices)

    @property
    def credit_minor(self) -> int:
        """Payments no invoice has taken yet."""
        return sum(p["unallocated_minor"] for p in self.payments)

    @property
    def reconciles(self) -> bool:
        """balance = outstanding invoices + uninvoiced charges − credit."""
        return self.balance_minor == (
            self.outstanding_minor + self.unbilled_minor - self.credit_minor
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "account_id": str(self.account_id),
            "customer_id": str(self.customer_id),
            "currency": self.currency,
            "exponent": self.exponent,
            "status": self.status,
            "cycle_day": self.cycle_day,
            "payment_terms_days": self.payment_terms_days,
            "invoices": self.invoices,
            "payments": self.payments,
            "unbilled_minor": self.unbilled_minor,
            "outstanding_minor": self.outstanding_minor,
            "credit_minor": self.credit_minor,
            "balance_minor": self.balance_minor,
            "reconciles": self.reconciles,
        }


def account_statement(
    engine: Engine, account_id: uuid.UUID, today: date | None = None
) -> Statement | None:
    """The statement of one account, read in one snapshot; None when there is no such account."""
    today = today or billing_today()
    with UnitOfWork(engine, isolation_level="REPEATABLE READ") as uow:
        session = uow.session
        account = session.get(BillingAccount, account_id)
        if account is None:
            return None
        statement = Statement(
            account_id=account.account_id,
            customer_id=account.customer_id,
            currency=account.currency,
            exponent=currency_exponent(account.currency),
            status=account.status,
            cycle_day=account.cycle_day,
            payment_terms_days=account.payment_terms_days,
            balance_minor=account.balance_minor,
        )
        invoices = session.scalars(
            select(BillingInvoice)
            .where(BillingInvoice.account_id == account_id)
            .order_by(BillingInvoice.issued_at, BillingInvoice.invoice_number)
        ).all()
        numbers = {invoice.invoice_id: invoice.invoice_number for invoice in invoices}
        statement.invoices = [
            {
                "invoice_number": invoice.invoice_number,
                "period_start": invoice.period_start.isoformat(),
                "period_end": invoice.period_end.isoformat(),
                "issued_on": invoice.issued_on.isoformat(),
                "due_on": invoice.due_on.isoformat(),
                "net_minor": invoice.net_minor,
                "vat_minor": invoice.vat_minor,
                "total_minor": invoice.total_minor,
                "paid_minor": invoice.paid_minor,
                "status": invoice.status,
                "overdue": invoice.status == "open" and invoice.due_on < today,
            }
            for invoice in invoices
        ]
        allocations: dict[uuid.UUID, list[dict[str, Any]]] = {}
        for allocation in session.scalars(
            select(BillingPaymentAllocation)
            .join(BillingPayment)
            .where(BillingPayment.account_id == account_id)
            .order_by(BillingPaymentAllocation.allocated_at)
        ):
            allocations.setdefault(allocation.payment_id, []).append(
                {
                    "invoice_number": numbers[allocation.invoice_id],
                    "amount_minor": allocation.amount_minor,
                    "source": allocation.source,
                }
            )
        statement.payments = [
            {
                "gateway_reference": payment.gateway_reference,
                "received_at": payment.received_at.isoformat(),
                "amount_minor": payment.amount_minor,
                "unallocated_minor": payment.unallocated_minor,
                "allocations": allocations.get(payment.payment_id, []),
            }
            for payment in session.scalars(
                select(BillingPayment)
                .where(BillingPayment.account_id == account_id)
                .order_by(BillingPayment.received_at, BillingPayment.payment_id)
            )
        ]
        unbilled = session.scalar(
            select(func.sum(BillingCharge.amount_minor)).where(
                BillingCharge.account_id == account_id, BillingCharge.invoice_id.is_(None)
            )
        )
        statement.unbilled_minor = int(unbilled or 0)  # sum(bigint) is numeric
        return statement
