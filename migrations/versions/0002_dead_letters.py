"""Dead-letter archive and operator audit (issue 5).

Revision ID: 0002
Revises: 0001
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0002"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# The audit row's identity and time come from the database session, whatever the client sends.
STAMP_FUNCTION = """
CREATE FUNCTION operator_audit_stamp() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    NEW.operator := session_user;
    NEW.at := now();
    RETURN NEW;
END
$$
"""
STAMP_TRIGGER = """
CREATE TRIGGER operator_audit_stamp BEFORE INSERT ON operator_audit
FOR EACH ROW EXECUTE FUNCTION operator_audit_stamp()
"""


def upgrade() -> None:
    op.create_table(
        "dead_letters",
        sa.Column("id", sa.BigInteger(), autoincrement=True, nullable=False),
        sa.Column("death_key", sa.Text(), nullable=False),
        sa.Column("death_id", sa.Text(), nullable=True),
        sa.Column(
            "archived_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column("dead_queue", sa.Text(), nullable=False),
        sa.Column("queue", sa.Text(), nullable=False),
        sa.Column("lane", sa.Text(), nullable=True),
        sa.Column("exchange", sa.Text(), nullable=True),
        sa.Column("routing_key", sa.Text(), nullable=True),
        sa.Column("message_id", sa.Text(), nullable=True),
        sa.Column("message_type", sa.Text(), nullable=True),
        sa.Column("schema_version", sa.Integer(), nullable=True),
        sa.Column("producer", sa.Text(), nullable=True),
        sa.Column("kid", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("correlation_id", sa.Text(), nullable=True),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("last_reason", sa.Text(), nullable=True),
        sa.Column("error_class", sa.Text(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=True),
        sa.Column("first_failure_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_failure_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("worker_host", sa.Text(), nullable=True),
        sa.Column("worker_pid", sa.Integer(), nullable=True),
        sa.Column("traceback", sa.Text(), nullable=True),
        sa.Column("x_death", postgresql.JSONB(astext_type=sa.Text()), nullable=True),
        sa.Column(
            "headers",
            postgresql.JSONB(astext_type=sa.Text()),
            server_default=sa.text("'{}'::jsonb"),
            nullable=False,
        ),
        sa.Column("body", sa.LargeBinary(), nullable=False),
        sa.Column("body_sha256", sa.Text(), nullable=False),
        sa.Column("previous_id", sa.BigInteger(), nullable=True),
        sa.Column("replayed_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("replayed_by", sa.Text(), nullable=True),
        sa.Column("replay_count", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("resolved_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("resolved_by", sa.Text(), nullable=True),
        sa.Column("resolution_note", sa.Text(), nullable=True),
        sa.Column("original_kid", sa.Text(), nullable=True),
        sa.Column("original_producer", sa.Text(), nullable=True),
        sa.Column("reencrypted_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["previous_id"],
            ["dead_letters.id"],
            name=op.f("fk_dead_letters_previous_id_dead_letters"),
            ondelete="SET NULL",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_dead_letters")),
        sa.UniqueConstraint("death_key", name=op.f("uq_dead_letters_death_key")),
    )
    op.create_index(
        op.f("ix_dead_letters_archived_at"), "dead_letters", ["archived_at"], unique=False
    )
    op.create_index(
        op.f("ix_dead_letters_message_id"), "dead_letters", ["message_id"], unique=False
    )
    op.create_index(
        op.f("ix_dead_letters_reason_error_class_message_type"),
        "dead_letters",
        ["reason", "error_class", "message_type"],
        unique=False,
    )
    op.create_table(
        "operator_audit",
        sa.Column("id", sa.BigInteger(), autoincrement=True, nullable=False),
        sa.Column(
            "at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False
        ),
        sa.Column(
            "operator", sa.Text(), server_default=sa.text("SESSION_USER"), nullable=False
        ),
        sa.Column("action", sa.Text(), nullable=False),
        sa.Column("result", sa.Text(), nullable=False),
        sa.Column(
            "dead_letter_ids",
            postgresql.ARRAY(sa.BigInteger()),
            server_default=sa.text("'{}'::bigint[]"),
            nullable=False,
        ),
        sa.Column(
            "detail",
            postgresql.JSONB(astext_type=sa.Text()),
            server_default=sa.text("'{}'::jsonb"),
            nullable=False,
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_operator_audit")),
    )
    op.create_index(op.f("ix_operator_audit_at"), "operator_audit", ["at"], unique=False)
    op.execute(STAMP_FUNCTION)
    op.execute(STAMP_TRIGGER)


def downgrade() -> None:
    op.execute("DROP TRIGGER IF EXISTS operator_audit_stamp ON operator_audit")
    op.execute("DROP FUNCTION IF EXISTS operator_audit_stamp()")
    op.drop_index(op.f("ix_operator_audit_at"), table_name="operator_audit")
    op.drop_table("operator_audit")
    op.drop_index(
        op.f("ix_dead_letters_reason_error_class_message_type"), table_name="dead_letters"
    )
    op.drop_index(op.f("ix_dead_letters_message_id"), table_name="dead_letters")
    op.drop_index(op.f("ix_dead_letters_archived_at"), table_name="dead_letters")
    op.drop_table("dead_letters")
