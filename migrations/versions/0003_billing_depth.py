"""Invoices, payments, bill runs (issue 7).

Invoices with lines and gapless numbers per series (a counter row per series), payments with their
allocations to invoices (unallocated remainder = account credit), charges linked to the invoice
that took them, and the bill runs' progress. See docs/billing.md.

Revision ID: 0003
Revises: 0002
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | Sequence[str] | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "billing_invoice_counters",
        sa.Column("series", sa.String(length=32), nullable=False),
        sa.Column("last_number", sa.BigInteger(), nullable=False),
        sa.Column(
            "updated_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.CheckConstraint(
            "last_number > 0", name=op.f("ck_billing_invoice_counters_last_number_positive")
        ),
        sa.PrimaryKeyConstraint("series", name=op.f("pk_billing_invoice_counters")),
    )
    op.create_table(
        "billing_runs",
        sa.Column("run_id", sa.UUID(), nullable=False),
        sa.Column("cycle_day", sa.SmallInteger(), nullable=False),
        sa.Column("period_start", sa.Date(), nullable=False),
        sa.Column("period_end", sa.Date(), nullable=False),
        sa.Column(
            "status", sa.String(length=16), server_default=sa.text("'running'"), nullable=False
        ),
        sa.Column("passes", sa.Integer(), server_default=sa.text("1"), nullable=False),
        sa.Column("accounts_seen", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("messages_queued", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("cursor_account_id", sa.UUID(), nullable=True),
        sa.Column(
            "started_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column(
            "updated_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint("status IN ('running', 'done')", name=op.f("ck_billing_runs_status")),
        sa.CheckConstraint("cycle_day BETWEEN 1 AND 28", name=op.f("ck_billing_runs_cycle_day")),
        sa.PrimaryKeyConstraint("run_id", name=op.f("pk_billing_runs")),
    )
    op.create_table(
        "billing_invoices",
        sa.Column("invoice_id", sa.UUID(), nullable=False),
        sa.Column("account_id", sa.UUID(), nullable=False),
        sa.Column("invoice_number", sa.String(length=48), nullable=False),
        sa.Column("series", sa.String(length=32), nullable=False),
        sa.Column("sequence", sa.BigInteger(), nullable=False),
        sa.Column("period_start", sa.Date(), nullable=False),
        sa.Column("period_end", sa.Date(), nullable=False),
        sa.Column("issued_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("issued_on", sa.Date(), nullable=False),
        sa.Column("due_on", sa.Date(), nullable=False),
        sa.Column("currency", sa.CHAR(length=3), nullable=False),
        sa.Column("net_minor", sa.BigInteger(), nullable=False),
        sa.Column("vat_rate_bp", sa.Integer(), nullable=False),
        sa.Column("vat_minor", sa.BigInteger(), nullable=False),
        sa.Column("total_minor", sa.BigInteger(), nullable=False),
        sa.Column("paid_minor", sa.BigInteger(), server_default=sa.text("0"), nullable=False),
        sa.Column("status", sa.String(length=16), server_default=sa.text("'open'"), nullable=False),
        sa.Column("message_id", sa.UUID(), nullable=False),
        sa.CheckConstraint(
            "(status = 'paid') = (paid_minor = total_minor)",
            name=op.f("ck_billing_invoices_status_paid"),
        ),
        sa.CheckConstraint("status IN ('open', 'paid')", name=op.f("ck_billing_invoices_status")),
        sa.CheckConstraint(
            "net_minor > 0 AND vat_minor >= 0", name=op.f("ck_billing_invoices_amounts")
        ),
        sa.CheckConstraint(
            "paid_minor BETWEEN 0 AND total_minor", name=op.f("ck_billing_invoices_paid")
        ),
        sa.CheckConstraint(
            "period_end >= period_start", name=op.f("ck_billing_invoices_period_ordered")
        ),
        sa.CheckConstraint("sequence > 0", name=op.f("ck_billing_invoices_sequence_positive")),
        sa.CheckConstraint(
            "total_minor = net_minor + vat_minor", name=op.f("ck_billing_invoices_total")
        ),
        sa.ForeignKeyConstraint(
            ["account_id"],
            ["billing_accounts.account_id"],
            name=op.f("fk_billing_invoices_account_id_billing_accounts"),
        ),
        sa.PrimaryKeyConstraint("invoice_id", name=op.f("pk_billing_invoices")),
        sa.UniqueConstraint(
            "account_id",
            "period_start",
            "period_end",
            name=op.f("uq_billing_invoices_account_id_period_start_period_end"),
        ),
        sa.UniqueConstraint("invoice_number", name=op.f("uq_billing_invoices_invoice_number")),
        sa.UniqueConstraint("series", "sequence", name=op.f("uq_billing_invoices_series_sequence")),
    )
    op.create_index(
        op.f("ix_billing_invoices_account_id_issued_at"),
        "billing_invoices",
        ["account_id", "issued_at"],
        unique=False,
    )
    op.create_table(
        "billing_payments",
        sa.Column("payment_id", sa.UUID(), nullable=False),
        sa.Column("account_id", sa.UUID(), nullable=False),
        sa.Column("gateway_reference", sa.String(length=128), nullable=False),
        sa.Column("amount_minor", sa.BigInteger(), nullable=False),
        sa.Column("currency", sa.CHAR(length=3), nullable=False),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("unallocated_minor", sa.BigInteger(), nullable=False),
        sa.Column("message_id", sa.UUID(), nullable=False),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.CheckConstraint("amount_minor > 0", name=op.f("ck_billing_payments_amount_positive")),
        sa.CheckConstraint(
            "unallocated_minor BETWEEN 0 AND amount_minor",
            name=op.f("ck_billing_payments_unallocated"),
        ),
        sa.ForeignKeyConstraint(
            ["account_id"],
            ["billing_accounts.account_id"],
            name=op.f("fk_billing_payments_account_id_billing_accounts"),
        ),
        sa.PrimaryKeyConstraint("payment_id", name=op.f("pk_billing_payments")),
        sa.UniqueConstraint(
            "gateway_reference", name=op.f("uq_billing_payments_gateway_reference")
        ),
    )
    op.create_index(
        op.f("ix_billing_payments_account_id_received_at"),
        "billing_payments",
        ["account_id", "received_at"],
        unique=False,
    )
    op.create_table(
        "billing_payment_allocations",
        sa.Column("payment_id", sa.UUID(), nullable=False),
        sa.Column("invoice_id", sa.UUID(), nullable=False),
        sa.Column("amount_minor", sa.BigInteger(), nullable=False),
        sa.Column("source", sa.String(length=16), nullable=False),
        sa.Column(
            "allocated_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.CheckConstraint(
            "source IN ('payment', 'credit')", name=op.f("ck_billing_payment_allocations_source")
        ),
        sa.CheckConstraint(
            "amount_minor > 0", name=op.f("ck_billing_payment_allocations_amount_positive")
        ),
        sa.ForeignKeyConstraint(
            ["invoice_id"],
            ["billing_invoices.invoice_id"],
            name=op.f("fk_billing_payment_allocations_invoice_id_billing_invoices"),
        ),
        sa.ForeignKeyConstraint(
            ["payment_id"],
            ["billing_payments.payment_id"],
            name=op.f("fk_billing_payment_allocations_payment_id_billing_payments"),
        ),
        sa.PrimaryKeyConstraint(
            "payment_id", "invoice_id", name=op.f("pk_billing_payment_allocations")
        ),
    )
    op.create_index(
        op.f("ix_billing_payment_allocations_invoice_id"),
        "billing_payment_allocations",
        ["invoice_id"],
        unique=False,
    )
    op.create_table(
        "billing_invoice_lines",
        sa.Column("invoice_id", sa.UUID(), nullable=False),
        sa.Column("line_no", sa.Integer(), nullable=False),
        sa.Column("charge_id", sa.UUID(), nullable=False),
        sa.Column("description", sa.Text(), nullable=False),
        sa.Column("charged_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("amount_minor", sa.BigInteger(), nullable=False),
        sa.CheckConstraint(
            "amount_minor > 0", name=op.f("ck_billing_invoice_lines_amount_positive")
        ),
        sa.ForeignKeyConstraint(
            ["charge_id"],
            ["billing_charges.charge_id"],
            name=op.f("fk_billing_invoice_lines_charge_id_billing_charges"),
        ),
        sa.ForeignKeyConstraint(
            ["invoice_id"],
            ["billing_invoices.invoice_id"],
            name=op.f("fk_billing_invoice_lines_invoice_id_billing_invoices"),
        ),
        sa.PrimaryKeyConstraint("invoice_id", "line_no", name=op.f("pk_billing_invoice_lines")),
        sa.UniqueConstraint("charge_id", name=op.f("uq_billing_invoice_lines_charge_id")),
    )
    op.add_column("billing_charges", sa.Column("invoice_id", sa.UUID(), nullable=True))
    op.create_index(
        "ix_billing_charges_uninvoiced",
        "billing_charges",
        ["account_id", "charged_at"],
        unique=False,
        postgresql_where=sa.text("invoice_id IS NULL"),
    )
    op.create_foreign_key(
        op.f("fk_billing_charges_invoice_id_billing_invoices"),
        "billing_charges",
        "billing_invoices",
        ["invoice_id"],
        ["invoice_id"],
    )


def downgrade() -> None:
    op.drop_constraint(
        op.f("fk_billing_charges_invoice_id_billing_invoices"),
        "billing_charges",
        type_="foreignkey",
    )
    op.drop_index(
        "ix_billing_charges_uninvoiced",
        table_name="billing_charges",
        postgresql_where=sa.text("invoice_id IS NULL"),
    )
    op.drop_column("billing_charges", "invoice_id")
    op.drop_table("billing_invoice_lines")
    op.drop_index(
        op.f("ix_billing_payment_allocations_invoice_id"), table_name="billing_payment_allocations"
    )
    op.drop_table("billing_payment_allocations")
    op.drop_index(op.f("ix_billing_payments_account_id_received_at"), table_name="billing_payments")
    op.drop_table("billing_payments")
    op.drop_index(op.f("ix_billing_invoices_account_id_issued_at"), table_name="billing_invoices")
    op.drop_table("billing_invoices")
    op.drop_table("billing_runs")
    op.drop_table("billing_invoice_counters")
