"""The bus: run the handler of one message, retrying deadlocks in process, translating failures.

    outcome = bus.handle(queue, message_id, header, payload, uow_factory, network)

The handler claims the inbox and writes its effects and outbox rows in one transaction
(``handlers.store.uow``); the bus makes sure a committed ``ok`` / ``stale`` really claimed it.

Failures, decided here:

- deadlock (SQLSTATE 40P01), serialization failure (40001) or ``ConcurrentUpdate`` ▶ run the
  whole handler again with a fresh unit of work, up to ``attempts`` times with jittered backoff;
  then ``DatabaseUnavailable`` (a ``TransientError``; ``ConcurrentUpdate`` is re-raised as is);
- PostgreSQL unreachable, connection lost, pool exhausted ▶ ``DatabaseUnavailable``;
- data refused by PostgreSQL (SQLSTATE class 22, 23) ▶ ``StoreRejected`` (permanent); any other
  database error ▶ ``StoreFailure`` (transient: e.g. migrations lagging behind the code);
- ``FleetError`` from the handler (``NotYet``, ``PermanentError``, ``TransientError``) ▶ as is;
- anything else (a bug) ▶ as is, for the worker's crash handling.

No error raised here carries a payload value: database errors are described by class and SQLSTATE.
"""

from __future__ import annotations

import inspect
import logging
import random
import time
import uuid
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any, Protocol

from sqlalchemy import exc as sa_exc

from handlers.context import HandlerContext, Outcome
from handlers.errors import (
    ConcurrentUpdate,
    DatabaseUnavailable,
    NoHandler,
    StoreFailure,
    StoreRejected,
)
from handlers.network import NetworkElement
from handlers.registry import HANDLERS, Handler, handler_name
from handlers.store.uow import UnitOfWork
from queues.contracts import Contract
from queues.errors import FleetError

__all__ = ["HandlerContext", "HeaderInfo", "Outcome", "handle", "is_retryable_conflict"]

log = logging.getLogger(__name__)

DEADLOCK_DETECTED = "40P01"
SERIALIZATION_FAILURE = "40001"
RETRYABLE_SQLSTATES = frozenset({DEADLOCK_DETECTED, SERIALIZATION_FAILURE})

DEFAULT_ATTEMPTS = 5
BACKOFF_BASE_S = 0.02
BACKOFF_MAX_S = 0.5


class HeaderInfo(Protocol):
    """The steering fields the bus reads (``queues.envelope.EnvelopeHeader`` has them all)."""

    @property
    def message_type(self) -> str: ...

    @property
    def producer(self) -> str: ...

    @property
    def created_at(self) -> datetime: ...

    @property
    def correlation_id(self) -> uuid.UUID | None: ...


def handle(
    queue: str,
    message_id: uuid.UUID,
    header_info: HeaderInfo,
    payload: Contract,
    uow_factory: Callable[[], UnitOfWork],
    network: NetworkElement,
    *,
    handlers: Mapping[tuple[str, str], Handler] = HANDLERS,
    attempts: int = DEFAULT_ATTEMPTS,
) -> Outcome:
    """Run the handler registered for (``queue``, the payload's type) on one opened message.

    Raises:
        NoHandler: nothing is registered for (queue, type).
        DatabaseUnavailable: PostgreSQL is unreachable, or the transaction kept deadlocking.
        StoreRejected, StoreFailure: any other database error (described without values).
        ConcurrentUpdate: the state kept changing under the handler.
        NotYet, PermanentError, TransientError: from the handler or the network element.
    """
    if attempts < 1:
        raise ValueError("attempts must be at least 1")
    message_type = payload.message_type
    handler = handlers.get((queue, message_type))
    if handler is None:
        raise NoHandler(f"no handler for {message_type} on queue {queue}")
    ctx = HandlerContext(
        message_id=message_id,
        message_type=message_type,
        queue=queue,
        handler=handler_name(handler),
        producer=header_info.producer,
        created_at=header_info.created_at,
        correlation_id=header_info.correlation_id,
    )
    dependencies: dict[str, Any] = {"network": network}
    for attempt in range(1, attempts + 1):
        uow = uow_factory()
        dependencies["uow"] = uow
        try:
            outcome = handler(payload, ctx, **_select(handler, dependencies))
        except ConcurrentUpdate:
            if attempt == attempts:
                raise
            _log_retry(ctx, attempt, "concurrent_update")
        except sa_exc.DBAPIError as exc:
            sqlstate = sqlstate_of(exc)
            if sqlstate not in RETRYABLE_SQLSTATES:
                raise _translate(exc) from None
            if attempt == attempts:
                raise DatabaseUnavailable(
                    f"transaction failed {attempts} times (last: SQLSTATE {sqlstate})"
                ) from None
            _log_retry(ctx, attempt, f"SQLSTATE {sqlstate}")
        except (sa_exc.TimeoutError, sa_exc.DisconnectionError) as exc:
            raise DatabaseUnavailable(f"database unavailable ({type(exc).__name__})") from None
        else:
            if outcome is not Outcome.DUPLICATE and (message_id, ctx.handler) not in (
                uow.committed_claims
            ):
                raise RuntimeError(f"handler {ctx.handler} returned without committing its claim")
            return outcome
        time.sleep(random.uniform(0, min(BACKOFF_MAX_S, BACKOFF_BASE_S * 2**attempt)))
    raise AssertionError("unreachable")  # pragma: no cover


def sqlstate_of(exc: BaseException) -> str | None:
    """The SQLSTATE of a database error (SQLAlchemy-wrapped or raw psycopg), if it has one."""
    orig = getattr(exc, "orig", exc)
    sqlstate = getattr(orig, "sqlstate", None)
    return sqlstate if isinstance(sqlstate, str) else None


def is_retryable_conflict(exc: BaseException) -> bool:
    """Deadlock or serialization failure: running the whole transaction again may succeed."""
    return sqlstate_of(exc) in RETRYABLE_SQLSTATES


def _translate(exc: sa_exc.DBAPIError) -> FleetError:
    sqlstate = sqlstate_of(exc) or ""
    detail = _describe(exc)
    # OperationalError: connection refused / lost, admin shutdown, statement or lock timeout;
    # InterfaceError: a connection psycopg already closed.
    if exc.connection_invalidated or isinstance(
        exc, sa_exc.OperationalError | sa_exc.InterfaceError
    ):
        return DatabaseUnavailable(f"database unavailable ({detail})")
    log.error("database error: %s", detail)
    if sqlstate[:2] in ("22", "23"):
        return StoreRejected(f"database refused the data ({detail})")
    return StoreFailure(f"database error ({detail})")


def _describe(exc: sa_exc.DBAPIError) -> str:
    """Class, SQLSTATE and the schema objects involved: names only, never values."""
    orig = exc.orig
    parts = [type(orig).__name__ if orig is not None else type(exc).__name__]
    sqlstate = sqlstate_of(exc)
    if sqlstate:
        parts.append(f"SQLSTATE {sqlstate}")
    diag = getattr(orig, "diag", None)
    for field in ("table_name", "column_name", "constraint_name"):
        value = getattr(diag, field, None)
        if value:
            parts.append(f"{field.removesuffix('_name')} {value}")
    return ", ".join(parts)


def _log_retry(ctx: HandlerContext, attempt: int, cause: str) -> None:
    log.warning(
        "retrying %s after %s (attempt %d)",
        ctx.handler,
        cause,
        attempt,
        extra={"message_id": str(ctx.message_id), "message_type": ctx.message_type},
    )


_PARAMETERS: dict[Any, tuple[str, ...]] = {}


def _select(handler: Handler, dependencies: Mapping[str, Any]) -> dict[str, Any]:
    names = _PARAMETERS.get(handler)
    if names is None:
        names = tuple(inspect.signature(handler).parameters)[2:]
        _PARAMETERS[handler] = names
    return {name: dependencies[name] for name in names}
