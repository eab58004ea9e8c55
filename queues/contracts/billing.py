"""Billing messages: accounts, charges, invoices and payments."""

from __future__ import annotations

from datetime import date
from typing import ClassVar, Self
from uuid import UUID

from pydantic import AwareDatetime, Field, model_validator

from queues.contracts.base import Contract
from queues.contracts.fields import BusinessReference, ShortText
from queues.contracts.money import CurrencyCode, Money, currency_exponent


class OpenAccount(Contract):
    """Open a billing account for a customer."""

    message_type: ClassVar[str] = "billing.account.open"
    schema_version: ClassVar[int] = 1

    account_id: UUID
    customer_id: UUID
    currency: CurrencyCode
    cycle_day: int = Field(
        ge=1, le=28, description="Day of month the bill run invoices this account"
    )
    payment_terms_days: int = Field(default=14, ge=0, le=90, description="Invoice due date offset")

    @model_validator(mode="after")
    def _currency_is_active(self) -> Self:
        currency_exponent(self.currency)
        return self


class PostCharge(Contract):
    """Post a charge to an account; ``source_reference`` is unique per account (business key)."""

    message_type: ClassVar[str] = "billing.charge.post"
    schema_version: ClassVar[int] = 1

    account_id: UUID
    source_reference: BusinessReference
    amount: Money
    description: ShortText
    charged_at: AwareDatetime
    service_id: UUID | None = None

    @model_validator(mode="after")
    def _amount_positive(self) -> Self:
        if self.amount.amount_minor == 0:
            raise ValueError("a charge must be greater than zero")
        return self


class IssueInvoice(Contract):
    """Invoice an account's uninvoiced charges of a period; idempotent per (account, period)."""

    message_type: ClassVar[str] = "billing.invoice.issue"
    schema_version: ClassVar[int] = 1

    account_id: UUID
    period_start: date
    period_end: date = Field(description="Inclusive last day of the period")

    @model_validator(mode="after")
    def _period_ordered(self) -> Self:
        if self.period_end < self.period_start:
            raise ValueError("period_end is before period_start")
        return self


class RecordPayment(Contract):
    """Apply a payment to an account; ``gateway_reference`` is unique (business key)."""

    message_type: ClassVar[str] = "billing.payment.record"
    schema_version: ClassVar[int] = 1

    account_id: UUID
    gateway_reference: BusinessReference
    amount: Money
    received_at: AwareDatetime

    @model_validator(mode="after")
    def _amount_positive(self) -> Self:
        if self.amount.amount_minor == 0:
            raise ValueError("a payment must be greater than zero")
        return self
