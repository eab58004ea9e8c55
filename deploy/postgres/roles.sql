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

DO $$ BEGIN CREATE ROLE fleet_worker NOLOGIN; EXCEPTION WHEN duplicate_object THEN NULL; END $$;
DO $$ BEGIN CREATE ROLE fleet_archiver NOLOGIN; EXCEPTION WHEN duplicate_object THEN NULL; END $$;
DO $$ BEGIN CREATE ROLE fleet_operator NOLOGIN; EXCEPTION WHEN duplicate_object THEN NULL; END $$;
GRANT USAGE ON SCHEMA "public" TO fleet_worker, fleet_archiver, fleet_operator;
GRANT SELECT, INSERT, UPDATE ON ALL TABLES IN SCHEMA "public" TO fleet_worker;
GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA "public" TO fleet_worker;
REVOKE ALL ON "public".dead_letters, "public".operator_audit, "public".alembic_version FROM fleet_worker;
REVOKE ALL ON SEQUENCE "public".dead_letters_id_seq, "public".operator_audit_id_seq FROM fleet_worker;
GRANT SELECT, INSERT ON "public".dead_letters TO fleet_archiver;
GRANT UPDATE (previous_id) ON "public".dead_letters TO fleet_archiver;
GRANT USAGE ON SEQUENCE "public".dead_letters_id_seq TO fleet_archiver;
GRANT SELECT ON ALL TABLES IN SCHEMA "public" TO fleet_operator;
GRANT UPDATE (replayed_at, replayed_by, replay_count, resolved_at, resolved_by, resolution_note, body, kid, original_kid, original_producer, reencrypted_at) ON "public".dead_letters TO fleet_operator;
GRANT DELETE ON "public".dead_letters TO fleet_operator;
GRANT INSERT (action, result, dead_letter_ids, detail) ON "public".operator_audit TO fleet_operator;
GRANT USAGE ON SEQUENCE "public".operator_audit_id_seq TO fleet_operator;
REVOKE UPDATE, DELETE, TRUNCATE ON "public".operator_audit FROM PUBLIC, fleet_worker, fleet_archiver, fleet_operator;
