"""The store's tables: SQLAlchemy 2 declarative models on PostgreSQL types.

Money is BIGINT minor units plus an ISO-4217 currency (char(3)), never a float. Timestamps are
``timestamptz``. Tables carry no schema: the engine's ``search_path`` places them (tests migrate
into a schema of their own). The Alembic revisions in ``migrations/`` must match these models;
``alembic check`` (run by a test) fails on drift.
"""

from __future__ import annotations

import uuid
from datetime import date, datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    Date,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    SmallInteger,
    String,
    Text,
    UniqueConstraint,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import CHAR, JSONB, UUID
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

SERVICE_STATES = ("active", "suspended", "terminated")
ACCOUNT_STATUSES = ("open", "closed")
INVOICE_STATUSES = ("open", "paid")
ALLOCATION_SOURCES = ("payment", "credit")
BILL_RUN_STATUSES = ("running", "done")


def _now() -> Any:
    return func.now()


class Base(DeclarativeBase):
    """Declarative base with a naming convention, so migrations name constraints predictably."""

    metadata = MetaData(naming_convention=NAMING_CONVENTION)


# -- CRM ------------------------------------------------------------------------------------------


class CrmCustomer(Base):
    """A customer profile as CRM knows it; ``entity_version`` only ever grows."""

    __tablename__ = "crm_customers"

    customer_id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), primary_key=True)
    entity_version: Mapped[int] = mapped_column(BigInteger)
    name: Mapped[str] = mapped_column(Text)
    email: Mapped[str | None] = mapped_column(Text)
    msisdn: Mapped[str | None] = mapped_column(String(16))
    street: Mapped[str] = mapped_column(Text)
    postal_code: Mapped[str] = mapped_column(String(12))
    city: Mapped[str] = mapped_column(Text)
    country: Mapped[str] = mapped_column(CHAR(2))
    preferred_language: Mapped[str | None] = mapped_column(String(8))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=_now())


class CrmInteraction(Base):
    """One entry of a customer's interaction history (append only, keyed by its own id)."""

    __tablename__ = "crm_interactions"
    __table_args__ = (Index(None, "customer_id", "occurred_at"),)

    interaction_id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), primary_key=True)
    # No foreign key: an interaction may arrive before (or without) the profile.
    customer_id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True))
    channel: Mapped[str] = mapped_column(String(32))
    topic: Mapped[str] = mapped_column(Text)
    note: Mapped[str | None] = mapped_column(Text)
    occurred_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    message_id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True))


# -- billing --------------------------------------------------------------------------------------


class BillingAccountHolder(Base):
    """Billing's mirror of the CRM profile (name, address), keyed by customer.

    A table of its own rather than columns on the account: the ``crm.customer.upsert`` fan-out may
    arrive before ``billing.account.open``, and one customer may hold several accounts.
    """

    __tablename__ = "billing_account_holders"

    customer_id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), primary_key=True)
    entity_version: Mapped[int] = mapped_column(BigInteger)
    name: Mapped[str] = mapped_column(Text)
    street: Mapped[str] = mapped_column(Text)
    postal_code: Mapped[str] = mapped_column(String(12))
    city: Mapped[str] = mapped_column(Text)
    country: Mapped[str] = mapped_column(CHAR(2))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=_now())


class BillingAccount(Base):
    """A billing account; ``balance_minor`` = its charges + the VAT of its invoices − its payments.

    Positive: the customer owes (net charges not invoiced yet included); negative: credit.
    """

    __tablename__ = "billing_accounts"
    __table_args__ = (
        CheckConstraint(f"status IN {ACCOUNT_STATUSES!r}", name="status"),
        CheckConstraint("cycle_day BETWEEN 1 AND 28", name="cycle_day"),
        Index(None, "customer_id"),
    )

    account_id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), primary_key=True)
    customer_id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True))
    currency: Mapped[str] = mapped_column(CHAR(3))
    cycle_day: Mapped[int] = mapped_column(SmallInteger)
    payment_terms_days: Mapped[int] = mapped_column(SmallInteger)
    status: Mapped[str] = mapped_column(String(16), server_default=text("'open'"))
    balance_minor: Mapped[int] = mapped_column(BigInteger, server_default=text("0"))
    opened_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=_now())
    message_id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True))


class BillingCharge(Base):
    """A posted charge; ``(account_id, source_reference)`` is the business key."""

    __tablename__ = "billing_charges"
    __table_args__ = (
        UniqueConstraint("account_id", "source_reference"),
        CheckConstraint("amount_minor > 0", name="amount_positive"),
        Index(
            "ix_billing_charges_uninvoiced",
            "account_id",
            "charged_at",
            postgresql_where=text("invoice_id IS NULL"),
        ),
    )

    charge_id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), primary_key=True)
    account_id: Mapped[uuid.UUID] = mapped_column(
        UUID(as_uuid=True), ForeignKey("billing_accounts.account_id")
    )
    source_reference: Mapped[str] = mapped_column(String(128))
    amount_minor: Mapped[int] = mapped_column(BigInteger)
    currency: Mapped[str] = mapped_column(CHAR(3))
    description: Mapped[str] = mapped_column(Text)
    charged_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    service_id: Mapped[uuid.UUID | None] = mapped_column(UUID(as_uuid=True))
    message_id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=_now())
    # NULL until an invoice takes the charge; set once, in the issuing transaction.
    invoice_id: Mapped[uuid.UUID | None] = mapped_column(
        UUID(as_uuid=True), ForeignKey("billing_invoices.invoice_id")
    )


# -- provisioning ---------------------------------------------------------------------------------


class ProvisioningService(Base):
    """A subscriber service and its state: active ⇄ suspended, any ▶ terminated (final)."""

    __tablename__ = "provisioning_services"
    __table_args__ = (
        CheckConstraint(f"state IN {SERVICE_STATES!r}", name="state"),
        Index(None, "customer_id"),
    )

    service_id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), primary_key=True)
    customer_id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True))
    account_id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True))
    msisdn: Mapped[str] = mapped_column(String(16))
    iccid: Mapped[str] = mapped_column(String(20))
    plan_code: Mapped[str] = mapped_column(String(32))
    state: Mapped[str] = mapped_column(String(16))
    state_reason: Mapped[str | None] = mapped_column(String(32))
    version: Mapped[int] = mapped_column(Integer, server_default=text("1"))
    activated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=_now())
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=_now())


# -- messaging ------------------------------------------------------------------------------------


class Inbox(Base):
    """One row per (message id, handler) that committed: the deduplication record."""

    __tablename__ = "inbox"

    message_id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), primary_key=True)
    handler: Mapped[str] = mapped_column(Text, primary_key=True)
    processed_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=_now(), index=True
    )
    outcome: Mapped[str] = mapped_column(String(16))


class Outbox(Base):
    """A follow-up message written with the effects that caused it; the relay seals and sends it."""

    __tablename__ = "outbox"
    __table_args__ = (Index("ix_outbox_unsent", "id", postgresql_where=text("sent_at IS NULL")),)

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    message_id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), unique=True)
    message_type: Mapped[str] = mapped_column(String(128))
    schema_version: Mapped[int] = mapped_column(Integer)
    payload: Mapped[dict[str, Any]] = mapped_column(JSONB)
    correlation_id: Mapped[uuid.UUID | None] = mapped_column(UUID(as_uuid=True))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=_now())
    sent_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    attempts: Mapped[int] = mapped_column(Integer, server_default=text("0"))


# -- billing: invoices, payments, bill runs (docs/billing.md) ------------------------------------


class BillingInvoiceCounter(Base):
    """The last number issued in one invoice series.

    Incremented by the issuing transaction itself (``INSERT … ON CONFLICT DO UPDATE … RETURNING``):
    its row lock serializes issuers and a rollback returns the number, so numbers have no gaps.
    """

    __tablename__ = "billing_invoice_counters"
    __table_args__ = (CheckConstraint("last_number > 0", name="last_number_positive"),)

    series: Mapped[str] = mapped_column(String(32), primary_key=True)
    last_number: Mapped[int] = mapped_column(BigInteger)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=_now())


class BillingInvoice(Base):
    """An issued invoice; ``(account_id, period_start, period_end)`` is the business key.

    Amounts are minor units of ``currency``: ``total = net + vat``; ``paid_minor`` is the sum of
    its allocations (payments and credit) and ``status`` is ``paid`` exactly when it reaches the
    total. The invoice id is ``uuid5(account_id, "invoice:<start>:<end>")``.
    """

    __tablename__ = "billing_invoices"
    __table_args__ = (
        UniqueConstraint("account_id", "period_start", "period_end"),
        UniqueConstraint("series", "sequence"),
        CheckConstraint("period_end >= period_start", name="period_ordered"),
        CheckConstraint("sequence > 0", name="sequence_positive"),
        CheckConstraint("net_minor > 0 AND vat_minor >= 0", name="amounts"),
        CheckConstraint("total_minor = net_minor + vat_minor", name="total"),
        CheckConstraint("paid_minor BETWEEN 0 AND total_minor", name="paid"),
        CheckConstraint(f"status IN {INVOICE_STATUSES!r}", name="status"),
        CheckConstraint("(status = 'paid') = (paid_minor = total_minor)", name="status_paid"),
        Index(None, "account_id", "issued_at"),
    )

    invoice_id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), primary_key=True)
    account_id: Mapped[uuid.UUID] = mapped_column(
        UUID(as_uuid=True), ForeignKey("billing_accounts.account_id")
    )
    invoice_number: Mapped[str] = mapped_column(String(48), unique=True)
    series: Mapped[str] = mapped_column(String(32))
    sequence: Mapped[int] = mapped_column(BigInteger)
    period_start: Mapped[date] = mapped_column(Date)
    period_end: Mapped[date] = mapped_column(Date)
    issued_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    issued_on: Mapped[date] = mapped_column(Date)
    due_on: Mapped[date] = mapped_column(Date)
    currency: Mapped[str] = mapped_column(CHAR(3))
    net_minor: Mapped[int] = mapped_column(BigInteger)
    vat_rate_bp: Mapped[int] = mapped_column(Integer)
    vat_minor: Mapped[int] = mapped_column(BigInteger)
    total_minor: Mapped[int] = mapped_column(BigInteger)
    paid_minor: Mapped[int] = mapped_column(BigInteger, server_default=text("0"))
    status: Mapped[str] = mapped_column(String(16), server_default=text("'open'"))
    message_id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True))


class BillingInvoiceLine(Base):
    """One charge on an invoice (net amount); a charge is on at most one invoice line."""

    __tablename__ = "billing_invoice_lines"
    __table_args__ = (CheckConstraint("amount_minor > 0", name="amount_positive"),)

    invoice_id: Mapped[uuid.UUID] = mapped_column(
        UUID(as_uuid=True), ForeignKey("billing_invoices.invoice_id"), primary_key=True
    )
    line_no: Mapped[int] = mapped_column(Integer, primary_key=True)
    charge_id: Mapped[uuid.UUID] = mapped_column(
        UUID(as_uuid=True), ForeignKey("billing_charges.charge_id"), unique=True
    )
    description: Mapped[str] = mapped_column(Text)
    charged_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    amount_minor: Mapped[int] = mapped_column(BigInteger)


class BillingPayment(Base):
    """A payment received; ``gateway_reference`` is the business key.

    ``unallocated_minor`` is what no invoice has taken yet: the account's credit is the sum of it
    over the account's payments, consumed oldest payment first by the next invoice.
    """

    __tablename__ = "billing_payments"
    __table_args__ = (
        CheckConstraint("amount_minor > 0", name="amount_positive"),
        CheckConstraint("unallocated_minor BETWEEN 0 AND amount_minor", name="unallocated"),
        Index(None, "account_id", "received_at"),
    )

    payment_id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), primary_key=True)
    account_id: Mapped[uuid.UUID] = mapped_column(
        UUID(as_uuid=True), ForeignKey("billing_accounts.account_id")
    )
    gateway_reference: Mapped[str] = mapped_column(String(128), unique=True)
    amount_minor: Mapped[int] = mapped_column(BigInteger)
    currency: Mapped[str] = mapped_column(CHAR(3))
    received_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    unallocated_minor: Mapped[int] = mapped_column(BigInteger)
    message_id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=_now())


class BillingPaymentAllocation(Base):
    """Money of one payment applied to one invoice: when it arrived (``payment``) or later, as
    credit consumed by a newly issued invoice (``credit``)."""

    __tablename__ = "billing_payment_allocations"
    __table_args__ = (
        CheckConstraint("amount_minor > 0", name="amount_positive"),
        CheckConstraint(f"source IN {ALLOCATION_SOURCES!r}", name="source"),
        Index(None, "invoice_id"),
    )

    payment_id: Mapped[uuid.UUID] = mapped_column(
        UUID(as_uuid=True), ForeignKey("billing_payments.payment_id"), primary_key=True
    )
    invoice_id: Mapped[uuid.UUID] = mapped_column(
        UUID(as_uuid=True), ForeignKey("billing_invoices.invoice_id"), primary_key=True
    )
    amount_minor: Mapped[int] = mapped_column(BigInteger)
    source: Mapped[str] = mapped_column(String(16))
    allocated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=_now())


class BillingRun(Base):
    """One bill run: a cycle day and its period; ``run_id = uuid5(…, "<day>:<start>:<end>")``.

    The run walks the cycle day's accounts in ``account_id`` order, a batch per transaction, and
    keeps its place in ``cursor_account_id``: a run killed halfway resumes after the last batch
    that committed. ``messages_queued`` counts outbox rows it wrote (each at most once).
    """

    __tablename__ = "billing_runs"
    __table_args__ = (
        CheckConstraint(f"status IN {BILL_RUN_STATUSES!r}", name="status"),
        CheckConstraint("cycle_day BETWEEN 1 AND 28", name="cycle_day"),
    )

    run_id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), primary_key=True)
    cycle_day: Mapped[int] = mapped_column(SmallInteger)
    period_start: Mapped[date] = mapped_column(Date)
    period_end: Mapped[date] = mapped_column(Date)
    status: Mapped[str] = mapped_column(String(16), server_default=text("'running'"))
    passes: Mapped[int] = mapped_column(Integer, server_default=text("1"))
    accounts_seen: Mapped[int] = mapped_column(Integer, server_default=text("0"))
    messages_queued: Mapped[int] = mapped_column(Integer, server_default=text("0"))
    cursor_account_id: Mapped[uuid.UUID | None] = mapped_column(UUID(as_uuid=True))
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=_now())
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=_now())
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
