"""The outbox lag the relay reports: age of the oldest unsent row, on the database's clock."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import Engine, delete, update
from sqlalchemy.orm import Session

from handlers.store.models import Outbox
from workers.relay import outbox_lag_s

pytestmark = pytest.mark.db


def add_row(engine: Engine, age_s: float, sent: bool = False) -> uuid.UUID:
    message_id = uuid.uuid4()
    created = datetime.now(UTC) - timedelta(seconds=age_s)
    with Session(engine) as session, session.begin():
        session.add(
            Outbox(
                message_id=message_id,
                message_type="crm.interaction.log",
                schema_version=1,
                payload={},
                created_at=created,
                sent_at=created if sent else None,
            )
        )
    return message_id


def test_the_lag_is_the_age_of_the_oldest_unsent_row_and_zero_when_drained(
    engine: Engine,
) -> None:
    with Session(engine) as session, session.begin():
        session.execute(delete(Outbox))
    assert outbox_lag_s(engine) == 0.0

    add_row(engine, age_s=900, sent=True)
    oldest = add_row(engine, age_s=120)
    add_row(engine, age_s=5)
    assert 119 <= outbox_lag_s(engine) <= 125

    with Session(engine) as session, session.begin():
        session.execute(
            update(Outbox).where(Outbox.message_id == oldest).values(sent_at=datetime.now(UTC))
        )
    assert 4 <= outbox_lag_s(engine) <= 10
