"""The real PostgreSQL for tests: a fresh schema per module, migrated by Alembic, then dropped."""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.exc import OperationalError

from handlers.store.db import make_engine

DATABASE_URL = os.environ.get(
    "FLEET_DATABASE_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)
ALEMBIC_INI = Path(__file__).resolve().parents[2] / "alembic.ini"


def new_schema_name(prefix: str = "t") -> str:
    return f"{prefix}_{uuid.uuid4().hex[:12]}"


def alembic_config(schema: str, url: str = DATABASE_URL) -> Config:
    """Alembic's configuration for ``schema``; leaves the test run's logging alone."""
    config = Config(str(ALEMBIC_INI))
    config.attributes.update(database_url=url, schema=schema, configure_logging=False)
    return config


def drop_schema(schema: str, url: str = DATABASE_URL) -> None:
    engine = create_engine(url)
    try:
        with engine.begin() as connection:
            connection.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
    finally:
        engine.dispose()


def require_database(url: str = DATABASE_URL) -> None:
    """Fail with one clear line when PostgreSQL does not answer."""
    engine = create_engine(url)
    try:
        with engine.connect() as connection:
            connection.execute(text("SELECT 1"))
    except OperationalError:
        raise RuntimeError(
            "PostgreSQL is not answering on 127.0.0.1:5432; run `make services` (or "
            "pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start)"
        ) from None
    finally:
        engine.dispose()


@contextlib.contextmanager
def migrated_schema(
    url: str = DATABASE_URL, *, pool_size: int = 10, prefix: str = "t"
) -> Iterator[tuple[Engine, str]]:
    """A fresh schema migrated to head, and an engine whose ``search_path`` is that schema.

    The schema is dropped afterwards with everything in it, whatever happened.
    """
    require_database(url)
    schema = new_schema_name(prefix)
    try:
        command.upgrade(alembic_config(schema, url), "head")
        engine = make_engine(url, schema, pool_size=pool_size, max_overflow=0)
        try:
            yield engine, schema
        finally:
            engine.dispose()
    finally:
        drop_schema(schema, url)
