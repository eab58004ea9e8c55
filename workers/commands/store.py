"""The database engine of a ``fleet`` command, and what goes wrong with it as one line each."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from workers.commands.output import fail

if TYPE_CHECKING:
    from sqlalchemy import Engine


@contextmanager
def command_engine(application_name: str, *, pool_size: int = 1) -> Iterator[Engine]:
    """An engine on ``$FLEET_DATABASE_URL``, disposed after; a database error inside the block
    ends the command with one line naming the cause and the fix, never a traceback."""
    from sqlalchemy.exc import OperationalError, ProgrammingError

    from handlers.store.db import make_engine
    from workers.settings import get_settings

    settings = get_settings()
    engine = make_engine(
        settings.database_url.get_secret_value(),
        settings.db_schema,
        pool_size=pool_size,
        max_overflow=pool_size,
        application_name=application_name,
    )
    try:
        yield engine
    except OperationalError as exc:
        fail(
            f"database unreachable or refused ({type(exc.orig).__name__}): "
            "check $FLEET_DATABASE_URL and the role"
        )
    except ProgrammingError as exc:
        fail(_programming_error(type(exc.orig).__name__))
    finally:
        engine.dispose()


def _programming_error(name: str) -> str:
    if name in ("UndefinedTable", "UndefinedColumn", "InvalidSchemaName"):
        return (
            f"the fleet's tables are missing or old ({name}): "
            "migrate the schema with `fleet db upgrade`"
        )
    if name == "InsufficientPrivilege":
        return (
            "permission denied for this database role (InsufficientPrivilege): run the command "
            "under a role granted it (docs/operations.md, roles)"
        )
    return f"database error ({name}): is the schema migrated? `fleet db upgrade`"
