"""Integration fixtures: a migrated PostgreSQL schema of the module's own."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
from sqlalchemy import Engine

from handlers.store.uow import UnitOfWork
from tests.support.db import migrated_schema


@pytest.fixture(scope="module")
def migrated() -> Iterator[tuple[Engine, str]]:
    """(engine, schema): a fresh schema migrated to head, dropped after the module."""
    with migrated_schema() as engine_and_schema:
        yield engine_and_schema


@pytest.fixture(scope="module")
def engine(migrated: tuple[Engine, str]) -> Engine:
    return migrated[0]


@pytest.fixture
def uow_factory(engine: Engine) -> Callable[[], UnitOfWork]:
    return lambda: UnitOfWork(engine)
