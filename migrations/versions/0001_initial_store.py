"""Initial store: CRM, billing, provisioning, inbox and outbox tables.

Revision ID: 0001
Revises:
Create Date: 2026-11-21 23:38:15.420657
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0001"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "billing_account_holders",
        sa.Column("customer_id", sa.UUID(), nullable=False),
        sa.Column("entity_version", sa.BigInteger(), nullable=False),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("street", sa.Text(), nullable=False),
        sa.Column("postal_code", sa.String(length=12), nullable=False),
        sa.Column("city", sa.Text(), nullable=False),
        sa.Column("country", sa.CHAR(length=2), nullable=False),
        sa.Column(
            "updated_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.PrimaryKeyConstraint("customer_id", name=op.f("pk_billing_account_holders")),
    )
    op.create_table(
        "billing_accounts",
        sa.Column("account_id", sa.UUID(), nullable=False),
        sa.Column("customer_id", sa.UUID(), nullable=False),
        sa.Column("currency", sa.CHAR(length=3), nullable=False),
        sa.Column("cycle_day", sa.SmallInteger(), nullable=False),
        sa.Column("payment_terms_days", sa.SmallInteger(), nullable=False),
        sa.Column("status", sa.String(length=16), server_default=sa.text("'open'"), nullable=False),
        sa.Column("balance_minor", sa.BigInteger(), server_default=sa.text("0"), nullable=False),
        sa.Column(
            "opened_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False
        ),
        sa.Column("message_id", sa.UUID(), nullable=False),
        sa.CheckConstraint("status IN ('open', 'closed')", name=op.f("ck_billing_accounts_status")),
        sa.CheckConstraint(
            "cycle_day BETWEEN 1 AND 28", name=op.f("ck_billing_accounts_cycle_day")
        ),
        sa.PrimaryKeyConstraint("account_id", name=op.f("pk_billing_accounts")),
    )
    op.create_index(
        op.f("ix_billing_accounts_customer_id"), "billing_accounts", ["customer_id"], unique=False
    )
    op.create_table(
        "crm_customers",
        sa.Column("customer_id", sa.UUID(), nullable=False),
        sa.Column("entity_version", sa.BigInteger(), nullable=False),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("email", sa.Text(), nullable=True),
        sa.Column("msisdn", sa.String(length=16), nullable=True),
        sa.Column("street", sa.Text(), nullable=False),
        sa.Column("postal_code", sa.String(length=12), nullable=False),
        sa.Column("city", sa.Text(), nullable=False),
        sa.Column("country", sa.CHAR(length=2), nullable=False),
        sa.Column("preferred_language", sa.String(length=8), nullable=True),
        sa.Column(
            "updated_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.PrimaryKeyConstraint("customer_id", name=op.f("pk_crm_customers")),
    )
    op.create_table(
        "crm_interactions",
        sa.Column("interaction_id", sa.UUID(), nullable=False),
        sa.Column("customer_id", sa.UUID(), nullable=False),
        sa.Column("channel", sa.String(length=32), nullable=False),
        sa.Column("topic", sa.Text(), nullable=False),
        sa.Column("note", sa.Text(), nullable=True),
        sa.Column("occurred_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("message_id", sa.UUID(), nullable=False),
        sa.PrimaryKeyConstraint("interaction_id", name=op.f("pk_crm_interactions")),
    )
    op.create_index(
        op.f("ix_crm_interactions_customer_id_occurred_at"),
        "crm_interactions",
        ["customer_id", "occurred_at"],
        unique=False,
    )
    op.create_table(
        "inbox",
        sa.Column("message_id", sa.UUID(), nullable=False),
        sa.Column("handler", sa.Text(), nullable=False),
        sa.Column(
            "processed_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column("outcome", sa.String(length=16), nullable=False),
        sa.PrimaryKeyConstraint("message_id", "handler", name=op.f("pk_inbox")),
    )
    op.create_index(op.f("ix_inbox_processed_at"), "inbox", ["processed_at"], unique=False)
    op.create_table(
        "outbox",
        sa.Column("id", sa.BigInteger(), autoincrement=True, nullable=False),
        sa.Column("message_id", sa.UUID(), nullable=False),
        sa.Column("message_type", sa.String(length=128), nullable=False),
        sa.Column("schema_version", sa.Integer(), nullable=False),
        sa.Column("payload", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.Column("correlation_id", sa.UUID(), nullable=True),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column("sent_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("attempts", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_outbox")),
        sa.UniqueConstraint("message_id", name=op.f("uq_outbox_message_id")),
    )
    op.create_index(
        "ix_outbox_unsent",
        "outbox",
        ["id"],
        unique=False,
        postgresql_where=sa.text("sent_at IS NULL"),
    )
    op.create_table(
        "provisioning_services",
        sa.Column("service_id", sa.UUID(), nullable=False),
        sa.Column("customer_id", sa.UUID(), nullable=False),
        sa.Column("account_id", sa.UUID(), nullable=False),
        sa.Column("msisdn", sa.String(length=16), nullable=False),
        sa.Column("iccid", sa.String(length=20), nullable=False),
        sa.Column("plan_code", sa.String(length=32), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("state_reason", sa.String(length=32), nullable=True),
        sa.Column("version", sa.Integer(), server_default=sa.text("1"), nullable=False),
        sa.Column(
            "activated_at",
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
        sa.CheckConstraint(
            "state IN ('active', 'suspended', 'terminated')",
            name=op.f("ck_provisioning_services_state"),
        ),
        sa.PrimaryKeyConstraint("service_id", name=op.f("pk_provisioning_services")),
    )
    op.create_index(
        op.f("ix_provisioning_services_customer_id"),
        "provisioning_services",
        ["customer_id"],
        unique=False,
    )
    op.create_table(
        "billing_charges",
        sa.Column("charge_id", sa.UUID(), nullable=False),
        sa.Column("account_id", sa.UUID(), nullable=False),
        sa.Column("source_reference", sa.String(length=128), nullable=False),
        sa.Column("amount_minor", sa.BigInteger(), nullable=False),
        sa.Column("currency", sa.CHAR(length=3), nullable=False),
        sa.Column("description", sa.Text(), nullable=False),
        sa.Column("charged_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("service_id", sa.UUID(), nullable=True),
        sa.Column("message_id", sa.UUID(), nullable=False),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.CheckConstraint("amount_minor > 0", name=op.f("ck_billing_charges_amount_positive")),
        sa.ForeignKeyConstraint(
            ["account_id"],
            ["billing_accounts.account_id"],
            name=op.f("fk_billing_charges_account_id_billing_accounts"),
        ),
        sa.PrimaryKeyConstraint("charge_id", name=op.f("pk_billing_charges")),
        sa.UniqueConstraint(
            "account_id",
            "source_reference",
            name=op.f("uq_billing_charges_account_id_source_reference"),
        ),
    )


def downgrade() -> None:
    op.drop_table("billing_charges")
    op.drop_index(op.f("ix_provisioning_services_customer_id"), table_name="provisioning_services")
    op.drop_table("provisioning_services")
    op.drop_index(
        "ix_outbox_unsent", table_name="outbox", postgresql_where=sa.text("sent_at IS NULL")
    )
    op.drop_table("outbox")
    op.drop_index(op.f("ix_inbox_processed_at"), table_name="inbox")
    op.drop_table("inbox")
    op.drop_index(
        op.f("ix_crm_interactions_customer_id_occurred_at"), table_name="crm_interactions"
    )
    op.drop_table("crm_interactions")
    op.drop_table("crm_customers")
    op.drop_index(op.f("ix_billing_accounts_customer_id"), table_name="billing_accounts")
    op.drop_table("billing_accounts")
    op.drop_table("billing_account_holders")
