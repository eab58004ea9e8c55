"""Invoices and payments through the bus, on the real PostgreSQL (docs/billing.md)."""

from __future__ import annotations

import random
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, date, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import Engine, func, select, text

from handlers import invoicing
from handlers.bus import Outcome
from handlers.errors import ConcurrentUpdate, CurrencyMismatch, PaymentConflict
from handlers.invoicing import BILLING_TIMEZONE, invoice_id_for
from handlers.store.models import (
    BillingAccount,
    BillingCharge,
    BillingInvoice,
    BillingInvoiceCounter,
    BillingInvoiceLine,
    BillingPayment,
    BillingPaymentAllocation,
    Inbox,
)
from queues.contracts import Contract, Money
from queues.errors import NotYet
from tests.support.factories import sample
from tests.support.handlers import Deliver

pytestmark = pytest.mark.db

Read = Callable[..., Any]

OCTOBER = (date(2026, 10, 1), date(2026, 10, 31))
NOVEMBER = (date(2026, 11, 1), date(2026, 11, 30))


def _at(day: date, hour: int = 12) -> datetime:
    return datetime(day.year, day.month, day.day, hour, tzinfo=BILLING_TIMEZONE)


def _open(deliver: Deliver, currency: str = "EUR", payment_terms_days: int = 14) -> uuid.UUID:
    account = sample(
        "billing.account.open", currency=currency, payment_terms_days=payment_terms_days
    )
    assert deliver("billing", account) is Outcome.OK
    return account.account_id  # type: ignore[attr-defined, no-any-return]


def _charge(
    deliver: Deliver, account_id: uuid.UUID, amount_minor: int, currency: str, on: date
) -> Outcome:
    return deliver(
        "billing",
        sample(
            "billing.charge.post",
            account_id=account_id,
            amount=Money.of(amount_minor, currency),
            charged_at=_at(on),
        ),
    )


def _issue(deliver: Deliver, account_id: uuid.UUID, period: tuple[date, date], **kw: Any) -> Any:
    payload = sample(
        "billing.invoice.issue", account_id=account_id, period_start=period[0], period_end=period[1]
    )
    return deliver("billing", payload, **kw)


def _pay(
    deliver: Deliver,
    account_id: uuid.UUID,
    amount_minor: int,
    currency: str = "EUR",
    reference: str | None = None,
    **kw: Any,
) -> Any:
    fields: dict[str, Any] = {"account_id": account_id, "amount": Money.of(amount_minor, currency)}
    if reference is not None:
        fields["gateway_reference"] = reference
    payload = sample("billing.payment.record", **fields)
    return deliver("billing", payload, **kw)


def _invoice(read: Read, account_id: uuid.UUID, period: tuple[date, date]) -> BillingInvoice:
    return read(lambda s: s.get_one(BillingInvoice, invoice_id_for(account_id, *period)))  # type: ignore[no-any-return]


def _lines(read: Read, invoice_id: uuid.UUID) -> list[int]:
    return read(  # type: ignore[no-any-return]
        lambda s: list(
            s.scalars(
                select(BillingInvoiceLine.amount_minor)
                .where(BillingInvoiceLine.invoice_id == invoice_id)
                .order_by(BillingInvoiceLine.line_no)
            )
        )
    )


def _credit(read: Read, account_id: uuid.UUID) -> int:
    return int(
        read(
            lambda s: s.scalar(
                select(func.coalesce(func.sum(BillingPayment.unallocated_minor), 0)).where(
                    BillingPayment.account_id == account_id
                )
            )
        )
    )


def _balance(read: Read, account_id: uuid.UUID) -> int:
    return int(read(lambda s: s.get_one(BillingAccount, account_id).balance_minor))


def _counter(read: Read, series: str) -> int | None:
    return read(  # type: ignore[no-any-return]
        lambda s: s.scalar(
            select(BillingInvoiceCounter.last_number).where(BillingInvoiceCounter.series == series)
        )
    )


def _vienna_today() -> date:
    return datetime.now(BILLING_TIMEZONE).date()


# -- invoices ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("currency", "lines", "net", "vat", "total"),
    [
        ("EUR", [1999], 1999, 400, 2399),  # 399.8 ▶ 400
        ("EUR", [1002], 1002, 200, 1202),  # 200.4 ▶ 200
        ("EUR", [3, 3, 3], 9, 2, 11),  # on the total 1.8 ▶ 2; per line it would be 3
        ("EUR", [1999, 1, 1, 1], 2002, 400, 2402),  # 400.4 ▶ 400; per line 400 + 0 + 0 + 0
        ("JPY", [999], 999, 200, 1199),  # zero exponent: 199.8 yen ▶ 200 yen
        ("JPY", [1, 1], 2, 0, 2),  # 0.4 yen ▶ 0
        ("JPY", [3], 3, 1, 4),  # 0.6 yen ▶ 1
        ("BHD", [1234], 1234, 247, 1481),  # three decimals: 246.8 fils ▶ 247
        ("BHD", [12_345], 12_345, 2469, 14_814),  # exactly 2469 fils
    ],
)
def test_invoice_totals_and_vat_match_the_hand_computed_amounts(
    deliver: Deliver,
    read: Read,
    currency: str,
    lines: list[int],
    net: int,
    vat: int,
    total: int,
) -> None:
    # Given an account in the currency with charges in October
    account_id = _open(deliver, currency, payment_terms_days=30)
    for day, amount in enumerate(lines, start=1):
        assert _charge(deliver, account_id, amount, currency, date(2026, 10, day)) is Outcome.OK

    # When October is invoiced
    assert _issue(deliver, account_id, OCTOBER) is Outcome.OK

    # Then the invoice carries the net lines, 20 % VAT on the total, and the account's terms
    invoice = _invoice(read, account_id, OCTOBER)
    assert (invoice.net_minor, invoice.vat_minor, invoice.total_minor) == (net, vat, total)
    assert (invoice.currency, invoice.vat_rate_bp, invoice.status) == (currency, 2000, "open")
    assert sorted(_lines(read, invoice.invoice_id)) == sorted(lines)
    assert invoice.issued_on == _vienna_today()
    assert invoice.due_on == invoice.issued_on + timedelta(days=30)
    assert invoice.invoice_number == f"INV-{invoice.issued_on.year}-{invoice.sequence:06d}"
    assert _balance(read, account_id) == total


def test_a_period_is_invoiced_once_and_a_late_charge_goes_on_the_next_invoice(
    deliver: Deliver, read: Read
) -> None:
    account_id = _open(deliver)
    _charge(deliver, account_id, 1000, "EUR", date(2026, 10, 10))
    _charge(deliver, account_id, 700, "EUR", date(2026, 11, 3))
    first_id = uuid.uuid4()
    assert _issue(deliver, account_id, OCTOBER, message_id=first_id) is Outcome.OK

    # A charge for October arrives after October was invoiced
    _charge(deliver, account_id, 50, "EUR", date(2026, 10, 30))
    # The same message again, and October once more under another id: no second invoice
    assert _issue(deliver, account_id, OCTOBER, message_id=first_id) is Outcome.DUPLICATE
    again = uuid.uuid4()
    assert _issue(deliver, account_id, OCTOBER, message_id=again) is Outcome.DUPLICATE
    assert read(lambda s: s.get_one(Inbox, (again, "issue_invoice")).outcome) == "duplicate"
    october = _invoice(read, account_id, OCTOBER)
    assert _lines(read, october.invoice_id) == [1000]

    # A December charge stays out of November
    _charge(deliver, account_id, 999, "EUR", date(2026, 12, 1))
    assert _issue(deliver, account_id, NOVEMBER) is Outcome.OK
    november = _invoice(read, account_id, NOVEMBER)
    assert _lines(read, november.invoice_id) == [50, 700]  # the late October charge first
    assert (november.net_minor, november.vat_minor) == (750, 150)
    assert november.sequence > october.sequence
    charges = read(
        lambda s: s.execute(
            select(BillingCharge.amount_minor, BillingCharge.invoice_id)
            .where(BillingCharge.account_id == account_id)
            .order_by(BillingCharge.charged_at)
        ).all()
    )
    assert [tuple(c) for c in charges] == [
        (1000, october.invoice_id),
        (50, november.invoice_id),
        (700, november.invoice_id),
        (999, None),
    ]


def test_a_charge_in_the_last_evening_of_the_period_belongs_to_it_in_vienna_time(
    deliver: Deliver, read: Read
) -> None:
    account_id = _open(deliver)
    # 23:30 on 31 October in Vienna is still October, though it is 22:30 UTC
    last_evening = datetime(2026, 10, 31, 23, 30, tzinfo=BILLING_TIMEZONE)
    just_after = datetime(2026, 11, 1, 0, 0, tzinfo=BILLING_TIMEZONE)
    for when, amount in ((last_evening, 100), (just_after, 200)):
        charge = sample(
            "billing.charge.post",
            account_id=account_id,
            amount=Money.of(amount, "EUR"),
            charged_at=when.astimezone(UTC),
        )
        assert deliver("billing", charge) is Outcome.OK

    assert _issue(deliver, account_id, OCTOBER) is Outcome.OK
    assert _lines(read, invoice_id_for(account_id, *OCTOBER)) == [100]


def test_a_period_without_charges_issues_no_invoice_and_uses_no_number(
    deliver: Deliver, read: Read
) -> None:
    account_id = _open(deliver)
    series = f"INV-{_vienna_today().year}"
    before = _counter(read, series)

    assert _issue(deliver, account_id, OCTOBER) is Outcome.OK

    assert read(lambda s: s.get(BillingInvoice, invoice_id_for(account_id, *OCTOBER))) is None
    assert _counter(read, series) == before


def test_an_invoice_for_an_account_not_open_yet_is_not_yet_and_leaves_no_trace(
    deliver: Deliver, read: Read
) -> None:
    message_id = uuid.uuid4()
    with pytest.raises(NotYet):
        _issue(deliver, uuid.uuid4(), OCTOBER, message_id=message_id)
    with pytest.raises(NotYet):
        _pay(deliver, uuid.uuid4(), 100, message_id=message_id)
    assert read(lambda s: s.get(Inbox, (message_id, "issue_invoice"))) is None
    assert read(lambda s: s.get(Inbox, (message_id, "record_payment"))) is None


def test_an_issue_that_rolls_back_gives_its_number_back(
    deliver: Deliver, read: Read, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given an issue that fails after it took a number (a crash before commit, in effect)
    account_id = _open(deliver)
    _charge(deliver, account_id, 1000, "EUR", date(2026, 10, 2))
    series = f"INV-{_vienna_today().year}"

    def crash(*_args: Any) -> None:
        raise RuntimeError("crashed after taking a number")

    monkeypatch.setattr(invoicing, "apply_credit", crash)
    with pytest.raises(RuntimeError):
        _issue(deliver, account_id, OCTOBER)
    taken_before = _counter(read, series) or 0
    monkeypatch.undo()

    # When it runs again
    assert _issue(deliver, account_id, OCTOBER) is Outcome.OK

    # Then it gets the very next number: the failed attempt left no gap
    assert _invoice(read, account_id, OCTOBER).sequence == taken_before + 1
    assert _counter(read, series) == taken_before + 1


def test_a_year_turning_while_waiting_for_a_number_reruns_in_the_new_series(
    deliver: Deliver, read: Read, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given the clock read before the number says last year, the number is taken in this one
    account_id = _open(deliver)
    _charge(deliver, account_id, 1000, "EUR", date(2026, 10, 2))
    this_year = _vienna_today().year
    real_now = invoicing._database_now
    calls = []

    def new_years_eve(session: Any) -> datetime:
        calls.append(1)
        if len(calls) == 1:
            return datetime(this_year - 1, 12, 31, 23, 59, 59, tzinfo=BILLING_TIMEZONE)
        return real_now(session)

    monkeypatch.setattr(invoicing, "_database_now", new_years_eve)

    # When the invoice is issued
    assert _issue(deliver, account_id, OCTOBER) is Outcome.OK

    # Then the bus reran the handler and the old year's series took no number
    assert len(calls) == 2
    assert _invoice(read, account_id, OCTOBER).series == f"INV-{this_year}"
    assert _counter(read, f"INV-{this_year - 1}") is None


def test_the_year_check_raises_concurrent_update(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(
        invoicing, "_database_now", lambda _s: datetime(2000, 1, 1, tzinfo=BILLING_TIMEZONE)
    )
    monkeypatch.setattr(
        invoicing, "_next_number", lambda _s, _series: (1, datetime(2001, 1, 1, tzinfo=UTC))
    )
    with pytest.raises(ConcurrentUpdate):
        invoicing._new_invoice(
            None,  # type: ignore[arg-type]
            BillingAccount(currency="EUR", payment_terms_days=14),
            uuid.uuid4(),
            sample("billing.invoice.issue"),  # type: ignore[arg-type]
            None,  # type: ignore[arg-type]
            invoicing.invoice_totals([100]),
        )


def test_concurrent_issuers_take_every_number_once_without_gaps(
    deliver: Deliver, read: Read
) -> None:
    # Given 120 accounts with a charge each
    accounts = [_open(deliver) for _ in range(120)]
    for account_id in accounts:
        _charge(deliver, account_id, 1234, "EUR", date(2026, 10, 5))
    series = f"INV-{_vienna_today().year}"
    before = _counter(read, series) or 0

    # When 8 threads issue their invoices at once
    with ThreadPoolExecutor(8) as pool:
        outcomes = list(pool.map(lambda a: _issue(deliver, a, OCTOBER), accounts))

    # Then the new numbers are exactly the next 120
    assert outcomes == [Outcome.OK] * 120
    sequences = read(
        lambda s: sorted(
            s.scalars(
                select(BillingInvoice.sequence).where(BillingInvoice.account_id.in_(accounts))
            )
        )
    )
    assert sequences == list(range(before + 1, before + 121))


# -- payments ---------------------------------------------------------------------------------


def test_a_payment_pays_the_oldest_open_invoice_first_and_tracks_partial_payments(
    deliver: Deliver, read: Read
) -> None:
    account_id = _open(deliver)
    _charge(deliver, account_id, 1999, "EUR", date(2026, 10, 5))  # October: 2399 gross
    _issue(deliver, account_id, OCTOBER)
    _charge(deliver, account_id, 999, "EUR", date(2026, 11, 5))  # November: 1199 gross
    _issue(deliver, account_id, NOVEMBER)

    # 30.00 pays October in full and 6.01 of November
    assert _pay(deliver, account_id, 3000) is Outcome.OK
    october = _invoice(read, account_id, OCTOBER)
    november = _invoice(read, account_id, NOVEMBER)
    assert (october.paid_minor, october.status) == (2399, "paid")
    assert (november.paid_minor, november.status) == (601, "open")

    # 10.00 more pays the rest of November (5.98); 4.02 becomes credit
    assert _pay(deliver, account_id, 1000) is Outcome.OK
    november = _invoice(read, account_id, NOVEMBER)
    assert (november.paid_minor, november.status) == (1199, "paid")
    assert _credit(read, account_id) == 402
    assert _balance(read, account_id) == 2399 + 1199 - 4000
    allocations = read(
        lambda s: s.execute(
            select(BillingPaymentAllocation.amount_minor, BillingPaymentAllocation.source)
            .join(BillingPayment)
            .where(BillingPayment.account_id == account_id)
            .order_by(BillingPaymentAllocation.allocated_at, BillingPaymentAllocation.amount_minor)
        ).all()
    )
    assert sorted(tuple(a) for a in allocations) == [
        (598, "payment"),
        (601, "payment"),
        (2399, "payment"),
    ]


def test_a_payment_resent_under_a_new_message_id_credits_once(deliver: Deliver, read: Read) -> None:
    account_id = _open(deliver)
    first, resent = uuid.uuid4(), uuid.uuid4()
    assert _pay(deliver, account_id, 2500, reference="psp-42", message_id=first) is Outcome.OK

    assert (
        _pay(deliver, account_id, 2500, reference="psp-42", message_id=resent) is Outcome.DUPLICATE
    )
    assert _pay(deliver, account_id, 2500, reference="psp-42", message_id=first) is (
        Outcome.DUPLICATE
    )

    assert _credit(read, account_id) == 2500
    assert _balance(read, account_id) == -2500
    assert read(lambda s: s.get_one(Inbox, (resent, "record_payment")).outcome) == "duplicate"
    count = read(
        lambda s: s.scalar(select(func.count()).where(BillingPayment.gateway_reference == "psp-42"))
    )
    assert count == 1


def test_the_same_gateway_reference_with_another_amount_is_a_payment_conflict(
    deliver: Deliver, read: Read
) -> None:
    account_id, other_account = _open(deliver), _open(deliver)
    reference = f"psp-{uuid.uuid4().hex[:12]}"
    assert _pay(deliver, account_id, 2500, reference=reference) is Outcome.OK

    with pytest.raises(PaymentConflict) as caught:
        _pay(deliver, account_id, 2600, reference=reference)
    assert caught.value.reason == "payment_conflict"
    with pytest.raises(PaymentConflict):
        _pay(deliver, other_account, 2500, reference=reference)
    assert _balance(read, other_account) == 0


def test_an_overpayment_becomes_credit_that_the_next_invoices_consume(
    deliver: Deliver, read: Read
) -> None:
    # Given 50.00 paid with nothing to pay
    account_id = _open(deliver)
    assert _pay(deliver, account_id, 5000) is Outcome.OK
    assert _credit(read, account_id) == 5000

    # When October (23.99 gross) is invoiced, the credit pays it at once
    _charge(deliver, account_id, 1999, "EUR", date(2026, 10, 5))
    _issue(deliver, account_id, OCTOBER)
    october = _invoice(read, account_id, OCTOBER)
    assert (october.paid_minor, october.status) == (2399, "paid")
    assert _credit(read, account_id) == 2601

    # And November (30.00 gross) takes what is left and stays open for 3.99
    _charge(deliver, account_id, 2500, "EUR", date(2026, 11, 5))
    _issue(deliver, account_id, NOVEMBER)
    november = _invoice(read, account_id, NOVEMBER)
    assert (november.total_minor, november.paid_minor, november.status) == (3000, 2601, "open")
    assert _credit(read, account_id) == 0
    sources = read(
        lambda s: set(
            s.scalars(
                select(BillingPaymentAllocation.source).where(
                    BillingPaymentAllocation.invoice_id.in_(
                        [october.invoice_id, november.invoice_id]
                    )
                )
            )
        )
    )
    assert sources == {"credit"}
    assert _balance(read, account_id) == 2399 + 3000 - 5000


def test_a_payment_in_another_currency_is_refused_as_currency_mismatch(
    deliver: Deliver, read: Read
) -> None:
    account_id = _open(deliver, "EUR")
    with pytest.raises(CurrencyMismatch) as caught:
        _pay(deliver, account_id, 500, "JPY")
    assert caught.value.reason == "currency_mismatch"
    assert _credit(read, account_id) == 0
    assert _balance(read, account_id) == 0


# -- reconciliation ---------------------------------------------------------------------------


def test_balances_reconcile_for_every_account_after_a_mixed_concurrent_run(
    deliver: Deliver, read: Read, engine: Engine
) -> None:
    rng = random.Random(7)
    currency_of = {}
    for _ in range(24):
        currency = rng.choice(["EUR", "JPY", "BHD"])
        currency_of[_open(deliver, currency)] = currency
    accounts = list(currency_of)

    def charges(period: tuple[date, date]) -> list[Contract]:
        return [
            sample(
                "billing.charge.post",
                account_id=a,
                amount=Money.of(rng.randint(1, 50_000), currency_of[a]),
                charged_at=_at(period[0] + timedelta(days=rng.randint(0, 29))),
            )
            for a in accounts
            for _ in range(rng.randint(0, 4))
        ]

    def payments() -> list[Contract]:
        return [
            sample(
                "billing.payment.record",
                account_id=a,
                amount=Money.of(rng.randint(1, 60_000), currency_of[a]),
            )
            for a in accounts
            if rng.random() < 0.7
        ]

    def issues(period: tuple[date, date]) -> list[Contract]:
        return [
            sample(
                "billing.invoice.issue", account_id=a, period_start=period[0], period_end=period[1]
            )
            for a in accounts
        ]

    def deliver_all(payloads: list[Contract]) -> list[Outcome]:
        rng.shuffle(payloads)
        with ThreadPoolExecutor(8) as pool:
            return list(pool.map(lambda p: deliver("billing", p), payloads))

    # October's charges, payments and invoices race each other, late October charges too
    october_payments = payments()
    deliver_all(charges(OCTOBER))
    deliver_all([*issues(OCTOBER), *october_payments, *charges(OCTOBER)])
    # the gateway resends some payments under new message ids
    resent = deliver_all(october_payments[:5])
    assert resent == [Outcome.DUPLICATE] * len(resent)
    # November
    deliver_all([*charges(NOVEMBER), *payments()])
    deliver_all([*issues(NOVEMBER), *issues(OCTOBER), *payments()])

    with engine.connect() as connection:
        rows = connection.execute(
            text(
                """
                SELECT a.account_id, a.balance_minor,
                  (SELECT coalesce(sum(amount_minor), 0) FROM billing_charges c
                     WHERE c.account_id = a.account_id) AS charges,
                  (SELECT coalesce(sum(vat_minor), 0) FROM billing_invoices i
                     WHERE i.account_id = a.account_id) AS vat,
                  (SELECT coalesce(sum(amount_minor), 0) FROM billing_payments p
                     WHERE p.account_id = a.account_id) AS payments,
                  (SELECT coalesce(sum(total_minor - paid_minor), 0) FROM billing_invoices i
                     WHERE i.account_id = a.account_id) AS outstanding,
                  (SELECT coalesce(sum(amount_minor), 0) FROM billing_charges c
                     WHERE c.account_id = a.account_id AND c.invoice_id IS NULL) AS unbilled,
                  (SELECT coalesce(sum(unallocated_minor), 0) FROM billing_payments p
                     WHERE p.account_id = a.account_id) AS credit
                FROM billing_accounts a WHERE a.account_id = ANY(:accounts)
                """
            ),
            {"accounts": accounts},
        ).all()
        allocations_match = connection.execute(
            text(
                """
                SELECT
                  (SELECT count(*) FROM billing_invoices i WHERE i.paid_minor <>
                     (SELECT coalesce(sum(amount_minor), 0) FROM billing_payment_allocations x
                        WHERE x.invoice_id = i.invoice_id)),
                  (SELECT count(*) FROM billing_payments p
                     WHERE p.amount_minor - p.unallocated_minor <>
                     (SELECT coalesce(sum(amount_minor), 0) FROM billing_payment_allocations x
                        WHERE x.payment_id = p.payment_id)),
                  (SELECT count(*) FROM billing_invoices i WHERE i.net_minor <>
                     (SELECT sum(amount_minor) FROM billing_invoice_lines l
                        WHERE l.invoice_id = i.invoice_id)),
                  (SELECT count(*) FROM billing_charges c JOIN billing_invoice_lines l
                     USING (charge_id) WHERE c.invoice_id IS DISTINCT FROM l.invoice_id),
                  (SELECT count(*) FROM billing_charges c WHERE c.invoice_id IS NOT NULL AND
                     NOT EXISTS (SELECT 1 FROM billing_invoice_lines l
                                 WHERE l.charge_id = c.charge_id))
                """
            )
        ).one()

    assert len(rows) == len(accounts)
    for row in rows:
        # charges + VAT − payments = balance
        assert row.charges + row.vat - row.payments == row.balance_minor, row
        # the same balance seen as open invoices + uninvoiced charges − credit
        assert row.outstanding + row.unbilled - row.credit == row.balance_minor, row
        # credit only when nothing is open
        assert row.credit == 0 or row.outstanding == 0, row
    assert tuple(allocations_match) == (0, 0, 0, 0, 0)
    invoiced = read(
        lambda s: s.scalar(
            select(func.count(func.distinct(BillingInvoice.account_id))).where(
                BillingInvoice.account_id.in_(accounts)
            )
        )
    )
    assert invoiced > 0


def test_every_invoice_number_of_the_module_forms_an_unbroken_sequence(read: Read) -> None:
    # Runs last in this module: every test above issued into the same schema.
    issued = read(
        lambda s: s.execute(
            select(
                BillingInvoice.series,
                func.count(),
                func.min(BillingInvoice.sequence),
                func.max(BillingInvoice.sequence),
            ).group_by(BillingInvoice.series)
        ).all()
    )
    counters = read(
        lambda s: dict(
            s.execute(select(BillingInvoiceCounter.series, BillingInvoiceCounter.last_number)).all()
        )
    )
    assert issued
    for series, count, first, last in issued:
        assert (first, last) == (1, count), series  # unique (series, sequence): 1..count
        assert counters[series] == count, series
    assert set(counters) == {series for series, *_ in issued}
