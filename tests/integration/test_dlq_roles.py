"""deploy/postgres/roles.sql on the real PostgreSQL: the audit trail is insert-only for every
application role, operators read business tables only, and the audit names the session user."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ProgrammingError

from dlq import audit, housekeeping, pg_roles
from dlq.archiver import store
from dlq.deaths import Received, describe
from dlq.replay import replay
from handlers.store.db import make_engine
from tests.support.db import DATABASE_URL

pytestmark = pytest.mark.db

ROLES_SQL = Path(__file__).resolve().parents[2] / "deploy" / "postgres" / "roles.sql"


def test_roles_sql_is_the_rendered_grants() -> None:
    assert ROLES_SQL.read_text() == pg_roles.render(), "run: python -m dlq.pg_roles > " + str(
        ROLES_SQL
    )


class Roles:
    """Group roles from pg_roles.statements() with a unique prefix, and one login per group."""

    def __init__(self, engine: Engine, schema: str) -> None:
        self.admin = engine
        self.schema = schema
        self.prefix = f"t{uuid.uuid4().hex[:8]}_"
        self.logins = {group: f"{self.prefix}{group}_login" for group in pg_roles.GROUPS}
        self.engines: list[Engine] = []

    def create(self) -> None:
        with self.admin.begin() as connection:
            for statement in pg_roles.statements(self.schema, self.prefix):
                connection.execute(text(statement))
            for group, login in self.logins.items():
                connection.execute(text(f"CREATE ROLE {login} LOGIN IN ROLE {self.prefix}{group}"))

    def engine_for(self, group: str) -> Engine:
        url = make_url(DATABASE_URL).set(username=self.logins[group])
        engine = make_engine(url.render_as_string(hide_password=False), self.schema, pool_size=1)
        self.engines.append(engine)
        return engine

    def drop(self) -> None:
        for engine in self.engines:
            engine.dispose()
        admin = create_engine(DATABASE_URL)
        try:
            with admin.begin() as connection:
                for role in [*self.logins.values(), *(self.prefix + g for g in pg_roles.GROUPS)]:
                    connection.execute(
                        text(
                            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                            "WHERE usename = :r"
                        ),
                        {"r": role},
                    )
                    connection.execute(text(f"DROP OWNED BY {role}"))
                    connection.execute(text(f"DROP ROLE {role}"))
        finally:
            admin.dispose()


@pytest.fixture(scope="module")
def roles(migrated: tuple[Engine, str]) -> Iterator[Roles]:
    engine, schema = migrated
    created = Roles(engine, schema)
    try:
        created.create()
        yield created
    finally:
        created.drop()


def denied(engine: Engine, sql: str, **params: object) -> bool:
    try:
        with engine.begin() as connection:
            connection.execute(text(sql), params)
    except ProgrammingError as exc:
        return "permission denied" in str(exc.orig)
    return False


def seed_dead_letter(engine: Engine) -> int:
    [letter] = store(
        engine,
        [
            describe(
                Received(
                    source="billing.dead",
                    exchange="fleet.dead",
                    routing_key="billing",
                    body=b"header.key.iv.ciphertext.tag",
                    headers={
                        "x-fleet-reason": "currency_mismatch",
                        "x-fleet-death-id": str(uuid.uuid4()),
                    },
                    message_id=str(uuid.uuid4()),
                )
            )
        ],
    )
    return letter


def test_an_operator_cannot_update_or_delete_audit_rows_or_business_tables(
    roles: Roles, engine: Engine
) -> None:
    audit.record_now(engine, "export", "ok", [], {"count": 0})
    with engine.begin() as connection:
        connection.execute(
            text(
                "INSERT INTO billing_accounts (account_id, customer_id, currency, cycle_day, "
                "payment_terms_days, message_id) VALUES (:a, :c, 'EUR', 1, 14, :m)"
            ),
            {"a": uuid.uuid4(), "c": uuid.uuid4(), "m": uuid.uuid4()},
        )
    alice = roles.engine_for(pg_roles.OPERATOR)

    assert denied(alice, "UPDATE operator_audit SET result = 'forged'")
    assert denied(alice, "DELETE FROM operator_audit")
    assert denied(alice, "TRUNCATE operator_audit")
    assert denied(
        alice, "INSERT INTO operator_audit (action, result, operator) VALUES ('x', 'ok', 'bob')"
    )
    assert denied(alice, "UPDATE billing_accounts SET cycle_day = 2")
    assert denied(alice, "DELETE FROM billing_accounts")
    assert denied(
        alice,
        "INSERT INTO inbox (message_id, handler, outcome) VALUES (gen_random_uuid(), 'h', 'ok')",
    )
    assert denied(alice, "UPDATE dead_letters SET reason = 'other'")
    with alice.connect() as connection:
        assert connection.execute(text("SELECT count(*) FROM billing_accounts")).scalar_one() >= 1
        assert connection.execute(text("SELECT count(*) FROM operator_audit")).scalar_one() >= 1


def test_the_audit_records_the_operators_own_database_role(roles: Roles, engine: Engine) -> None:
    letter = seed_dead_letter(engine)
    alice = roles.engine_for(pg_roles.OPERATOR)
    login = roles.logins[pg_roles.OPERATOR]

    # The operator's commands work with the operator's grants …
    preview = replay(alice, publisher=None, ids=[letter], horizon=timedelta(days=30), dry_run=True)  # type: ignore[arg-type]
    assert [i.outcome for i in preview.items] == ["would_publish"] and preview.operator == login
    report = housekeeping.resolve(alice, [letter], "checked by hand")
    assert report.resolved == [letter]
    assert housekeeping.purge(alice, datetime.now(UTC) - timedelta(days=999)).deleted == 0

    # … and what they did is signed with their session user, whatever they claim
    with alice.begin() as connection:
        connection.execute(
            text("INSERT INTO operator_audit (action, result) VALUES ('export', 'ok')")
        )
    rows = audit.audit_rows(engine, operator=login)
    assert {r["action"] for r in rows} == {"resolve", "purge", "export"}
    with engine.connect() as connection:
        resolved_by = connection.execute(
            text("SELECT resolved_by FROM dead_letters WHERE id = :i"), {"i": letter}
        ).scalar_one()
    assert resolved_by == login


def test_workers_and_the_archiver_cannot_touch_the_audit(roles: Roles, engine: Engine) -> None:
    worker = roles.engine_for(pg_roles.WORKER)
    archiver = roles.engine_for(pg_roles.ARCHIVER)
    for other in (worker, archiver):
        assert denied(other, "INSERT INTO operator_audit (action, result) VALUES ('x', 'ok')")
        assert denied(other, "UPDATE operator_audit SET result = 'x'")
        assert denied(other, "DELETE FROM operator_audit")
    assert denied(worker, "SELECT * FROM dead_letters")
    assert denied(archiver, "DELETE FROM dead_letters")
    assert denied(archiver, "UPDATE billing_accounts SET cycle_day = 3")
    # the archiver stores (and links) deaths with its grants
    assert seed_dead_letter(archiver) > 0
    with worker.begin() as connection:
        connection.execute(
            text("INSERT INTO inbox (message_id, handler, outcome) VALUES (:m, 'h', 'ok')"),
            {"m": uuid.uuid4()},
        )
