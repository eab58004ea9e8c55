"""PostgreSQL roles: who may touch which table (deploy/postgres/roles.sql is ``render()``).

    fleet_worker     business tables, inbox, outbox: SELECT, INSERT, UPDATE; archive: nothing
    fleet_archiver   dead_letters: SELECT, INSERT, UPDATE (previous_id); audit: nothing
    fleet_operator   every table: SELECT (business tables read-only); dead_letters: UPDATE of
                     the replay / resolve / re-encrypt columns, DELETE (retention);
                     operator_audit: INSERT of action, result, ids, detail — never operator, at
    nobody           UPDATE, DELETE or TRUNCATE on operator_audit (only its owner, the migrator)

Group roles only (NOLOGIN): every person and process logs in as a role of its own that is a
member of one group, so ``session_user`` — what the audit records — names who it was. Grants
cover the tables that exist, so apply the file again after each migration (it is idempotent).
A test applies ``statements()`` to a scratch schema and proves each denial on PostgreSQL.
"""

from __future__ import annotations

from handlers.store.db import check_schema_name

WORKER = "fleet_worker"
ARCHIVER = "fleet_archiver"
OPERATOR = "fleet_operator"
GROUPS = (WORKER, ARCHIVER, OPERATOR)

ARCHIVE_TABLES = ("dead_letters", "operator_audit")
OPERATOR_UPDATABLE = (
    "replayed_at",
    "replayed_by",
    "replay_count",
    "resolved_at",
    "resolved_by",
    "resolution_note",
    "body",
    "kid",
    "original_kid",
    "original_producer",
    "reencrypted_at",
)
AUDIT_INSERTABLE = ("action", "result", "dead_letter_ids", "detail")


def statements(schema: str = "public", prefix: str = "") -> list[str]:
    """The SQL, one statement each, for ``schema`` with group roles named ``<prefix>fleet_*``."""
    s = f'"{check_schema_name(schema)}"'
    worker, archiver, operator = (f"{prefix}{name}" for name in GROUPS)
    everyone = f"{worker}, {archiver}, {operator}"
    archive = ", ".join(f"{s}.{t}" for t in ARCHIVE_TABLES)
    sequences = ", ".join(f"{s}.{t}_id_seq" for t in ARCHIVE_TABLES)
    create = [
        f"DO $$ BEGIN CREATE ROLE {role} NOLOGIN; EXCEPTION WHEN duplicate_object THEN NULL; END $$"
        for role in (worker, archiver, operator)
    ]
    return [
        *create,
        f"GRANT USAGE ON SCHEMA {s} TO {everyone}",
        # workers: the business, the inbox and the outbox — not the archive, not the audit
        f"GRANT SELECT, INSERT, UPDATE ON ALL TABLES IN SCHEMA {s} TO {worker}",
        f"GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA {s} TO {worker}",
        f"REVOKE ALL ON {archive}, {s}.alembic_version FROM {worker}",
        f"REVOKE ALL ON SEQUENCE {sequences} FROM {worker}",
        # archiver: stores deaths and links a death to the one before it
        f"GRANT SELECT, INSERT ON {s}.dead_letters TO {archiver}",
        f"GRANT UPDATE (previous_id) ON {s}.dead_letters TO {archiver}",
        f"GRANT USAGE ON SEQUENCE {s}.dead_letters_id_seq TO {archiver}",
        # operators: read everything, change only the archive's operator columns, audit
        f"GRANT SELECT ON ALL TABLES IN SCHEMA {s} TO {operator}",
        f"GRANT UPDATE ({', '.join(OPERATOR_UPDATABLE)}) ON {s}.dead_letters TO {operator}",
        f"GRANT DELETE ON {s}.dead_letters TO {operator}",
        f"GRANT INSERT ({', '.join(AUDIT_INSERTABLE)}) ON {s}.operator_audit TO {operator}",
        f"GRANT USAGE ON SEQUENCE {s}.operator_audit_id_seq TO {operator}",
        # the audit trail is insert-only for everyone but its owner
        f"REVOKE UPDATE, DELETE, TRUNCATE ON {s}.operator_audit FROM PUBLIC, {everyone}",
    ]


HEADER = """\
-- PostgreSQL roles of telco-fleet. Generated from dlq/pg_roles.py (python -m dlq.pg_roles);
-- a test fails when this file drifts, and proves every denial on a scratch schema.
--
--   fleet_worker    business tables, inbox, outbox: SELECT, INSERT, UPDATE; nothing else
--   fleet_archiver  dead_letters: SELECT, INSERT, UPDATE (previous_id)
--   fleet_operator  every table: SELECT (business tables read-only); dead_letters: UPDATE of
--                   the replay/resolve/re-encrypt columns, DELETE (retention); operator_audit:
--                   INSERT (action, result, dead_letter_ids, detail) — operator and time are
--                   stamped by a trigger from session_user and now()
--   nobody but the owner (the role that runs migrations) may UPDATE/DELETE/TRUNCATE
--   operator_audit
--
-- Apply as the owner of the tables after every `fleet db upgrade` (idempotent):
--     psql -v ON_ERROR_STOP=1 -f deploy/postgres/roles.sql "$DATABASE_URL"
-- (for another schema than public: python -m dlq.pg_roles SCHEMA | psql …)
--
-- Then one login role per person and per process, member of exactly one group, e.g.
--     CREATE ROLE alice LOGIN PASSWORD '…' IN ROLE fleet_operator;
--     CREATE ROLE billing_worker LOGIN PASSWORD '…' IN ROLE fleet_worker;
--     CREATE ROLE archiver LOGIN PASSWORD '…' IN ROLE fleet_archiver;
-- An operator runs `fleet dlq …` with FLEET_DATABASE_URL=postgresql+psycopg://alice@host/db:
-- the audit trail records session_user, so nobody signs for someone else.
"""


def render(schema: str = "public") -> str:
    return HEADER + "\n" + "".join(f"{statement};\n" for statement in statements(schema))


if __name__ == "__main__":
    import sys

    sys.stdout.write(render(sys.argv[1] if len(sys.argv) > 1 else "public"))
