"""The engine: one per process, created after fork, small pool, parameters hidden from errors.

Connection budget. Every worker thread holds at most one connection while it handles a message,
so a process needs ``pool_size`` ≈ its worker threads; ``max_overflow`` absorbs the odd extra
(the batch writer's own connection, its one thread for messages a batch unrolled, the outbox
relay, the health probe; a batched message holds no worker thread's connection). When all of
them are busy at once the last one waits up to ``pool_timeout``. The server must fit the whole
fleet::

    (pool_size + max_overflow) × processes per pod × pods (all domains, archiver, relay)
        < max_connections − superuser_reserved_connections − headroom for operators

With PostgreSQL's default ``max_connections = 100``: 3 domains × 2 replicas × 2 processes ×
(4 + 2) = 72 leaves room for migrations, the archiver and psql. Beyond that, put PgBouncer (in
transaction mode) in front rather than raising ``max_connections``.

After fork. A pool must not cross ``fork()``: two processes would share one socket. Create the
engine in the worker process (Dramatiq forks its workers before our code runs there), or call
``engine.dispose(close=False)`` first thing in a child that inherited one.
"""

from __future__ import annotations

import re

from sqlalchemy import Engine, create_engine

_SCHEMA_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")

DEFAULT_POOL_SIZE = 4
DEFAULT_MAX_OVERFLOW = 2
DEFAULT_POOL_TIMEOUT_S = 10.0


def check_schema_name(schema: str) -> str:
    """A schema name we are willing to splice into ``search_path`` and DDL.

    Raises:
        ValueError: not a plain lower-case identifier of at most 63 characters.
    """
    if not _SCHEMA_NAME.fullmatch(schema):
        raise ValueError("schema must be a lower-case identifier: [a-z_][a-z0-9_]{0,62}")
    return schema


def make_engine(
    url: str,
    schema: str | None = None,
    *,
    pool_size: int = DEFAULT_POOL_SIZE,
    max_overflow: int = DEFAULT_MAX_OVERFLOW,
    pool_timeout_s: float = DEFAULT_POOL_TIMEOUT_S,
    application_name: str = "telco-fleet",
    pre_ping: bool = True,
) -> Engine:
    """The process's engine for ``url`` (SQLAlchemy form, e.g. ``postgresql+psycopg://…``).

    ``schema`` sets the connections' ``search_path`` (tests migrate into a schema of their own).
    SQL errors never carry statement parameters (``hide_parameters``). With ``pre_ping`` a dead
    pooled connection is replaced before use, at one round trip per checkout; without it (the
    workers: a round trip per message is too dear) its first statement fails — the bus calls
    that ``DatabaseUnavailable``, a transient failure — and SQLAlchemy then replaces every
    connection of the pool that is as old.

    Raises:
        ValueError: ``schema`` is not a plain identifier.
    """
    connect_args: dict[str, str] = {"application_name": application_name}
    if schema is not None:
        connect_args["options"] = f"-csearch_path={check_schema_name(schema)}"
    return create_engine(
        url,
        hide_parameters=True,
        pool_pre_ping=pre_ping,
        pool_size=pool_size,
        max_overflow=max_overflow,
        pool_timeout=pool_timeout_s,
        connect_args=connect_args,
    )
