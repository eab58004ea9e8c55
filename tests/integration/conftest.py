"""Integration fixtures: a migrated PostgreSQL schema of the module's own, and the bus."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from sqlalchemy import Engine

from handlers.store.uow import UnitOfWork
from tests.support.db import migrated_schema
from tests.support.handlers import Deliver, FakeNetwork


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


@pytest.fixture
def network() -> FakeNetwork:
    return FakeNetwork()


@pytest.fixture
def deliver(uow_factory: Callable[[], UnitOfWork], network: FakeNetwork) -> Deliver:
    return Deliver(uow_factory, network)


@pytest.fixture
def read(engine: Engine) -> Iterator[Callable[..., Any]]:
    """Run a read in a fresh unit of work; ORM results come back detached, fully loaded."""

    def run(function: Callable[..., Any]) -> Any:
        with UnitOfWork(engine) as uow:
            result = function(uow.session)
            uow.session.expunge_all()
            return result

    yield run
