"""The store on the real PostgreSQL: migrations, the inbox claim, the outbox, the engine."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import uuid
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import Engine, func, inspect, select, text
from sqlalchemy.exc import DataError

from handlers.store.db import make_engine
from handlers.store.models import Base, CrmInteraction, Inbox, Outbox
from handlers.store.uow import UnitOfWork
from queues.contracts import CATALOGUE, LogInteraction
from tests.support.db import DATABASE_URL, drop_schema, new_schema_name, require_database
from tests.support.factories import sample

pytestmark = pytest.mark.db

REPO = Path(__file__).resolve().parents[2]
ALEMBIC = str(Path(sys.executable).with_name("alembic"))


def _alembic(schema: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "FLEET_DATABASE_URL": DATABASE_URL, "FLEET_DB_SCHEMA": schema}
    return subprocess.run(
        [ALEMBIC, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=120
    )


def _tables(engine: Engine, schema: str) -> set[str]:
    return set(inspect(engine).get_table_names(schema=schema))


def test_migrations_upgrade_match_the_models_and_downgrade_in_a_fresh_schema() -> None:
    require_database()
    schema = new_schema_name("mig")
    engine = make_engine(DATABASE_URL)
    public_before = _tables(engine, "public")
    try:
        upgraded = _alembic(schema, "upgrade", "head")
        assert upgraded.returncode == 0, upgraded.stderr
        assert _tables(engine, schema) == {*Base.metadata.tables, "alembic_version"}
        assert _tables(engine, "public") == public_before

        checked = _alembic(schema, "check")
        assert checked.returncode == 0, checked.stdout + checked.stderr

        with engine.begin() as connection:
            connection.execute(text(f'DROP INDEX "{schema}".ix_inbox_processed_at'))
        drifted = _alembic(schema, "check")
        assert drifted.returncode != 0
        assert "ix_inbox_processed_at" in drifted.stdout + drifted.stderr
        with engine.begin() as connection:
            connection.execute(
                text(f'CREATE INDEX ix_inbox_processed_at ON "{schema}".inbox (processed_at)')
            )
        assert _alembic(schema, "check").returncode == 0

        downgraded = _alembic(schema, "downgrade", "base")
        assert downgraded.returncode == 0, downgraded.stderr
        assert _tables(engine, schema) == {"alembic_version"}
    finally:
        engine.dispose()
        drop_schema(schema)


def test_a_claimed_message_cannot_be_claimed_again_by_the_same_handler(
    engine: Engine,
) -> None:
    message_id = uuid.uuid4()
    with UnitOfWork(engine) as uow:
        assert uow.claim_inbox(message_id, "upsert_customer") is True
        uow.commit()
    with UnitOfWork(engine) as uow:
        assert uow.claim_inbox(message_id, "upsert_customer") is False
        assert uow.already_processed(message_id, "upsert_customer") is True
        assert uow.claim_inbox(message_id, "mirror_account_holder") is True
        uow.commit()
    with UnitOfWork(engine) as uow:
        rows = uow.session.scalars(select(Inbox.handler).where(Inbox.message_id == message_id))
        assert sorted(rows) == ["mirror_account_holder", "upsert_customer"]


def test_the_session_exists_only_inside_the_with_block(engine: Engine) -> None:
    uow = UnitOfWork(engine)
    with pytest.raises(RuntimeError, match="outside"):
        _ = uow.session
    with uow:
        assert uow.session is not None
    with pytest.raises(RuntimeError, match="outside"):
        _ = uow.session


def test_a_rolled_back_claim_leaves_the_message_claimable(engine: Engine) -> None:
    message_id = uuid.uuid4()
    with UnitOfWork(engine) as uow:
        assert uow.claim_inbox(message_id, "h")
    with UnitOfWork(engine) as uow:
        assert not uow.already_processed(message_id, "h")
        assert uow.claim_inbox(message_id, "h")


def test_a_concurrent_duplicate_claim_waits_for_the_first_and_then_loses(engine: Engine) -> None:
    message_id = uuid.uuid4()
    second_result: list[bool] = []
    with UnitOfWork(engine) as first:
        assert first.claim_inbox(message_id, "h")

        def claim_again() -> None:
            with UnitOfWork(engine) as second:
                second_result.append(second.claim_inbox(message_id, "h"))
                second.commit()

        thread = threading.Thread(target=claim_again)
        thread.start()
        thread.join(timeout=1.0)
        assert thread.is_alive(), "the second claim should wait on the first's uncommitted row"
        first.commit()
    thread.join(timeout=10)
    assert second_result == [False]


def _interaction() -> LogInteraction:
    payload = sample("crm.interaction.log")
    assert isinstance(payload, LogInteraction)
    return payload


def _write_effect_and_outbox(uow: UnitOfWork, message_id: uuid.UUID) -> tuple[uuid.UUID, uuid.UUID]:
    follow_up = _interaction()
    outbox_id = uuid.uuid5(message_id, "crm.interaction.log")
    assert uow.claim_inbox(message_id, "test_handler")
    uow.session.add(
        CrmInteraction(
            interaction_id=follow_up.interaction_id,
            customer_id=follow_up.customer_id,
            channel="system",
            topic="effect",
            note=None,
            occurred_at=datetime.now(UTC),
            message_id=message_id,
        )
    )
    assert uow.add_outbox(follow_up, outbox_id, correlation_id=message_id)
    return follow_up.interaction_id, outbox_id


def test_effects_outbox_and_inbox_roll_back_together(engine: Engine) -> None:
    message_id = uuid.uuid4()
    with UnitOfWork(engine) as uow:
        interaction_id, outbox_id = _write_effect_and_outbox(uow, message_id)
        uow.session.flush()
        # leaving without commit

    with UnitOfWork(engine) as uow:
        assert uow.session.get(CrmInteraction, interaction_id) is None
        assert uow.session.scalar(select(Outbox).where(Outbox.message_id == outbox_id)) is None
        assert not uow.already_processed(message_id, "test_handler")


def test_effects_outbox_and_inbox_commit_together(engine: Engine) -> None:
    message_id = uuid.uuid4()
    with UnitOfWork(engine) as uow:
        interaction_id, outbox_id = _write_effect_and_outbox(uow, message_id)
        uow.commit()

    with UnitOfWork(engine) as uow:
        assert uow.session.get(CrmInteraction, interaction_id) is not None
        assert uow.already_processed(message_id, "test_handler")
        row = uow.session.scalars(select(Outbox).where(Outbox.message_id == outbox_id)).one()
        assert (row.message_type, row.schema_version) == ("crm.interaction.log", 1)
        assert row.correlation_id == message_id
        assert row.sent_at is None and row.attempts == 0
        restored = CATALOGUE[(row.message_type, row.schema_version)].model_validate(row.payload)
    assert isinstance(restored, LogInteraction)
    assert restored.interaction_id == interaction_id


def test_the_same_outbox_message_id_is_written_once(engine: Engine) -> None:
    message_id = uuid.uuid4()
    first, second = _interaction(), _interaction()
    with UnitOfWork(engine) as uow:
        assert uow.add_outbox(first, message_id, None) is True
        assert uow.add_outbox(second, message_id, None) is False
        uow.commit()
    with UnitOfWork(engine) as uow:
        rows = uow.session.scalars(select(Outbox).where(Outbox.message_id == message_id)).all()
        assert len(rows) == 1
        assert rows[0].payload["interaction_id"] == str(first.interaction_id)


def test_the_engine_hides_statement_parameters_in_errors(engine: Engine) -> None:
    planted = f"PLANTED-SECRET-{uuid.uuid4().hex}"
    with pytest.raises(DataError) as caught, engine.connect() as connection:
        connection.execute(text("SELECT CAST(:value AS integer)"), {"value": planted})
    message = str(caught.value)
    assert "[SQL parameters hidden due to hide_parameters=True]" in message
    assert planted not in message.split("[SQL:", 1)[1]
    # PostgreSQL's own message may still quote a value ("invalid input syntax … "PLANTED…"");
    # that is why handlers.bus describes database errors by class and SQLSTATE only.
    assert planted in message.split("[SQL:", 1)[0]


def test_the_engine_works_in_its_schema_only(migrated: tuple[Engine, str]) -> None:
    engine, schema = migrated
    with engine.connect() as connection:
        assert connection.scalar(text("SELECT current_schema()")) == schema
        assert connection.scalar(select(func.count()).select_from(Inbox)) is not None
    with pytest.raises(ValueError, match="schema"):
        make_engine(DATABASE_URL, "bad; DROP SCHEMA public")


def test_fleet_db_upgrade_migrates_the_settings_database() -> None:
    require_database()
    schema = new_schema_name("cli")
    engine = make_engine(DATABASE_URL)
    try:
        result = subprocess.run(
            [
                sys.executable,
                "-c",
                "from workers.commands.db import app; app()",
                "upgrade",
                "--schema",
                schema,
            ],
            cwd=REPO,
            env={**os.environ, "FLEET_DATABASE_URL": DATABASE_URL},
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert result.returncode == 0, result.stderr
        assert "database schema at head" in result.stderr
        assert _tables(engine, schema) == {*Base.metadata.tables, "alembic_version"}
    finally:
        engine.dispose()
        drop_schema(schema)
