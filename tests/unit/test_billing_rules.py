"""Billing's pure rules: VAT rounding, invoice numbers, periods, the schedule, money text."""

from __future__ import annotations

from datetime import date, datetime, time
from decimal import ROUND_HALF_UP, Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from handlers.invoicing import (
    BILLING_TIMEZONE,
    invoice_number,
    invoice_totals,
    period_end_instant,
    series_for,
    vat_minor,
)
from queues.contracts.money import MAX_MINOR_UNITS
from workers.billing import (
    billing_period,
    due_runs,
    format_money,
    last_complete_period,
    parse_month,
)


@pytest.mark.parametrize(
    ("net_minor", "expected_vat"),
    [
        (0, 0),
        (1, 0),  # 0.2 ▶ 0
        (2, 0),  # 0.4 ▶ 0
        (3, 1),  # 0.6 ▶ 1
        (5, 1),  # exactly 1
        (1002, 200),  # 200.4 ▶ 200
        (1003, 201),  # 200.6 ▶ 201
        (1999, 400),  # 399.8 ▶ 400
        (MAX_MINOR_UNITS, MAX_MINOR_UNITS // 5),
    ],
)
def test_vat_at_20_percent_rounds_to_the_nearest_minor_unit(
    net_minor: int, expected_vat: int
) -> None:
    assert vat_minor(net_minor) == expected_vat


@pytest.mark.parametrize(
    ("net_minor", "rate_bp", "expected_vat"),
    [
        (5, 1000, 1),  # 10 % of 5 = 0.5 ▶ 1: a half goes up
        (15, 1000, 2),  # 1.5 ▶ 2
        (25, 1000, 3),  # 2.5 ▶ 3 (half-even would give 2)
        (-5, 1000, -1),  # half away from zero for negative amounts
        (50, 1300, 7),  # 13 % of 50 = 6.5 ▶ 7
        (4, 1250, 1),  # 12.5 % of 4 = 0.5 ▶ 1
    ],
)
def test_a_half_minor_unit_rounds_up_away_from_zero(
    net_minor: int, rate_bp: int, expected_vat: int
) -> None:
    assert vat_minor(net_minor, rate_bp) == expected_vat


@given(
    net_minor=st.integers(min_value=-MAX_MINOR_UNITS, max_value=MAX_MINOR_UNITS),
    rate_bp=st.integers(min_value=0, max_value=10_000),
)
def test_vat_equals_exact_decimal_arithmetic_rounded_half_up(net_minor: int, rate_bp: int) -> None:
    exact = Decimal(net_minor) * Decimal(rate_bp) / Decimal(10_000)
    assert vat_minor(net_minor, rate_bp) == int(exact.quantize(Decimal(1), ROUND_HALF_UP))


def test_vat_is_computed_once_on_the_net_total_not_per_line() -> None:
    # Three lines of 3 cents: per line 0.6 ▶ 1 each would give 3; on the total 1.8 ▶ 2.
    totals = invoice_totals([3, 3, 3])
    assert (totals.net_minor, totals.vat_minor, totals.total_minor) == (9, 2, 11)


def test_invoice_numbers_are_per_year_series_zero_padded() -> None:
    assert series_for(date(2026, 11, 22)) == "INV-2026"
    assert invoice_number("INV-2026", 42) == "INV-2026-000042"
    assert invoice_number("INV-2026", 1_234_567) == "INV-2026-1234567"


def test_a_period_ends_at_midnight_vienna_after_its_last_day() -> None:
    end = period_end_instant(date(2026, 10, 31))
    assert end == datetime(2026, 11, 1, tzinfo=BILLING_TIMEZONE)
    assert end.utcoffset() is not None and end.utcoffset().total_seconds() == 3600  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("cycle_day", "month", "expected"),
    [
        (1, date(2026, 10, 1), (date(2026, 10, 1), date(2026, 10, 31))),
        (1, date(2026, 2, 1), (date(2026, 2, 1), date(2026, 2, 28))),
        (1, date(2028, 2, 1), (date(2028, 2, 1), date(2028, 2, 29))),
        (15, date(2026, 10, 1), (date(2026, 10, 15), date(2026, 11, 14))),
        (28, date(2026, 12, 1), (date(2026, 12, 28), date(2027, 1, 27))),
    ],
)
def test_a_billing_period_runs_from_the_cycle_day_to_the_day_before_the_next(
    cycle_day: int, month: date, expected: tuple[date, date]
) -> None:
    assert billing_period(cycle_day, month) == expected


@pytest.mark.parametrize(
    ("cycle_day", "today", "expected_start"),
    [
        (1, date(2026, 11, 1), date(2026, 10, 1)),
        (1, date(2026, 11, 22), date(2026, 10, 1)),
        (15, date(2026, 11, 15), date(2026, 10, 15)),
        (15, date(2026, 11, 14), date(2026, 9, 15)),
        (5, date(2027, 1, 5), date(2026, 12, 5)),
        (20, date(2027, 1, 10), date(2026, 11, 20)),
    ],
)
def test_the_default_period_is_the_last_one_that_has_ended(
    cycle_day: int, today: date, expected_start: date
) -> None:
    start, end = last_complete_period(cycle_day, today)
    assert start == expected_start
    assert end < today
    assert billing_period(cycle_day, start.replace(day=1)) == (start, end)


def test_cycle_days_and_periods_are_checked() -> None:
    with pytest.raises(ValueError, match="cycle day"):
        billing_period(29, date(2026, 1, 1))
    with pytest.raises(ValueError, match="YYYY-MM"):
        parse_month("2026-13")
    assert parse_month("2026-10") == date(2026, 10, 1)


def test_the_schedule_owes_each_recent_days_own_cycle_day_once_its_hour_has_passed() -> None:
    at = time(2, 0)
    before = datetime(2026, 11, 3, 1, 59, tzinfo=BILLING_TIMEZONE)
    after = datetime(2026, 11, 3, 2, 0, tzinfo=BILLING_TIMEZONE)

    assert due_runs(before, at, catch_up_days=1) == []
    assert due_runs(after, at, catch_up_days=1) == [(3, (date(2026, 10, 3), date(2026, 11, 2)))]
    assert [day for day, _ in due_runs(after, at, catch_up_days=3)] == [1, 2, 3]


def test_the_schedule_skips_days_29_to_31() -> None:
    night = datetime(2026, 12, 1, 3, 0, tzinfo=BILLING_TIMEZONE)
    assert [day for day, _ in due_runs(night, time(2, 0), catch_up_days=5)] == [27, 28, 1]


@pytest.mark.parametrize(
    ("amount_minor", "currency", "text"),
    [
        (239_900, "EUR", "2,399.00 EUR"),
        (-5, "EUR", "-0.05 EUR"),
        (1199, "JPY", "1,199 JPY"),
        (1481, "BHD", "1.481 BHD"),
    ],
)
def test_money_is_shown_with_the_currencys_exponent(
    amount_minor: int, currency: str, text: str
) -> None:
    assert format_money(amount_minor, currency) == text
