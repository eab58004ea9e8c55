"""Alembic environment: the fleet's store, optionally inside one schema.

Where: ``FLEET_DATABASE_URL`` (default: the local PostgreSQL, database ``test``) — or, for callers
in Python, ``config.attributes["database_url"]``. ``FLEET_DB_SCHEMA`` (or
``config.attributes["schema"]``), when set, creates that schema if missing, puts it first and only
on the ``search_path`` and keeps ``alembic_version`` there, so a test migrates into a schema of its
own and drops it afterwards. Offline mode (``--sql``) is not supported: run against a database.
"""

from __future__ import annotations

import os
from logging.config import fileConfig

from alembic import context
from sqlalchemy import text

import dlq.models  # noqa: F401  (the archive's tables live on the store's Base)
from handlers.store.db import check_schema_name, make_engine
from handlers.store.models import Base

DEFAULT_DATABASE_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
VERSION_TABLE = "alembic_version"

config = context.config

if config.config_file_name is not None and config.attributes.get("configure_logging", True):
    fileConfig(config.config_file_name, disable_existing_loggers=False)


def _setting(attribute: str, variable: str, default: str | None = None) -> str | None:
    value = config.attributes.get(attribute) or os.environ.get(variable) or default
    return str(value) if value else None


def _include_name(name: str | None, type_: str, parent_names: object) -> bool:
    # The version table is Alembic's own, never drift.
    return not (type_ == "table" and name == VERSION_TABLE)


def run_migrations_online() -> None:
    url = _setting("database_url", "FLEET_DATABASE_URL", DEFAULT_DATABASE_URL)
    assert url is not None
    schema = _setting("schema", "FLEET_DB_SCHEMA")
    if schema is not None:
        check_schema_name(schema)
    engine = make_engine(url, schema, pool_size=1, max_overflow=0, application_name="alembic")
    try:
        with engine.connect() as connection:
            if schema is not None:
                connection.execute(text(f'CREATE SCHEMA IF NOT EXISTS "{schema}"'))
                connection.commit()
            context.configure(
                connection=connection,
                target_metadata=Base.metadata,
                version_table=VERSION_TABLE,
                version_table_schema=schema,
                include_name=_include_name,
                compare_type=True,
                compare_server_default=True,
            )
            with context.begin_transaction():
                context.run_migrations()
    finally:
        engine.dispose()


if context.is_offline_mode():
    raise SystemExit("offline mode (--sql) is not supported; run against a database")
run_migrations_online()
